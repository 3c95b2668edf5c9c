"""The Gemma 4 synthesizer's options: presets, and a pydantic `Spec` that refuses every value
the real loaders cannot build or run, naming the option (the error's `loc`).

Each constraint below comes from the pinned mlx-lm / mlx-vlm code that loads the result:
- RoPE rotates pairs: head dims must be even (`mx.fast.rope`).
- Full-attention layers rotate a quarter of `global_head_dim`; mlx-lm rounds that quarter
  to an int, mlx-vlm to an even int: they agree (same logits) only when it is even.
- The vision tower splits each head into two halves for its 2-D RoPE, each rotated by
  pairs: `vision_head_dim` must be a multiple of 4.
- A KV-shared layer reuses the cache of the last non-shared layer of its attention type
  (`previous_kvs` in both libraries): at least one layer must keep its own KV, and every
  attention type among the shared layers must occur among the non-shared ones.
- mlx-vlm's Gemma 4 processor accepts only the published soft-token budgets
  (`_SUPPORTED_SOFT_TOKENS` in mlx_vlm/models/gemma4/processing_gemma4.py).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import (
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    field_validator,
    model_serializer,
)

from ...synth.presets import PresetSpec

BASE_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
# Flat special-token keys as in the public Gemma 4 tokenizer_config.json; without them the
# processor's image_token_id is None (stack-facts pitfall 3).
GEMMA4_SPECIALS = {
    "sot_token": "<|turn>",
    "eot_token": "<turn|>",
    "soc_token": "<|channel>",
    "eoc_token": "<channel|>",
    "think_token": "<|think|>",
    "boi_token": "<|image>",
    "eoi_token": "<image|>",
    "image_token": "<|image|>",
    "boa_token": "<|audio>",
    "eoa_token": "<audio|>",
    "audio_token": "<|audio|>",
    "video_token": "<|video|>",
    "escape_token": '<|"|>',
    "str_token": "<|tool_response>",
    "etr_token": "<tool_response|>",
    "stc_token": "<|tool_call>",
    "etc_token": "<tool_call|>",
    "std_token": "<|tool>",
    "etd_token": "<tool|>",
}
SPECIALS = BASE_SPECIALS + list(GEMMA4_SPECIALS.values())
# The tokenizer holds the specials, 256 byte-fallback pieces and at least 100 learned ones
# (harness/synth/tokenizer.py); the embedding table must have a row for each.
MIN_VOCAB = len(SPECIALS) + 256 + 100

# mlx-vlm 0.7.10's Gemma 4 processor refuses any other max_soft_tokens at load (with a
# misleading "missing preprocessor_config.json"); a test pins this to the library's tuple.
SUPPORTED_SOFT_TOKENS = (70, 140, 280, 560, 1120)

# Beyond this the final softcap (30) saturates every top logit, and float16 overflows.
MAX_LOGIT_SCALE = 1000.0

# Options added after synthesizer version 2, with the default under which a dump leaves them
# out (so that every checkpoint built before they existed keeps its cache key and bytes).
OMITTED_WHEN_DEFAULT: dict[str, Any] = {"add_bos_token": False, "pad_token": "<pad>"}

# Dimensions per preset; any field given explicitly overrides its preset value.
# "e2b" follows the published Gemma 4 E2B config (text and vision towers), 4-bit like the
# "-MLX-4bit" community conversions.
PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "hidden_size": 64,
        "num_layers": 4,
        "kv_shared_layers": 2,
        "per_layer_input_size": 16,
        "vocab_size": 512,
        "soft_tokens": 70,
        "num_heads": 4,
        "head_dim": 16,
        "global_head_dim": 32,
        "intermediate_size": 128,
        "full_attention_every": 2,
        "vision_hidden_size": 32,
        "vision_layers": 2,
        "vision_heads": 2,
        "vision_head_dim": 16,
        "vision_intermediate_size": 64,
        "vision_position_embeddings": 256,
        "quantize_bits": None,
    },
    "e2b": {
        "hidden_size": 1536,
        "num_layers": 35,
        "kv_shared_layers": 20,
        "per_layer_input_size": 256,
        "vocab_size": 262144,
        "soft_tokens": 280,
        "num_heads": 8,
        "head_dim": 256,
        "global_head_dim": 512,
        "intermediate_size": 6144,
        "full_attention_every": 5,
        "vision_hidden_size": 768,
        "vision_layers": 16,
        "vision_heads": 12,
        "vision_head_dim": 64,
        "vision_intermediate_size": 3072,
        "vision_position_embeddings": 10240,
        "quantize_bits": 4,
    },
}


def layer_types(num_layers: int, full_attention_every: int) -> list[str]:
    """Every Nth layer is full attention, the others sliding-window."""
    return [
        "full_attention" if (i + 1) % full_attention_every == 0 else "sliding_attention"
        for i in range(num_layers)
    ]


def _multiple_of(value: int, factor: int, why: str) -> int:
    if value % factor:
        raise ValueError(f"must be a multiple of {factor} ({why}), got {value}")
    return value


# Upper bounds: a little above the published Gemma 4 sizes (E2B/E4B), so that a case file
# cannot ask the gate to allocate tens of gigabytes (a 4e8-token vocabulary aborted the
# tokenizer trainer with a 17.7 GB allocation).
class Spec(PresetSpec):
    """What to build. Every field is part of the cache key.

    Fields that other fields' checks read come first: a cross-field check sits on the
    option it blames and sees the earlier ones in `info.data`."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: Literal["tiny", "e2b"] = "tiny"
    hidden_size: int = Field(ge=16, le=4096, description="sqrt(hidden) is mlx-lm's embed_scale")
    num_layers: int = Field(ge=2, le=64)
    full_attention_every: int = Field(ge=1, description="every Nth layer is full attention")
    kv_shared_layers: int = Field(ge=0, description="the last N layers reuse earlier KV")
    per_layer_input_size: int = Field(ge=0, le=1024, description="0 disables per-layer inputs")
    vocab_size: int = Field(ge=MIN_VOCAB, le=262144)
    soft_tokens: int = Field(description=f"max_soft_tokens per image: {SUPPORTED_SOFT_TOKENS}")
    num_heads: int = Field(ge=1, le=64)
    head_dim: int = Field(ge=2, le=512)
    global_head_dim: int = Field(ge=2, le=1024, description="head dim of the full-attention layers")
    intermediate_size: int = Field(ge=1, le=16384)
    vision_hidden_size: int = Field(ge=8, le=2048)
    vision_layers: int = Field(ge=1, le=48)
    vision_heads: int = Field(ge=1, le=32)
    vision_head_dim: int = Field(ge=4, le=256)
    vision_intermediate_size: int = Field(ge=1, le=8192)
    vision_position_embeddings: int = Field(ge=16, le=65536)
    quantize_bits: Literal[4, 8] | None
    sliding_window: int = Field(512, ge=1, le=131072)
    bidirectional: Literal["none", "vision"] = "none"
    dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    logit_scale: float = Field(
        1.0,
        gt=0,
        le=MAX_LOGIT_SCALE,
        allow_inf_nan=False,
        description="final-norm factor: >1 sharpens logits",
    )
    seed: int = Field(0, ge=0, lt=2**64, description="MLX seeds are unsigned 64-bit")
    add_bos_token: bool = Field(
        False,
        description="the tokenizer adds <bos> when asked for special tokens "
        "(tokenizer_config add_bos_token + a post-processor), as Gemma's own tokenizers do",
    )
    pad_token: Literal["<pad>", "<unk>", "<mask>"] = Field(
        "<pad>",
        description="the pad token (pad_token_id, id 0 for <pad>): transformers feeds it as "
        "the per-layer-input id of image tokens, mlx-vlm 0.7.10 feeds id 0 whatever it is",
    )

    @model_serializer(mode="wrap")
    def _omit_later_defaults(
        self, handler: SerializerFunctionWrapHandler, info: SerializationInfo
    ) -> dict[str, Any]:
        # Options added after SYNTH_VERSION 2 appear in dumps (the cache key, synth_spec.json)
        # only when set: checkpoints that do not use them keep their key and their bytes.
        data = handler(self)
        for name, default in OMITTED_WHEN_DEFAULT.items():
            if data.get(name) == default:
                del data[name]
        return data

    @field_validator("head_dim")
    @classmethod
    def _even_head_dim(cls, value: int) -> int:
        return _multiple_of(value, 2, "RoPE rotates pairs of dimensions")

    @field_validator("global_head_dim")
    @classmethod
    def _rotated_quarter_is_even(cls, value: int) -> int:
        _multiple_of(value, 2, "RoPE rotates pairs of dimensions")
        # mlx-lm rotates int(d * 0.25) dims, mlx-vlm 2 * int(d * 0.25 // 2): the same dims
        # (and the same logits) only when the quarter is even, e.g. 8, 10, 16, 18, 32.
        if (value // 4) % 2:
            raise ValueError(
                f"must have an even quarter (global_head_dim // 4): mlx-lm and mlx-vlm "
                f"round an odd one differently and their logits differ, got {value}"
            )
        return value

    @field_validator("vision_head_dim")
    @classmethod
    def _vision_rope_halves(cls, value: int) -> int:
        return _multiple_of(value, 4, "the vision 2-D RoPE rotates pairs in each half")

    @field_validator("soft_tokens")
    @classmethod
    def _supported_soft_tokens(cls, value: int) -> int:
        if value not in SUPPORTED_SOFT_TOKENS:
            raise ValueError(
                f"must be one of {SUPPORTED_SOFT_TOKENS} (mlx-vlm's Gemma 4 processor "
                f"accepts no other max_soft_tokens), got {value}"
            )
        return value

    @field_validator("kv_shared_layers")
    @classmethod
    def _kv_sources_exist(cls, value: int, info: ValidationInfo) -> int:
        layers, every = info.data.get("num_layers"), info.data.get("full_attention_every")
        if layers is None or every is None:
            return value  # their own errors are reported
        if value >= layers:
            raise ValueError(
                f"must leave at least one of the {layers} layers with its own KV, got {value}"
            )
        types = layer_types(layers, every)
        own, shared = set(types[: layers - value]), set(types[layers - value :])
        if shared - own:
            missing = ", ".join(sorted(shared - own))
            raise ValueError(
                f"{value} shared layers include {missing} layers, but none of the first "
                f"{layers - value} layers (full_attention_every={every}) is {missing}: the "
                f"shared layers would have no KV to reuse"
            )
        return value
