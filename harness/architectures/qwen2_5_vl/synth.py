"""Synthesize a tiny random-weight Qwen2.5-VL checkpoint that the real `mlx_lm.load` and
`mlx_vlm.load` both accept (mlx-vlm key names: `language_model.model.*`, `vision_tower.*`;
one safetensors shard + index).

Layout and what each loader needs (mlx-lm 0.32.2, mlx-vlm 0.7.10, measured):
- Flat HF layout: text fields at the root (both libraries read them there), a nested
  `vision_config` with `model_type: qwen2_5_vl` (mlx-vlm's VisionModel refuses others).
- `rope_scaling {type: mrope, mrope_section}` with the sections summing to head_dim / 2:
  mlx-vlm requires both keys; mlx-lm reads `type` and builds a plain 1-D RoPE from it.
- Written explicitly where the defaults differ: `max_position_embeddings` (mlx-lm 32768,
  mlx-vlm 128000), `rope_theta`, `tie_word_embeddings` (tied: no lm_head is written, see
  the shared notes), `rms_norm_eps`; the special-token ids at the root (mlx-vlm defaults
  to the published 151652..151656, outside a tiny vocabulary).
- `vision_tower.patch_embed.proj.weight` is stored in PyTorch layout (out, in, T, kH, kW):
  mlx-vlm's sanitize transposes a 5-D patch weight unless its last axis is 3, and the
  add-on applies the same sanitize.
- A `PreTrainedTokenizerFast` with `<|vision_start|>`, `<|image_pad|>`, `<|vision_end|>`;
  `preprocessor_config.json` (min/max pixels: 3136 / 50176 gives 54 tokens for 400x300),
  `video_preprocessor_config.json`, `processor_config.json` and `chat_template.jinja`:
  mlx-vlm's Qwen processor falls back to a hub download for each missing JSON file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from harness.synth import checks
from harness.synth.files import QUANT_GROUP
from harness.synth.presets import PresetSpec

__all__ = ["PRESETS", "SYNTH_VERSION", "Spec", "build"]

# Bump when the files written change, so cached checkpoints are rebuilt.
SYNTH_VERSION = 1

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
VISION_START, VISION_END, VISION_PAD = "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>"
IMAGE_PAD, VIDEO_PAD = "<|image_pad|>", "<|video_pad|>"
SPECIALS = [ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, VISION_PAD, IMAGE_PAD,
            VIDEO_PAD, "<unk>"]  # fmt: skip
MIN_VOCAB = len(SPECIALS) + 256 + 100  # specials, byte fallback, >= 100 learned pieces
PATCH_EMBED = "vision_tower.patch_embed.proj.weight"
FINAL_NORM = "language_model.model.norm.weight"

# The published Qwen2.5-VL chat template (default system turn, one
# <|vision_start|><|image_pad|><|vision_end|> per image item).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

PRESETS: dict[str, dict[str, Any]] = {
    # hidden 64 / 4 heads: head_dim 16, M-RoPE sections 2+3+3 = 8 (the published 16/24/24
    # of 64, scaled). Vision: 32 wide, 2 blocks (block 1 full attention, block 0 windowed),
    # 14 px patches merged 2x2, 112 px windows (4x4 merged tokens).
    "tiny": {
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 512,
        "mrope_section": (2, 3, 3),
        "vision_hidden_size": 32,
        "vision_depth": 2,
        "vision_heads": 2,
        "vision_intermediate_size": 64,
        "fullatt_block_indexes": (1,),
        "patch_size": 14,
        "window_size": 112,
        "min_pixels": 3136,
        "max_pixels": 50176,
        "quantize_bits": None,
    },
}


class Spec(PresetSpec):
    """What to build. Every field is part of the cache key. Fields that other fields'
    checks read come first (a cross-field check sits on the option it blames)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: Literal["tiny"] = "tiny"
    hidden_size: int = Field(ge=8, le=4096)
    num_layers: int = Field(ge=1, le=64)
    num_heads: int = Field(ge=1, le=64)
    num_kv_heads: int = Field(ge=1, le=64)
    intermediate_size: int = Field(ge=1, le=16384)
    vocab_size: int = Field(ge=MIN_VOCAB, le=262144)
    mrope_section: tuple[int, int, int] = Field(description="temporal, height, width dims")
    vision_hidden_size: int = Field(ge=4, le=2048)
    vision_depth: int = Field(ge=1, le=48)
    vision_heads: int = Field(ge=1, le=32)
    vision_intermediate_size: int = Field(ge=1, le=8192)
    fullatt_block_indexes: tuple[int, ...] = Field(max_length=48)
    patch_size: int = Field(ge=4, le=64, description="2 or 3 would defeat mlx-vlm's layout test")
    window_size: int = Field(ge=1, le=4096, description="px; a multiple of 2 * patch_size")
    min_pixels: int = Field(ge=1, le=1 << 24)
    max_pixels: int = Field(ge=1, le=1 << 24)
    quantize_bits: Literal[4, 8] | None
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    rope_theta: float = Field(1_000_000.0, gt=0, le=1e9, allow_inf_nan=False)
    logit_scale: float = Field(
        1.0, gt=0, le=1000.0, allow_inf_nan=False, description="final-norm factor"
    )
    seed: int = Field(0, ge=0, lt=2**64, description="MLX seeds are unsigned 64-bit")

    @field_validator("num_heads")
    @classmethod
    def _heads_divide(cls, value: int, info: ValidationInfo) -> int:
        hidden = info.data.get("hidden_size")
        if hidden is not None and (hidden % value or (hidden // value) % 2):
            raise ValueError(
                f"must divide hidden_size ({hidden}) into an even head_dim (RoPE rotates "
                f"pairs), got {value}"
            )
        return value

    _kv_heads_divide = checks.kv_heads_divide()

    @field_validator("mrope_section")
    @classmethod
    def _sections_cover_half_head(cls, value: tuple[int, ...], info: ValidationInfo) -> tuple:
        hidden, heads = info.data.get("hidden_size"), info.data.get("num_heads")
        if any(v < 0 for v in value):
            raise ValueError(f"sections must be non-negative, got {value}")
        if hidden is not None and heads is not None and sum(value) != hidden // heads // 2:
            raise ValueError(
                f"must sum to head_dim / 2 = {hidden // heads // 2} (one frequency per "
                f"rotated pair), got {value}"
            )
        return value

    @field_validator("vision_heads")
    @classmethod
    def _vision_heads_divide(cls, value: int, info: ValidationInfo) -> int:
        hidden = info.data.get("vision_hidden_size")
        if hidden is not None and (hidden % value or (hidden // value) % 4):
            raise ValueError(
                f"must divide vision_hidden_size ({hidden}) into a head_dim divisible by 4 "
                f"(2-D rotary over height and width), got {value}"
            )
        return value

    @field_validator("fullatt_block_indexes")
    @classmethod
    def _blocks_exist(cls, value: tuple[int, ...], info: ValidationInfo) -> tuple:
        depth = info.data.get("vision_depth")
        if depth is not None and any(not 0 <= i < depth for i in value):
            raise ValueError(f"indexes must lie in [0, vision_depth={depth}), got {value}")
        return value

    @field_validator("window_size")
    @classmethod
    def _window_of_merged_patches(cls, value: int, info: ValidationInfo) -> int:
        patch = info.data.get("patch_size")
        if patch is not None and value % (2 * patch):
            raise ValueError(f"must be a multiple of 2 * patch_size ({2 * patch}), got {value}")
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

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


def _token_ids(ids: dict[str, int]) -> dict[str, Any]:
    return {
        "vision_start_token_id": ids[VISION_START],
        "vision_end_token_id": ids[VISION_END],
        "vision_token_id": ids[VISION_PAD],
        "image_token_id": ids[IMAGE_PAD],
        "video_token_id": ids[VIDEO_PAD],
        "bos_token_id": ids[ENDOFTEXT],
        "eos_token_id": ids[IM_END],
        "pad_token_id": ids[ENDOFTEXT],
    }


def model_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "vocab_size": spec.vocab_size,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": spec.rope_theta,
        "rope_scaling": {"type": "mrope", "mrope_section": list(spec.mrope_section)},
        "max_position_embeddings": 128000,
        "max_window_layers": spec.num_layers,
        "sliding_window": 32768,
        "use_sliding_window": False,
        "attention_dropout": 0.0,
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
        "use_cache": True,
        "torch_dtype": spec.dtype,
        **_token_ids(ids),
        "vision_config": {
            "model_type": "qwen2_5_vl",
            "depth": spec.vision_depth,
            "hidden_size": spec.vision_hidden_size,
            "intermediate_size": spec.vision_intermediate_size,
            "num_heads": spec.vision_heads,
            "out_hidden_size": spec.hidden_size,
            "hidden_act": "silu",
            "in_channels": 3,
            "in_chans": 3,
            "patch_size": spec.patch_size,
            "spatial_patch_size": spec.patch_size,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": spec.window_size,
            "fullatt_block_indexes": list(spec.fullatt_block_indexes),
            "tokens_per_second": 2,
        },
    }


def preprocessor_config(spec: Spec) -> dict[str, Any]:
    return {
        "image_processor_type": "Qwen2VLImageProcessor",
        "processor_class": "Qwen2_5_VLProcessor",
        "do_convert_rgb": True,
        "do_normalize": True,
        "do_rescale": True,
        "do_resize": True,
        "rescale_factor": 1 / 255,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "min_pixels": spec.min_pixels,
        "max_pixels": spec.max_pixels,
        "patch_size": spec.patch_size,
        "temporal_patch_size": 2,
        "merge_size": 2,
        "resample": 3,
    }


def video_preprocessor_config(spec: Spec) -> dict[str, Any]:
    return {**preprocessor_config(spec), "video_processor_type": "Qwen2VLVideoProcessor"}


def processor_config(spec: Spec) -> dict[str, Any]:
    return {"processor_class": "Qwen2_5_VLProcessor"}


def tokenizer_config(spec: Spec) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "processor_class": "Qwen2_5_VLProcessor",
        "bos_token": None,
        "eos_token": IM_END,
        "pad_token": ENDOFTEXT,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": 131072,
        "padding_side": "left",
        "extra_special_tokens": {"image_token": IMAGE_PAD, "video_token": VIDEO_PAD,
                                 "vision_bos_token": VISION_START,
                                 "vision_eos_token": VISION_END},
    }  # fmt: skip


def generation_config(ids: dict[str, int]) -> dict[str, Any]:
    return {
        "bos_token_id": ids[ENDOFTEXT],
        "eos_token_id": [ids[IM_END], ids[ENDOFTEXT]],
        "pad_token_id": ids[ENDOFTEXT],
        "do_sample": False,
    }


def _lazy_model(config: dict[str, Any]) -> Any:
    """mlx-vlm's model at its (lazy) random init, built as `mlx_vlm.load` builds it."""
    from mlx_vlm.models import qwen2_5_vl as vlm

    args = vlm.ModelConfig.from_dict(json.loads(json.dumps(config)))
    args.text_config = vlm.TextConfig.from_dict(args.text_config)
    args.vision_config = vlm.VisionConfig.from_dict(config["vision_config"])
    return vlm.Model(args)


def _rule(spec: Spec, model: Any):
    """Randomise what MLX initialises to constants (RMSNorm scales), draw the final norm
    scaled by `logit_scale`, and store the patch weight in PyTorch layout."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    lazy = dict(tree_flatten(model.parameters()))

    def values(name: str, shape: tuple[int, ...], key: Any) -> Any:
        if name == PATCH_EMBED:  # MLX (out, T, kH, kW, in) -> PyTorch (out, in, T, kH, kW)
            return lazy[name].transpose(0, 4, 1, 2, 3)
        if name == FINAL_NORM:  # feeds only the (tied) head: scaling sharpens the logits
            return mx.random.uniform(0.5, 1.5, shape, key=key) * spec.logit_scale
        if len(shape) == 1 and name.endswith(".weight"):  # every RMSNorm scale (ones)
            return mx.random.uniform(0.5, 1.5, shape, key=key)
        return None

    return values


def build(spec: Spec, out: Path) -> None:
    """Write the checkpoint files into the (existing, empty) directory `out`."""
    import mlx.core as mx

    from harness.synth.tokenizer import build_bpe_tokenizer
    from harness.synth.weights import write_random_weights

    ids = build_bpe_tokenizer(out, SPECIALS, spec.vocab_size)
    config = model_config(spec, ids)
    mx.random.seed(spec.seed)  # mlx-vlm's modules draw their init from the global key
    model = _lazy_model(config)
    quantize = (QUANT_GROUP, spec.quantize_bits) if spec.quantize_bits is not None else None
    write_random_weights(
        model, out, seed=spec.seed, dtype=getattr(mx, spec.dtype), rule=_rule(spec, model),
        quantize=quantize,
    )  # fmt: skip
    if quantize is not None:
        quant = {"group_size": QUANT_GROUP, "bits": spec.quantize_bits, "mode": "affine"}
        config["quantization"] = config["quantization_config"] = quant
    payloads = {
        "config.json": config,
        "generation_config.json": generation_config(ids),
        "preprocessor_config.json": preprocessor_config(spec),
        "video_preprocessor_config.json": video_preprocessor_config(spec),
        "processor_config.json": processor_config(spec),
        "tokenizer_config.json": tokenizer_config(spec),
    }
    for name, payload in payloads.items():
        (out / name).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
