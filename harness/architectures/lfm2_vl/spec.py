"""What the LFM2-VL synthesizer builds: the special tokens and the validated `Spec` (split
from synth.py, which writes the files)."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from harness.synth import checks
from harness.synth.presets import PresetSpec

__all__ = ["PRESETS", "Spec"]

IMAGE, IMAGE_START, IMAGE_END = "<image>", "<|image_start|>", "<|image_end|>"
THUMBNAIL = "<|img_thumbnail|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# mlx-vlm picks a tile grid with 2..10 tiles (forced): every row/col marker it can emit.
MAX_TILES = 10
TILE_MARKERS = [
    f"<|img_row_{r}_col_{c}|>"
    for r in range(1, MAX_TILES + 1)
    for c in range(1, MAX_TILES + 1)
    if r * c <= MAX_TILES
]
SPECIALS = [
    "<pad>", "<eos>", "<bos>", "<unk>", IM_START, IM_END,
    IMAGE, IMAGE_START, IMAGE_END, THUMBNAIL, *TILE_MARKERS,
]  # fmt: skip
# Specials, 256 byte-fallback pieces, at least 100 learned pieces (harness/synth/tokenizer.py).
MIN_VOCAB = len(SPECIALS) + 256 + 100
# The official tiling values mlx-vlm 0.7.10 re-applies on load.
OFFICIAL_TILING = {"do_image_splitting": True, "min_tiles": 2, "max_tiles": MAX_TILES,
                   "use_thumbnail": True}  # fmt: skip

PRESETS: dict[str, dict[str, Any]] = {
    # Four text layers: conv, attention, conv, attention (layer 0 is a conv layer, as in
    # the published models). Vision: patch 8, a 4x4 position grid resized per view.
    "tiny": {
        "hidden_size": 64,
        "num_layers": 4,
        "attention_layers": (1, 3),
        "num_heads": 4,
        "num_kv_heads": 2,
        "ff_dim": 128,
        "ff_multiple_of": 32,
        "conv_L_cache": 3,
        "vocab_size": 512,
        "vision_hidden_size": 32,
        "vision_layers": 2,
        "vision_heads": 2,
        "vision_intermediate_size": 48,
        "patch_size": 8,
        "position_grid": 4,
        "downsample_factor": 2,
        "projector_hidden_size": 48,
        "min_image_tokens": 4,
        "max_image_tokens": 16,
        "tile_size": 32,
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
    num_layers: int = Field(ge=2, le=64)
    attention_layers: tuple[int, ...] = Field(
        min_length=1, max_length=63, description="indices of the attention layers"
    )
    num_heads: int = Field(ge=1, le=64)
    num_kv_heads: int = Field(ge=1, le=64)
    ff_dim: int = Field(ge=1, le=16384, description="block_ff_dim before auto-adjust")
    ff_multiple_of: int = Field(ge=1, le=1024)
    conv_L_cache: int = Field(ge=2, le=16, description="short-convolution kernel size")
    vocab_size: int = Field(ge=MIN_VOCAB, le=262144)
    vision_hidden_size: int = Field(ge=1, le=2048)
    vision_layers: int = Field(ge=1, le=48)
    vision_heads: int = Field(ge=1, le=32)
    vision_intermediate_size: int = Field(ge=1, le=8192)
    patch_size: int = Field(ge=2, le=32, description="encoder patch side, px")
    position_grid: int = Field(ge=1, le=64, description="side of the position-embedding grid")
    downsample_factor: int = Field(ge=1, le=4, description="pixel-unshuffle factor")
    projector_hidden_size: int = Field(ge=1, le=8192)
    min_image_tokens: int = Field(ge=1, le=4096)
    max_image_tokens: int = Field(ge=1, le=4096)
    tile_size: int = Field(ge=2, le=1024, description="tile side, px (odd patch grids pad)")
    quantize_bits: Literal[4, 8] | None
    max_pixels_tolerance: float = Field(2.0, ge=1.0, le=16.0, allow_inf_nan=False)
    projector_use_layernorm: bool = True
    write_layer_types: bool = Field(
        True,
        description="false: the text config names its attention layers by "
        "full_attn_idxs only (both libraries derive the layer types from them)",
    )
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    logit_scale: float = Field(
        1.0, gt=0, le=1000.0, allow_inf_nan=False, description="final-norm factor"
    )
    seed: int = Field(0, ge=0, lt=2**64, description="MLX seeds are unsigned 64-bit")
    add_bos_token: bool = Field(
        False, description="the tokenizer adds <bos> when asked for special tokens"
    )

    @field_validator("attention_layers")
    @classmethod
    def _hybrid(cls, value: tuple[int, ...], info: ValidationInfo) -> tuple[int, ...]:
        layers = info.data.get("num_layers")
        if tuple(sorted(set(value))) != value:
            raise ValueError(f"must be increasing layer indices, got {list(value)}")
        if layers is not None and (value[0] < 0 or value[-1] >= layers):
            raise ValueError(f"indices must lie in 0..{layers - 1}, got {list(value)}")
        if layers is not None and len(value) == layers:
            # Both libraries build the conv mask from the first conv layer's cache.
            raise ValueError("at least one layer must be a convolution layer")
        return value

    @field_validator("num_heads")
    @classmethod
    def _heads_divide(cls, value: int, info: ValidationInfo) -> int:
        hidden = info.data.get("hidden_size")
        if hidden is not None and (hidden % value or (hidden // value) % 2):
            raise ValueError(
                f"must divide hidden_size ({hidden}) into an even head_dim (RoPE), got {value}"
            )
        return value

    _kv_heads_divide = checks.kv_heads_divide()

    _vision_heads_divide = checks.vision_heads_divide()

    @field_validator("max_image_tokens")
    @classmethod
    def _token_budget(cls, value: int, info: ValidationInfo) -> int:
        low = info.data.get("min_image_tokens")
        if low is not None and value < low:
            raise ValueError(f"must be at least min_image_tokens ({low}), got {value}")
        return value

    @field_validator("tile_size")
    @classmethod
    def _tile_patches(cls, value: int, info: ValidationInfo) -> int:
        patch = info.data.get("patch_size")
        if patch is not None and value % patch:
            raise ValueError(f"must be a multiple of patch_size ({patch}), got {value}")
        return value
