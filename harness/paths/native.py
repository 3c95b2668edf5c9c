"""The native reference: mlx-vlm end to end, with mlx-vlm's own processor, embeddings,
language model and prefill policy (`mlx_vlm.generate_step`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..capture import capture_first_token
from ..cases import CaseSpec
from ..records import Capture
from . import SessionOptions
from .loading import (
    apply_library_fixes,
    check_image_placeholders,
    check_vocab,
    load_quietly,
    model_type_of,
    placeholder_token_id_of,
    session_provenance,
)


class NativeSession:
    name = "mlx-vlm"
    takes_addon = False

    def __init__(self, model_dir: Path, options: SessionOptions) -> None:
        import mlx_vlm

        self.model_dir = model_dir
        self.model_type = model_type_of(model_dir)
        fixes = apply_library_fixes(self.model_type)
        self.model, self.processor = load_quietly(
            mlx_vlm.load, str(model_dir), trust_remote_code=options.trust_remote_code
        )
        check_vocab(getattr(self.processor, "tokenizer", self.processor), model_dir)
        self.provenance = session_provenance(self.name, model_dir, fixes)
        self.layer_probes = options.layer_probes

    def render_prompt(self, case: CaseSpec) -> str:
        # Some processors carry no chat template (Gemma 3): mlx-vlm then renders with the
        # tokenizer's, as its own get_chat_template does.
        renderer = self.processor
        if getattr(renderer, "chat_template", None) is None:
            renderer = getattr(self.processor, "tokenizer", self.processor)
        return renderer.apply_chat_template(
            case.template_messages(),
            tokenize=False,
            add_generation_prompt=True,
            **case.chat_template_kwargs,
        )

    def _placeholder_count(self, prompt: str, placeholder_id: int | None) -> int:
        """Image placeholders in the rendered prompt: by token id when the architecture
        renders a placeholder other than the image token, else by text when the processor
        names its placeholder, else by tokenizing."""
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        placeholder = getattr(self.processor, "image_token", None)
        if placeholder_id != self._image_token_id() or not isinstance(placeholder, str):
            return tokenizer.encode(prompt, add_special_tokens=False).count(placeholder_id)
        return prompt.count(placeholder) if placeholder else 0

    def _image_token_id(self) -> int | None:
        config = self.model.config
        token = getattr(config, "image_token_id", None)
        return token if token is not None else getattr(config, "image_token_index", None)

    def prepare(self, case: CaseSpec) -> tuple[str, list[str] | None, dict[str, Any]]:
        """The rendered prompt, its image files, and mlx-vlm's `prepare_inputs` of them,
        called as mlx-vlm's own generate calls it."""
        from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

        images = [str(p) for p in case.image_files] or None
        prompt = self.render_prompt(case)
        placeholder_id = placeholder_token_id_of(self.model_dir)
        check_image_placeholders(
            case, self._placeholder_count(prompt, placeholder_id), placeholder_id
        )
        inputs = prepare_inputs(
            self.processor,
            images=images,
            prompts=[prompt],
            image_token_index=self._image_token_id(),
            add_special_tokens=should_add_special_tokens(self.model_type, self.processor),
        )
        return prompt, images, inputs

    def capture(self, case: CaseSpec) -> Capture:
        from mlx_vlm.generate import generate_step

        prompt, _, inputs = self.prepare(case)
        input_ids = inputs.pop("input_ids")
        pixel_values = inputs.pop("pixel_values", None)
        mask = inputs.pop("attention_mask", None)
        return capture_first_token(
            self,
            case.id,
            input_ids,
            lambda processors: generate_step(
                input_ids,
                self.model,
                pixel_values,
                mask,
                max_tokens=case.decode_steps + 1,
                temperature=0.0,
                prefill_step_size=case.prefill_step_size,
                logits_processors=processors,
                **inputs,
            ),
            prompt_text=prompt,
            decode_steps=case.decode_steps,
            tokenizer=getattr(self.processor, "tokenizer", self.processor),
        )

    def close(self) -> None:
        del self.model, self.processor
