"""A kwarg-routing fix for mlx-vlm 0.7.10's LlavaProcessor under transformers 5.

mlx-vlm's `process_inputs` always passes `padding=...` to the processor;
`LlavaProcessor.__call__` forwards every keyword to BOTH the tokenizer and the image
processor, and transformers 5's image processors validate their keywords strictly:
`ImagesKwargs.__init__() got an unexpected keyword argument 'padding'`. Every LLaVA image
prompt then fails in native mlx-vlm (`prepare_inputs`), before any computation (upstream
Blaizzy/mlx-vlm#870, fixed for PaliGemma only by #877; mlx-vlm's llava_next processor pops
`padding` itself).

The fix routes tokenizer-only keywords away from the image processor, nothing else: the
tokenizer still gets them, the image processor gets exactly the call it gets without them,
and no number changes. Applied to the class, so native mlx-vlm and the add-on run the same
processor code; idempotent; marked by `FIXED` on the class so a report can say so.
"""

from __future__ import annotations

from typing import Any

MODULE = "mlx_vlm.models.llava.processing_llava"
FIXED = "_mlx_parity_kwarg_routing_fix"
# Keywords only a tokenizer takes (transformers' TextKwargs), never an image processor.
TOKENIZER_ONLY = frozenset(
    {
        "padding",
        "padding_side",
        "truncation",
        "max_length",
        "pad_to_multiple_of",
        "add_special_tokens",
        "return_attention_mask",
    }
)


class _ImageKwargsFilter:
    """Stands in for the image processor during one call, dropping tokenizer keywords."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def __call__(self, images: Any, **kwargs: Any) -> Any:
        return self._inner(images, **{k: v for k, v in kwargs.items() if k not in TOKENIZER_ONLY})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def fix_processor_class(processor_class: type) -> None:
    """Wrap `processor_class.__call__` once."""
    if getattr(processor_class, FIXED, False):
        return
    original = processor_class.__call__

    def __call__(self: Any, images: Any = None, text: Any = None, **kwargs: Any) -> Any:
        inner = self.image_processor
        self.image_processor = _ImageKwargsFilter(inner)
        try:
            return original(self, images, text, **kwargs)
        finally:
            self.image_processor = inner

    processor_class.__call__ = __call__
    setattr(processor_class, FIXED, True)


def _fix_module(module: Any) -> None:
    fix_processor_class(module.LlavaProcessor)


def fix_llava_processor() -> None:
    """Route tokenizer-only keywords away from LlavaProcessor's image processor (mlx-vlm
    0.7.10 under transformers 5). Idempotent."""
    import importlib

    _fix_module(importlib.import_module(MODULE))
