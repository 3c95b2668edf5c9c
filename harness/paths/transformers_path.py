"""The transformers (PyTorch, CPU) path: a third opinion next to mlx-vlm and the unified
path. The MLX-layout checkpoint is converted to an HF layout (hf_convert), loaded by
transformers in float32, the prompt rendered with the same chat template and processed by
transformers' own processor, and the same stages captured with PyTorch hooks: input_ids,
per_layer_inputs (Gemma 4), the embeddings entering decoder layer 0, the effective
attention mask per layer type, every decoder layer's output, the first token's logits,
greedy decode steps and the tokens.

The prompt is prefilled in one forward call (as mlx-vlm does for prompts shorter than its
prefill step), and decode steps feed the greedy token with the KV cache, causal masks only
(what transformers' generate does after the prompt). Needs `torch` (the `torch` extra).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..capture import MASK_STAGE, MAX_DECODED_TOKENS
from ..cases import CaseSpec
from ..probes import LAYER_OUT, LAYER_PLI
from ..probes._masks import ADDITIVE_MASKED_AT
from ..records import Capture, decode_stage
from . import PathError, SessionOptions
from .hf_convert import hf_copy, model_class_for
from .loading import (
    check_image_placeholders,
    load_quietly,
    model_type_of,
    placeholder_token_id_of,
    session_provenance,
)

# transformers' plain attention: masks are always materialized (sdpa may pass None for
# "causal"), and softmax runs in float32.
ATTENTION = "eager"


def _torch() -> Any:
    try:
        import torch
    except ImportError:
        raise PathError(
            "the transformers path needs PyTorch: pip install 'mlx-parity[torch]' "
            "(torch==2.13.0, CPU)"
        ) from None
    return torch


def _gemma4_processor(hf_dir: Path) -> Any:
    """transformers' Gemma4Processor without its audio feature extractor and video
    processor: the video processor needs torchvision, and neither is used for images."""
    from transformers import AutoTokenizer
    from transformers.models.gemma4 import Gemma4Processor
    from transformers.models.gemma4.image_processing_pil_gemma4 import Gemma4ImageProcessorPil

    class ImageTextProcessor(Gemma4Processor):
        def check_argument_for_proper_class(self, argument_name: str, argument: Any) -> Any:
            if argument is None and argument_name in ("feature_extractor", "video_processor"):
                return type(None)
            return super().check_argument_for_proper_class(argument_name, argument)

    config = _json(hf_dir / "processor_config.json")
    image = dict(config.get("image_processor") or _json(hf_dir / "preprocessor_config.json"))
    image.pop("image_processor_type", None)
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    template = hf_dir / "chat_template.jinja"
    return ImageTextProcessor(
        feature_extractor=None,
        image_processor=Gemma4ImageProcessorPil(**image),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=template.read_text() if template.is_file() else None,
        image_seq_length=config.get("image_seq_length", 280),
    )


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


# model_type -> processor factory, where the processor class cannot build it offline here.
PROCESSORS = {"gemma4": _gemma4_processor}


def _named_processor(hf_dir: Path) -> Any:
    """The processor class the checkpoint names, taken from transformers itself: never
    `AutoProcessor`, which mlx-vlm replaces in-process with its own processors once it
    was imported (their outputs are MLX arrays)."""
    import transformers

    name = _json(hf_dir / "processor_config.json").get("processor_class") or _json(
        hf_dir / "tokenizer_config.json"
    ).get("processor_class")
    found = getattr(transformers, str(name), None) if name else None
    if not isinstance(found, type):
        raise PathError(f"{hf_dir}: no transformers processor class named {name!r}")
    return found.from_pretrained(hf_dir)


def _check_processor(processor: Any) -> None:
    """Every part must be transformers' own (see `_named_processor`)."""
    parts = [processor, getattr(processor, "image_processor", None)]
    for part in (p for p in parts if p is not None):
        module = type(part).__module__
        if not module.startswith("transformers.") and type(part).__name__ != "ImageTextProcessor":
            raise PathError(f"processor part {type(part).__name__} comes from {module}")


def _open_image(path: Path) -> Any:
    """As mlx-vlm loads images: EXIF orientation applied, RGB."""
    from PIL import Image, ImageOps

    from ..case_yaml import image_formats

    with Image.open(path, formats=image_formats()) as image:
        return ImageOps.exif_transpose(image).convert("RGB")


def _layers(model: Any) -> tuple[Any, Any]:
    """The text decoder (owner of `.layers`) of a transformers VLM."""
    text = model.model.language_model
    return text, text.layers


