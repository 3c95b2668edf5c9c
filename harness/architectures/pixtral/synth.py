"""Synthesize a tiny random-weight Pixtral checkpoint (mlx-vlm layout, `model_type: pixtral`).

The tokenizer, chat template, text config, Pixtral vision config and processor files are
Mistral 3's (harness/architectures/mistral3/synth.py, which lists why each value is
written). What differs:
- no patch merger: `spatial_merge_size` is 1 (PixtralProcessor's default; the processor
  reads it, and `patch_size`, from processor_config.json only: without `patch_size` there
  it assumes 16);
- the projector is LLaVA's, with biases (mlx-vlm builds it with bias=True whatever the
  config says; `multimodal_projector_bias: true` is written to match);
- `vision_feature_layer: -1` and `vision_feature_select_strategy: full` are written:
  transformers' LlavaConfig (Pixtral 12B's HF class) defaults to -2 and "default" (drop
  the first token), mlx-vlm's pixtral to -1 and "full", which it uses;
- mlx-vlm's pixtral TextConfig defaults (head_dim 128, rope_theta 1e9, 8 KV heads,
  max_position_embeddings 4096) are overridden by the written text config; mlx-lm's
  pixtral forces `tie_word_embeddings: false` and mlx-vlm's always builds an LM head, so
  the head is always stored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from harness.architectures.mistral3 import synth as mistral3
from harness.synth.files import build_checkpoint

__all__ = ["PRESETS", "SYNTH_VERSION", "Spec", "build"]

# Bump when the files written change, so cached checkpoints are rebuilt.
SYNTH_VERSION = 1

PRESETS: dict[str, dict[str, Any]] = {
    # Mistral 3's tiny dimensions; images fitted into 32 px: up to 4x4 patches, each an
    # image token (4 rows of 4 [IMG], 3 [IMG_BREAK], [IMG_END]).
    "tiny": {**mistral3.PRESETS["tiny"], "longest_edge": 32},
}


class Spec(mistral3.SpecBase):
    """What to build. Every field is part of the cache key."""

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    spatial_merge_size: Literal[1] = Field(1, description="Pixtral has no patch merger")


def model_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "pixtral",
        "text_config": mistral3.text_config(spec, ids),
        "vision_config": mistral3.vision_config(spec),
        "vocab_size": spec.vocab_size,
        "vision_feature_layer": -1,
        "vision_feature_select_strategy": "full",
        "multimodal_projector_bias": True,
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": False,
        **mistral3.specials_config(ids),
    }


def _lazy_model(config: dict[str, Any]) -> Any:
    """The mlx-vlm model at its (lazy, unevaluated) random init."""
    from mlx_vlm.models import pixtral as vlm

    args = vlm.ModelConfig.from_dict(config)
    args.text_config = vlm.TextConfig.from_dict(config["text_config"])
    args.vision_config = vlm.VisionConfig.from_dict(config["vision_config"])
    return vlm.Model(args)


def build(spec: Spec, out: Path) -> None:
    """Write the checkpoint files into the (existing, empty) directory `out`."""
    build_checkpoint(
        spec,
        out,
        specials=mistral3.SPECIALS,
        end_of_turn="<eos>",
        model_config=model_config,
        lazy_model=_lazy_model,
        rule=mistral3.rule,
        files={
            "preprocessor_config.json": mistral3.preprocessor_config,
            "processor_config.json": mistral3.processor_config,
            "tokenizer_config.json": mistral3.tokenizer_config,
        },
        chat_template=mistral3.CHAT_TEMPLATE,
    )
