"""Synthesize a tiny random-weight Qwen3-VL vision-language checkpoint.

The directory looks like an mlx-vlm converted Qwen3-VL model (mlx-vlm key names:
`language_model.model.*`, `vision_tower.*`; one safetensors shard + index; a tokenizer with
the Qwen special tokens; chat template; processor files), so that the real `mlx_lm.load`
(-> `qwen3_vl` -> a plain `qwen3` text model) and `mlx_vlm.load` both accept it and run
the same decoder weights.

Every value whose default differs between the libraries (mlx-lm 0.32.2, mlx-vlm 0.7.10), or
that one loader needs, is written explicitly:
- nested `text_config` (`qwen3_vl_text`) with `head_dim`, `rope_theta`,
  `max_position_embeddings`, `tie_word_embeddings` (mlx-lm's qwen3 requires all four) and
  `rope_scaling {rope_type: default, mrope_section, mrope_interleaved: true}`: mlx-vlm's
  TextConfig defaults the sections to [24, 20, 20] (head_dim 128), which must sum to
  head_dim / 2; mlx-lm reads `default` as a plain 1-D RoPE.
- `vision_config` in full: mlx-vlm's VisionConfig defaults describe a 32-block, 1280-wide
  tower (patch 14, 2304 position embeddings, no DeepStack); `num_position_embeddings` a
  perfect square (the interpolation grid side is its square root);
  `deepstack_visual_indexes` (mlx-vlm default: none, i.e. no DeepStack at all).
- `image_token_id`, `video_token_id`, `vision_start_token_id`, `vision_end_token_id`,
  `vision_token_id`: mlx-vlm defaults to the published 151k ids (`get_rope_index` finds
  images by `vision_start_token_id`).
- `tie_word_embeddings: true` and no `lm_head`: both libraries then read the embedding table.
- `patch_embed.proj.weight` stored in PyTorch layout (out, in, T, kH, kW): mlx-vlm's vision
  sanitize transposes it to MLX layout (it treats a last axis of 3 as MLX layout already;
  patch_size >= 4 keeps the two layouts apart).
- Every processor file (`preprocessor_config.json`, `video_preprocessor_config.json`,
  `processor_config.json`, tokenizer files, `chat_template.jinja`): mlx-vlm's Qwen processor
  falls back to a hub download for a missing JSON file.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from harness.synth import checks
from harness.synth.files import build_checkpoint
from harness.synth.presets import PresetSpec

__all__ = ["PRESETS", "SYNTH_VERSION", "Spec", "build"]

# Bump when the files written change, so cached checkpoints are rebuilt.
SYNTH_VERSION = 1

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, VISION_PAD = "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
# build_checkpoint names <pad>, <bos>, <eos> (unused by the Qwen template) and <unk> (BPE).
SPECIALS = [
    "<pad>", "<eos>", "<bos>", "<unk>", ENDOFTEXT, IM_START, IM_END,
    VISION_START, VISION_END, VISION_PAD, IMAGE_PAD, VIDEO_PAD,
]  # fmt: skip
IDS = {token: index for index, token in enumerate(SPECIALS)}  # specials come first
MIN_VOCAB = len(SPECIALS) + 256 + 100

# Qwen3-VL's chat template, reduced to what the cases use: no default system turn, one
# <|vision_start|><|image_pad|><|vision_end|> per image item.
CHAT_TEMPLATE = "".join(
    [
        "{%- for message in messages -%}",
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}",
        "{%- if message['content'] is string -%}{{- message['content'] -}}",
        "{%- else -%}{%- for item in message['content'] -%}",
        "{%- if item['type'] == 'image' -%}",
        "{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}",
        "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}",
        "{%- endif -%}{%- endfor -%}{%- endif -%}",
        "{{- '<|im_end|>\\n' -}}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}",
    ]
)

PRESETS: dict[str, dict[str, Any]] = {
    # Text: 4 layers, head_dim 32 (16 rotary frequencies, sections [6, 5, 5]: Qwen3-VL's
    # [24, 20, 20] / 4, so interleaved and chunked layouts differ). Vision: 2 blocks of
    # width 32, patch 8, merged 2x2; DeepStack after vision blocks 0 and 1 feeds text
    # layers 0 and 1 (layers 2 and 3 get nothing). Pixels 6400 max: a 400x300 image
    # becomes 64x80 px, 8x10 patches, 20 image tokens.
    "tiny": {
        "hidden_size": 64,
        "num_layers": 4,
        "num_heads": 4,
        "num_kv_heads": 2,
        "head_dim": 32,
        "mrope_section": (6, 5, 5),
        "intermediate_size": 128,
        "vocab_size": 512,
        "rope_theta": 5_000_000.0,
        "vision_hidden_size": 32,
        "vision_layers": 2,
        "vision_heads": 2,
        "vision_intermediate_size": 64,
        "patch_size": 8,
        "num_position_embeddings": 64,
        "deepstack_visual_indexes": (0, 1),
        "min_pixels": 1024,
        "max_pixels": 6400,
        "quantize_bits": None,
    },
}


class Spec(PresetSpec):
    """What to build. Every field is part of the cache key. Fields that other fields' checks
    read come first (a cross-field check sits on the option it blames)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: Literal["tiny"] = "tiny"
    hidden_size: int = Field(ge=8, le=4096)
    num_layers: int = Field(ge=1, le=64)
    num_heads: int = Field(ge=1, le=64)
    num_kv_heads: int = Field(ge=1, le=64)
    head_dim: int = Field(ge=4, le=512)
    mrope_section: tuple[int, int, int] = Field(
        description="rotary frequencies per (t, h, w) axis; sums to head_dim / 2"
    )
    intermediate_size: int = Field(ge=1, le=16384)
    vocab_size: int = Field(ge=MIN_VOCAB, le=262144)
    rope_theta: float = Field(gt=1.0, le=1e9, allow_inf_nan=False)
    vision_hidden_size: int = Field(ge=4, le=2048)
    vision_layers: int = Field(ge=1, le=48)
    vision_heads: int = Field(ge=1, le=32)
    vision_intermediate_size: int = Field(ge=1, le=8192)
    patch_size: int = Field(
        ge=4, le=64, description=">= 4: mlx-vlm tells PyTorch from MLX conv layout by shape"
    )
    num_position_embeddings: int = Field(ge=4, le=16384)
    deepstack_visual_indexes: tuple[int, ...] = Field(max_length=16)
    min_pixels: int = Field(ge=1, le=1 << 24)
    max_pixels: int = Field(ge=1, le=1 << 22, description="caps image tokens (and time)")
    quantize_bits: Literal[4, 8] | None
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    logit_scale: float = Field(
        1.0, gt=0, le=1000.0, allow_inf_nan=False, description="final-norm factor"
    )
    seed: int = Field(0, ge=0, lt=2**64, description="MLX seeds are unsigned 64-bit")

    @property
    def add_bos_token(self) -> bool:
        """Qwen tokenizers add no BOS (build_checkpoint asks)."""
        return False

    _kv_heads_divide = checks.kv_heads_divide()

    _even_head_dim = checks.even_head_dim()

    @field_validator("mrope_section")
    @classmethod
    def _sections_fill_half_head(
        cls, value: tuple[int, int, int], info: ValidationInfo
    ) -> tuple[int, int, int]:
        head_dim = info.data.get("head_dim")
        if min(value) < 1:
            raise ValueError(f"every section needs at least one frequency, got {value}")
        if head_dim is not None and sum(value) != head_dim // 2:
            raise ValueError(f"must sum to head_dim / 2 = {head_dim // 2}, got {value}")
        return value

    @field_validator("vision_heads")
    @classmethod
    def _vision_heads_divide(cls, value: int, info: ValidationInfo) -> int:
        hidden = info.data.get("vision_hidden_size")
        if hidden is not None and (hidden % value or (hidden // value) % 4):
            # 2-D rotary: head_dim / 2 frequencies per axis pair, in pairs.
            raise ValueError(
                f"must divide vision_hidden_size ({hidden}) into heads of a multiple of 4 "
                f"dimensions (2-D rotary), got {value}"
            )
        return value

    @field_validator("num_position_embeddings")
    @classmethod
    def _square_grid(cls, value: int) -> int:
        if math.isqrt(value) ** 2 != value:
            raise ValueError(f"must be a perfect square (an interpolation grid), got {value}")
        return value

    @field_validator("deepstack_visual_indexes")
    @classmethod
    def _deepstack_fits(cls, value: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        blocks, layers = info.data.get("vision_layers"), info.data.get("num_layers")
        if list(value) != sorted(set(value)) or any(i < 0 for i in value):
            raise ValueError(f"must be increasing vision block indexes, got {value}")
        if blocks is not None and value and value[-1] >= blocks:
            raise ValueError(f"must index the {blocks} vision blocks, got {value}")
        if layers is not None and len(value) >= layers:
            raise ValueError(
                f"must be shorter than the text depth ({layers}): feature k is added after "
                f"text layer k, got {len(value)}"
            )
        return value

    @field_validator("max_pixels")
    @classmethod
    def _pixel_range(cls, value: int, info: ValidationInfo) -> int:
        low, patch = info.data.get("min_pixels"), info.data.get("patch_size")
        if low is not None and value < low:
            raise ValueError(f"must be at least min_pixels ({low}), got {value}")
        if patch is not None and value < (2 * patch) ** 2:
            raise ValueError(f"must hold one merged 2x2 patch ({(2 * patch) ** 2}), got {value}")
        return value


def text_config(spec: Spec) -> dict[str, Any]:
    return {
        "model_type": "qwen3_vl_text",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab_size,
        "rope_theta": spec.rope_theta,
        "rope_scaling": {
            "rope_type": "default",
            "mrope_section": list(spec.mrope_section),
            "mrope_interleaved": True,
        },
        "max_position_embeddings": 262144,
        "rms_norm_eps": 1e-6,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": True,
        "bos_token_id": IDS[ENDOFTEXT],
        "eos_token_id": IDS[IM_END],
    }


def vision_config(spec: Spec) -> dict[str, Any]:
    return {
        "model_type": "qwen3_vl",
        "depth": spec.vision_layers,
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_heads": spec.vision_heads,
        "out_hidden_size": spec.hidden_size,
        "in_channels": 3,
        "patch_size": spec.patch_size,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        "num_position_embeddings": spec.num_position_embeddings,
        "deepstack_visual_indexes": list(spec.deepstack_visual_indexes),
        "hidden_act": "gelu_pytorch_tanh",
        "initializer_range": 0.02,
    }


def model_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    if any(ids[token] != IDS[token] for token in SPECIALS):  # the files below use IDS
        raise AssertionError(f"special-token ids moved: {ids}")
    return {
        "architectures": ["Qwen3VLForConditionalGeneration"],
        "model_type": "qwen3_vl",
        "text_config": text_config(spec),
        "vision_config": vision_config(spec),
        "image_token_id": IDS[IMAGE_PAD],
        "video_token_id": IDS[VIDEO_PAD],
        "vision_start_token_id": IDS[VISION_START],
        "vision_end_token_id": IDS[VISION_END],
        "vision_token_id": IDS[VISION_PAD],
        "vocab_size": spec.vocab_size,
        "tie_word_embeddings": True,
        "eos_token_id": [IDS[IM_END], IDS[ENDOFTEXT]],
    }


def _image_processor(spec: Spec) -> dict[str, Any]:
    return {
        "patch_size": spec.patch_size,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "size": {"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_convert_rgb": True,
    }


def preprocessor_config(spec: Spec) -> dict[str, Any]:
    return {
        **_image_processor(spec),
        "image_processor_type": "Qwen2VLImageProcessorFast",
        "processor_class": "Qwen3VLProcessor",
    }


def video_preprocessor_config(spec: Spec) -> dict[str, Any]:
    return {
        **_image_processor(spec),
        "video_processor_type": "Qwen3VLVideoProcessor",
        "processor_class": "Qwen3VLProcessor",
        "fps": 2,
        "min_frames": 4,
        "max_frames": 8,
    }


def tokenizer_config(spec: Spec) -> dict[str, Any]:
    return {
        # The tokenizer.json as written (transformers' Qwen2Tokenizer would rebuild a
        # byte-level BPE around its vocabulary).
        "tokenizer_class": "PreTrainedTokenizerFast",
        "processor_class": "Qwen3VLProcessor",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": "<unk>",
        "padding_side": "left",
        "model_max_length": 262144,
        "add_bos_token": False,
        "add_eos_token": False,
    }


def generation_config(spec: Spec) -> dict[str, Any]:
    # Replaces build_checkpoint's Gemma-style one: Qwen ends turns on <|im_end|>.
    return {
        "bos_token_id": IDS[ENDOFTEXT],
        "eos_token_id": [IDS[IM_END], IDS[ENDOFTEXT]],
        "pad_token_id": IDS[ENDOFTEXT],
    }


def _lazy_model(config: dict[str, Any]) -> Any:
    """The mlx-vlm model at its (lazy, unevaluated) random init: shapes and module types
    for the weight writer. The dicts are copied: mlx-vlm's TextConfig renames
    `rope_type` to `type` in place."""
    from mlx_vlm.models import qwen3_vl as vlm

    config = json.loads(json.dumps(config))
    args = vlm.ModelConfig.from_dict(config)
    args.text_config = vlm.TextConfig.from_dict(config["text_config"])
    args.vision_config = vlm.VisionConfig.from_dict(config["vision_config"])
    return vlm.Model(args)


PATCH = "vision_tower.patch_embed.proj.weight"
FINAL_NORM = "language_model.model.norm.weight"


def _rule(spec: Spec, model: Any):
    """Randomise what MLX initialises to constants (norm scales, LayerNorm biases), so that
    no mistake hides behind a multiplication by one or an addition of zero; write the patch
    convolution in PyTorch layout."""
    import mlx.core as mx

    def values(name: str, shape: tuple[int, ...], key: Any) -> Any:
        if name == PATCH:  # MLX (out, T, kH, kW, in) drawn, stored (out, in, T, kH, kW)
            bound = 1 / math.sqrt(math.prod(shape[1:]))
            return mx.random.uniform(-bound, bound, shape, key=key).transpose(0, 4, 1, 2, 3)
        if len(shape) != 1:
            return None
        if name == FINAL_NORM:  # feeds only the LM head: scaling it sharpens the logits
            return mx.random.uniform(0.5, 1.5, shape, key=key) * spec.logit_scale
        if name.endswith(".weight"):  # RMSNorm / LayerNorm scales (ones at init)
            return mx.random.uniform(0.5, 1.5, shape, key=key)
        if name.endswith(".bias") and "norm" in name:  # LayerNorm shifts (zeros at init)
            return mx.random.normal(shape, key=key) * 0.1
        return None

    return values


def build(spec: Spec, out: Path) -> None:
    """Write the checkpoint files into the (existing, empty) directory `out`."""
    build_checkpoint(
        spec,
        out,
        specials=SPECIALS,
        end_of_turn=IM_END,
        model_config=model_config,
        lazy_model=_lazy_model,
        rule=_rule,
        files={
            "generation_config.json": generation_config,
            "preprocessor_config.json": preprocessor_config,
            "video_preprocessor_config.json": video_preprocessor_config,
            "processor_config.json": lambda spec: {"processor_class": "Qwen3VLProcessor"},
            "tokenizer_config.json": tokenizer_config,
        },
        chat_template=CHAT_TEMPLATE,
    )