def _layer_types(model: Any, n_layers: int) -> list[str]:
    types = getattr(model.config.get_text_config(), "layer_types", None)
    if isinstance(types, (list, tuple)) and len(types) == n_layers:
        return [str(t) for t in types]
    return ["full"] * n_layers


def _mask_grid(mask: Any, prompt_len: int) -> np.ndarray:
    """[L, L] "may attend" from what a layer received: boolean (True = attend) or additive
    float (0 = attend); None means no mask at all under eager attention."""
    if mask is None:
        return np.ones((prompt_len, prompt_len), dtype=bool)
    values = mask.detach().float().numpy() if mask.dtype != _torch().bool else mask.numpy()
    grid = values if values.dtype == np.bool_ else values > ADDITIVE_MASKED_AT
    grid = grid.reshape(-1, *grid.shape[-2:]).any(axis=0)
    if grid.shape != (prompt_len, prompt_len):
        raise RuntimeError(f"attention mask of shape {grid.shape} for a {prompt_len}-token prompt")
    return grid


class _Taps:
    """Forward hooks on the decoder: what enters layer 0, what every layer returns and
    receives as its per-layer input, the mask the first layer of each type receives, and
    the per-layer inputs computed from ids (Gemma 4)."""

    def __init__(self, model: Any, outputs: bool) -> None:
        self.arrays: dict[str, Any] = {}
        self.masks: dict[str, Any] = {}
        self._handles: list[Any] = []
        text, layers = _layers(model)
        types = _layer_types(model, len(layers))
        first = {kind: types.index(kind) for kind in dict.fromkeys(types)}
        self.types = tuple(sorted(first))
        for index, layer in enumerate(layers):
            kinds = [k for k, i in first.items() if i == index]
            if index == 0 or outputs or kinds:
                self._handles.append(
                    layer.register_forward_pre_hook(
                        self._before(index, outputs, kinds), with_kwargs=True
                    )
                )
            if outputs:
                self._handles.append(layer.register_forward_hook(self._after(index)))
        self._text = text
        self._wrapped = False
        if getattr(text, "hidden_size_per_layer_input", None):
            original = text.project_per_layer_inputs

            def project(inputs_embeds: Any, per_layer_inputs: Any = None) -> Any:
                if per_layer_inputs is not None:
                    self.arrays["per_layer_inputs"] = per_layer_inputs[0]
                return original(inputs_embeds, per_layer_inputs)

            object.__setattr__(text, "project_per_layer_inputs", project)
            self._wrapped = True

    def _before(self, index: int, outputs: bool, kinds: list[str]) -> Any:
        def hook(_module: Any, args: tuple, kwargs: dict) -> None:
            hidden = args[0] if args else kwargs["hidden_states"]
            if index == 0:
                self.arrays["embeddings"] = hidden[0]
            if outputs:
                per_layer = args[1] if len(args) > 1 else kwargs.get("per_layer_input")
                if per_layer is not None:
                    self.arrays[f"{LAYER_PLI}.{index}"] = per_layer[0]
            for kind in kinds:
                self.masks[kind] = kwargs.get("attention_mask")

        return hook

    def _after(self, index: int) -> Any:
        def hook(_module: Any, _args: tuple, output: Any) -> None:
            out = output[0] if isinstance(output, tuple) else output
            self.arrays[f"{LAYER_OUT}.{index}"] = out[0]

        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        if self._wrapped:
            object.__delattr__(self._text, "project_per_layer_inputs")


@contextlib.contextmanager
def _tapped(model: Any, outputs: bool) -> Iterator[_Taps]:
    taps = _Taps(model, outputs)
    try:
        yield taps
    finally:
        taps.remove()


