"""The Gemma 3n synthesizer's options: presets, and a pydantic `Spec` that refuses every value
the real loaders cannot build or run, naming the option (the error's `loc`).

Each constraint comes from the pinned mlx-lm 0.32.2 / mlx-vlm 0.7.10 code that loads the
result:
- Both decoders look up the first sliding and the first full-attention layer, and every
  KV-shared layer reuses the cache of the last non-shared layer of its type: the
  non-shared layers must hold both types (`sliding_window_pattern` >= 2 makes layer 0
  sliding; a full layer must come before the first shared one).
- mlx-vlm's MLP reads `intermediate_size[0]` for every layer (a list is required), mlx-lm
  `intermediate_size[i]`: one value, written as a list of equal entries.
- mlx-vlm's MobileNetV5 tower is hard-coded (the published ~294M-parameter layout, 2048
  output channels on a 16x16 grid = 256 soft tokens per image, whatever the config says):
  no vision option can shrink it, nor can the checkpoint leave it out (mlx-vlm's tower
  sanitizer indexes a tower weight unconditionally: KeyError). `vision_tower: zeros` (the
  default) writes it cheaply, `random` for real image prompts. Its input side is the
  processor's resize. The tower's fusion adapter resizes the stride-16 map to the 16x16
  token grid: by average pooling when the map's side is a multiple of 16, else by a
  bicubic branch that crashes in mlx-vlm 0.7.10 (its final norm gets NCHW input: "Shapes
  (1,16,2048,16) and (1,2048,1,1) cannot be broadcast"). So the side must be a multiple
  of 256 (256 skips the resize).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from ...synth import checks
from ...synth.presets import PresetSpec

BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
BOA, EOA, AUDIO = "<start_of_audio>", "<end_of_audio>", "<audio_soft_token>"
SOT, EOT = "<start_of_turn>", "<end_of_turn>"
# Text-vocabulary specials (ids from 0). As in the published vocabulary, <start_of_image>
# and <start_of_audio> are text tokens while <end_of_image> / <end_of_audio> open the
# vision / audio vocabularies that follow the text one (see MULTIMODAL below).
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", SOT, EOT, BOI, BOA]
# Rows of each multimodal vocabulary (published: 128 each). Vision ids are
# [text_vocab, text_vocab + 128), audio ids the next 128: <end_of_image> is the first vision
# id and the image soft token the second; likewise for audio.
MULTIMODAL_VOCAB = 128
MULTIMODAL = {"vision": [EOI, IMAGE], "audio": [EOA, AUDIO]}
# Flat keys as in the published tokenizer_config.json: Gemma3nProcessor reads
# tokenizer.image_token(_id), boi_token, eoi_token and the audio ones.
GEMMA3N_SPECIALS = {
    "boi_token": BOI,
    "eoi_token": EOI,
    "image_token": IMAGE,
    "boa_token": BOA,
    "eoa_token": EOA,
    "audio_token": AUDIO,
}
# Specials, 256 byte-fallback pieces, at least 100 learned ones (harness/synth/tokenizer.py).
MIN_VOCAB = len(SPECIALS) + 256 + 100
# mlx-vlm's tower emits a 16x16 grid of 2048 channels, reshaped to this many tokens.
SOFT_TOKENS_PER_IMAGE = 256
VISION_HIDDEN = 2048
SPARSITY = 0.95  # published activation sparsity of the leading layers

PRESETS: dict[str, dict[str, Any]] = {
    # Four layers, sliding/full alternating (published E2B: 30 layers, 4 sliding + 1 full).
    # No KV sharing by default (published: the last 10 layers share): mlx-vlm 0.7.10's
    # shared layers rotate their queries from the cache offset AFTER the owner layer's
    # update, mlx-lm's from the offset before it, so any shared layer makes the libraries
    # disagree (`kv_shared_layers: 2` measures it). The first two layers use the top-k
    # gelu of activation sparsity. 256 px images, the smallest mlx-vlm's tower
    # runs (published: 768).
    "tiny": {
        "hidden_size": 64,
        "num_layers": 4,
        "sliding_window_pattern": 2,
        "kv_shared_layers": 0,
        "per_layer_input_size": 16,
        "laurel_rank": 8,
        "altup_num_inputs": 4,
        "sparse_layers": 2,
        "vocab_size": 512,
        "num_heads": 4,
        "num_kv_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
        "image_size": 256,
        "quantize_bits": None,
    },
}


def layer_types(num_layers: int, pattern: int) -> list[str]:
    """Every `pattern`-th layer is full attention, the others sliding-window."""
    return [
        "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
        for i in range(num_layers)
    ]


class Spec(PresetSpec):
    """What to build. Every field is part of the cache key. Fields that other fields' checks
    read come first (a cross-field check sits on the option it blames)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: Literal["tiny"] = "tiny"
    hidden_size: int = Field(ge=8, le=4096)
    num_layers: int = Field(ge=2, le=64)
    sliding_window_pattern: int = Field(ge=2, le=64, description="every Nth layer is full")
    kv_shared_layers: int = Field(ge=0, le=63, description="the last N layers reuse KV")
    per_layer_input_size: int = Field(ge=1, le=1024)
    laurel_rank: int = Field(ge=1, le=1024)
    altup_num_inputs: int = Field(ge=2, le=8)
    sparse_layers: int = Field(ge=0, le=64, description=f"leading layers at {SPARSITY}")
    vocab_size: int = Field(ge=MIN_VOCAB, le=262144, description="the text vocabulary")
    num_heads: int = Field(ge=1, le=64)
    num_kv_heads: int = Field(ge=1, le=64)
    head_dim: int = Field(ge=2, le=512)
    intermediate_size: int = Field(ge=1, le=16384)
    image_size: int = Field(ge=256, le=768, description="square processor resize, px")
    quantize_bits: Literal[4, 8] | None
    sliding_window: int = Field(512, ge=1, le=131072)
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    logit_scale: float = Field(
        1.0, gt=0, le=1000.0, allow_inf_nan=False, description="final-norm factor"
    )
    seed: int = Field(0, ge=0, lt=2**64, description="MLX seeds are unsigned 64-bit")
    vision_tower: Literal["zeros", "random"] = Field(
        "zeros",
        description="weights of mlx-vlm's hard-coded MobileNetV5 tower (~294M parameters, "
        "~590 MB in bf16): 'random' for image prompts that mean something (minutes per "
        "image and path on a CPU); 'zeros' (cheap to write: every image yields the same "
        "features) for text prompts and runs that swap the tower",
    )
    # build_checkpoint reads it; Gemma 3n tokenizers do not add <bos> (the template does).
    add_bos_token: Literal[False] = False

    @field_validator("sliding_window_pattern")
    @classmethod
    def _pattern_fits(cls, value: int, info: ValidationInfo) -> int:
        layers = info.data.get("num_layers")
        if layers is not None and value > layers:
            raise ValueError(
                f"must not exceed num_layers ({layers}): the decoders need a full-attention "
                f"layer, got {value}"
            )
        return value

    @field_validator("kv_shared_layers")
    @classmethod
    def _kv_sources_exist(cls, value: int, info: ValidationInfo) -> int:
        layers, pattern = info.data.get("num_layers"), info.data.get("sliding_window_pattern")
        if layers is None or pattern is None:
            return value
        if layers - value < pattern:
            raise ValueError(
                f"must leave the first {pattern} layers (sliding_window_pattern) with their "
                f"own KV, so that both attention types have a cache to share, got {value} "
                f"of {layers}"
            )
        return value

    @field_validator("sparse_layers")
    @classmethod
    def _sparse_within_depth(cls, value: int, info: ValidationInfo) -> int:
        layers = info.data.get("num_layers")
        if layers is not None and value > layers:
            raise ValueError(f"must not exceed num_layers ({layers}), got {value}")
        return value

    _kv_heads_divide = checks.kv_heads_divide()

    _even_head_dim = checks.even_head_dim()

    @field_validator("image_size")
    @classmethod
    def _tower_strides(cls, value: int) -> int:
        if value % 256:
            raise ValueError(
                f"must be a multiple of 256 (mlx-vlm's tower fuses a stride-16 map into a "
                f"16x16 grid and crashes on any other), got {value}"
            )
        return value
