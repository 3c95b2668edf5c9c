"""The unified path (mlx-lm text model + a vision add-on, fed through mlx-lm's own
`generate_step` prefill loop, as mlx-engine runs it) and the plain mlx-lm path (no add-on,
no patch: the baseline an add-on's patch must leave bit-identical on text prompts)."""

from __future__ import annotations

import base64
import inspect
from pathlib import Path
from typing import Any

from ..capture import capture_first_token
from ..cases import CaseSpec
from ..records import Capture
from . import PathError, SessionOptions
from .loading import (
    apply_library_fixes,
    check_image_placeholders,
    check_vocab,
    load_quietly,
    model_type_of,
    placeholder_token_id_of,
    session_provenance,
)


class PlainTextSession:
    name = "mlx-lm"
    takes_addon = False

    def __init__(self, model_dir: Path, options: SessionOptions) -> None:
        self.model_dir = model_dir
        self.model_type = model_type_of(model_dir)
        fixes = apply_library_fixes(self.model_type)
        self.addon = self._make_addon(model_dir, options)
        # Optional contract hook, for architectures `mlx_lm.load` rejects although mlx-lm
        # has their text model (idefics3/smolvlm, llava_next, internvl): the add-on builds
        # the mlx-lm text model and tokenizer itself, as `mlx_lm.load` would return them.
        loader = getattr(self.addon, "load_text_model", None)
        if callable(loader):
            # The gate's trust decision reaches the hook as it reaches mlx_lm.load.
            takes = "tokenizer_config" in inspect.signature(loader).parameters
            config = {"trust_remote_code": options.trust_remote_code}
            kwargs = {"tokenizer_config": config} if takes else {}
            self.model, self.tokenizer = load_quietly(loader, model_dir, **kwargs)
        else:
            self.model, self.tokenizer = self._load(model_dir, options)
        patch = getattr(self.addon, "patch_text_model", None)
        if callable(patch):
            patch(self.model)
        check_vocab(self.tokenizer, model_dir)
        self.image_token_id = placeholder_token_id_of(model_dir)
        self.provenance = session_provenance(self.name, model_dir, fixes)
        self.layer_probes = options.layer_probes

    def _make_addon(self, model_dir: Path, options: SessionOptions) -> Any:
        return None

    @staticmethod
    def _load(model_dir: Path, options: SessionOptions) -> tuple[Any, Any]:
        import mlx_lm

        tokenizer_config = {"trust_remote_code": options.trust_remote_code}
        return load_quietly(mlx_lm.load, str(model_dir), tokenizer_config=tokenizer_config)

    def render_prompt(self, case: CaseSpec) -> str:
        return self.tokenizer.apply_chat_template(
            case.template_messages(),
            tokenize=False,
            add_generation_prompt=True,
            **case.chat_template_kwargs,
        )

    def prompt_tokens(self, text: str) -> list[int]:
        # Encode without extra specials: the template owns BOS and turn markers, as in
        # mlx-vlm's processor path.
        return self.tokenizer.encode(text, add_special_tokens=False)

    def embeddings(self, case: CaseSpec, prompt_tokens: Any) -> tuple[Any, Any]:
        if case.has_images:
            raise PathError(f"path {self.name!r} takes text prompts only; case has images")
        return prompt_tokens, None

    def prepare(self, case: CaseSpec) -> tuple[str, Any, Any]:
        """A new request: state cleared, prompt rendered, ids and embeddings computed."""
        import mlx.core as mx

        clear = getattr(self.addon, "clear_prediction_state", None)
        if callable(clear):
            clear(self.model)
        prompt = self.render_prompt(case)
        prompt_tokens = self.prompt_tokens(prompt)
        check_image_placeholders(
            case, prompt_tokens.count(self.image_token_id), self.image_token_id
        )
        input_ids, embeddings = self.embeddings(case, mx.array(prompt_tokens))
        return prompt, input_ids, embeddings

    def capture(self, case: CaseSpec) -> Capture:
        prompt, input_ids, embeddings = self.prepare(case)
        return self.capture_prepared(case, prompt, input_ids, embeddings)

    def capture_prepared(
        self,
        case: CaseSpec,
        prompt: str,
        input_ids: Any,
        embeddings: Any,
        prompt_cache: list[Any] | None = None,
        prefix_len: int = 0,
    ) -> Capture:
        """mlx-lm's `generate_step` over `input_ids` (and `embeddings`), on top of
        `prompt_cache` when given (holding the `prefix_len` prompt rows before them)."""
        from mlx_lm.generate import generate_step

        return capture_first_token(
            self,
            case.id,
            input_ids,
            lambda processors: generate_step(
                input_ids,
                self.model,
                max_tokens=case.decode_steps + 1,
                prefill_step_size=case.prefill_step_size,
                input_embeddings=embeddings,
                logits_processors=processors,
                prompt_cache=prompt_cache,
            ),
            prompt_text=prompt,
            decode_steps=case.decode_steps,
            tokenizer=self.tokenizer,
            prompt_offset=prefix_len,
        )

    def close(self) -> None:
        del self.model, self.tokenizer, self.addon


class UnifiedSession(PlainTextSession):
    name = "unified"
    takes_addon = True

    def _make_addon(self, model_dir: Path, options: SessionOptions) -> Any:
        from ..addons import resolve_addon

        # Resolved (imported) before mlx_lm.load: engine add-ons patch library classes at
        # import time, and the text model must be built with the patched class.
        addon_class = resolve_addon(options.addon or "auto", self.model_type, options.imports)
        # The engine's contract constructs add-ons from the path alone; add-ons that can
        # load a processor (which may run checkpoint code) take the gate's decision too.
        if "trust_remote_code" in inspect.signature(addon_class).parameters:
            return load_quietly(
                addon_class, model_dir, trust_remote_code=options.trust_remote_code
            )
        return load_quietly(addon_class, model_dir)

    def embeddings(self, case: CaseSpec, prompt_tokens: Any) -> tuple[Any, Any]:
        if not case.has_images:
            # mlx-engine runs text prompts through the plain token path.
            return prompt_tokens, None
        images_b64 = [base64.b64encode(p.read_bytes()).decode("ascii") for p in case.image_files]
        return self.addon.compute_embeddings(self.model, prompt_tokens, images_b64, case.max_size)