class TransformersSession:
    name = "transformers"
    takes_addon = False
    dtype = "float32"
    requires = ("torch",)
    install_hint = "pip install 'mlx-parity[torch]'"

    def __init__(self, model_dir: Path, options: SessionOptions) -> None:
        torch = _torch()
        import transformers

        transformers.utils.logging.disable_progress_bar()  # "Loading weights" on stderr
        self.model_dir = model_dir
        self.model_type = model_type_of(model_dir)
        self.hf_dir = hf_copy(model_dir, self.model_type)
        config = transformers.AutoConfig.from_pretrained(self.hf_dir)
        self.model = load_quietly(
            model_class_for(config).from_pretrained,
            self.hf_dir,
            dtype=getattr(torch, self.dtype),
            attn_implementation=ATTENTION,
        ).eval()
        factory = PROCESSORS.get(self.model_type, _named_processor)
        self.processor = load_quietly(factory, self.hf_dir)
        _check_processor(self.processor)
        self.tokenizer = getattr(self.processor, "tokenizer", self.processor)
        self.layer_probes = options.layer_probes
        self.provenance = {
            **session_provenance(self.name, model_dir),
            "version_torch": torch.__version__,
            "transformers_dtype": self.dtype,
            "transformers_attention": ATTENTION,
            "transformers_processor": type(self.processor).__name__,
            "transformers_image_processor": type(
                getattr(self.processor, "image_processor", None)
            ).__name__,
            "hf_copy": str(self.hf_dir),
        }

    def render_prompt(self, case: CaseSpec) -> str:
        renderer = self.processor
        if getattr(renderer, "chat_template", None) is None:
            renderer = self.tokenizer
        return renderer.apply_chat_template(
            case.template_messages(),
            tokenize=False,
            add_generation_prompt=True,
            **case.chat_template_kwargs,
        )

    def prepare(self, case: CaseSpec) -> tuple[str, dict[str, Any]]:
        prompt = self.render_prompt(case)
        placeholder = placeholder_token_id_of(self.model_dir)
        ids = self.tokenizer.encode(prompt, add_special_tokens=False)
        check_image_placeholders(case, ids.count(placeholder), placeholder)
        images = [_open_image(p) for p in case.image_files] or None
        inputs = self.processor(text=[prompt], images=images, return_tensors="pt")
        return prompt, dict(inputs)

    def capture(self, case: CaseSpec) -> Capture:
        torch = _torch()
        if getattr(self, "perturb_embeddings", None) is not None:
            raise PathError("the transformers path cannot perturb its embeddings (noise envelope)")
        prompt, inputs = self.prepare(case)
        input_ids = inputs["input_ids"]
        prompt_len = int(input_ids.shape[1])
        logits_steps, generated = [], []
        with torch.no_grad():
            with _tapped(self.model, self.layer_probes) as taps:
                # The last row's logits, given as positions: an int makes transformers 5.24
                # slice Gemma 4's KV-shared layers, which fails when per-layer inputs are
                # off (it then computes their every row, compared at the last).
                last = torch.tensor([prompt_len - 1])
                out = self.model(**inputs, use_cache=True, logits_to_keep=last)
            for step in range(case.decode_steps + 1):
                logits = out.logits[0, -1].float()
                logits_steps.append(logits)
                generated.append(int(torch.argmax(logits)))
                if step == case.decode_steps:
                    break
                out = self.model(
                    input_ids=torch.tensor([[generated[-1]]]),
                    cache=out.cache,
                    use_cache=True,
                )
        return self._capture(case, prompt, input_ids[0], taps, logits_steps, generated, prompt_len)

    def _capture(
        self,
        case: CaseSpec,
        prompt: str,
        input_ids: Any,
        taps: _Taps,
        logits_steps: list[Any],
        generated: list[int],
        prompt_len: int,
    ) -> Capture:
        arrays: dict[str, np.ndarray] = {"input_ids": input_ids.numpy().astype(np.int64)}
        dtypes = {"input_ids": "int64"}
        for stage, value in taps.arrays.items():
            arrays[stage] = value.detach().float().numpy().copy()
            dtypes[stage] = self.dtype
        arrays["logits"] = logits_steps[0].numpy().copy()
        for k, step in enumerate(logits_steps[1:], 1):
            arrays[decode_stage(k)] = step.numpy().copy()
        dtypes |= {k: self.dtype for k in arrays if k == "logits" or k.startswith("decode.")}
        arrays["tokens"] = np.array(generated, dtype=np.int32)
        dtypes["tokens"] = "int32"
        provenance = dict(self.provenance)
        if taps.masks:
            grids = [_mask_grid(taps.masks[t], prompt_len) for t in taps.types]
            stacked = np.stack(grids, axis=1).astype(np.uint8)
            arrays[MASK_STAGE] = stacked
            arrays |= {f"{MASK_STAGE}.{t}": stacked[:, i, :] for i, t in enumerate(taps.types)}
            dtypes |= {k: "bool" for k in arrays if k.startswith(MASK_STAGE)}
            provenance["attention_mask_types"] = ",".join(taps.types)
        ids = input_ids[:MAX_DECODED_TOKENS].tolist()
        layers = _layers(self.model)[1]
        owner = type(layers[0])
        return Capture(
            path=self.name,
            case_id=case.id,
            arrays=arrays,
            dtypes=dtypes,
            prefill_chunks=(prompt_len,),
            provenance={k: str(v) for k, v in provenance.items()},
            layer_tree=f"{owner.__module__}.{owner.__qualname__} x {len(layers)} "
            "(model.language_model.layers)",
            prompt_text=prompt,
            tokens=tuple(str(self.tokenizer.decode([int(i)])) for i in ids),
        )

    def close(self) -> None:
        del self.model, self.processor, self.tokenizer
