"""Synthesize a tiny random-weight Gemma 3 vision-language checkpoint.

The directory looks like an mlx-vlm converted Gemma 3 model (mlx-vlm key names:
`language_model.model.*`, `language_model.lm_head.*`, `vision_tower.vision_model.*`,
`multi_modal_projector.*`; one safetensors shard + index; tokenizer with the Gemma 3 special
tokens; chat template; image processor and processor configs), so that the real
`mlx_lm.load` and `mlx_vlm.load` both accept it and run the same text model.

Every value whose default differs between the libraries (mlx-lm 0.32.2, mlx-vlm 0.7.10), or
that one loader needs, is written explicitly:
- top-level `vocab_size`: mlx-lm's gemma3 copies it into the text config (default 262208:
  without it `mlx_lm.load` refuses the 512-row table).
- `rope_theta` AND `rope_global_base_freq`: mlx-lm's global layers read the first, mlx-vlm's
  the second.
- `sliding_window` (512 in mlx-lm, 1024 in mlx-vlm), `max_position_embeddings`.
- top-level `hidden_size`: mlx-vlm divides image features by sqrt(ModelConfig.hidden_size),
  which defaults to 2048 and is NOT read from the text config (published Gemma 3 configs
  have no top-level hidden_size; `write_top_level_hidden_size: false` reproduces that:
  image rows 0.177x of what a hidden-64 model should get, measured).
- `mm_tokens_per_image` at the top level (HF layout) AND in `text_config`: mlx-vlm's
  projector reads it there (default 256; 16 at the top level only: AvgPool2d kernel 0,
  `mlx_vlm.load` fails).
- `query_pre_attn_scalar` as an int: transformers' strict Gemma3TextConfig (which
  `mlx_lm.load` builds to load the tokenizer) refuses a float.
- `image_token_index`, `boi_token_index`, `eoi_token_index`, `pad_token_id`: mlx-vlm zeroes
  the embeddings of pad tokens (id from the top-level config, default 0).
- `language_model.lm_head.*` is written as a copy of the token embeddings: mlx-vlm's
  sanitize always overwrites it with `embed_tokens.weight` (its check for a stored head
  looks for the unprefixed key), mlx-lm uses a stored head. A copy makes both the same.
  A quantized checkpoint needs it: without a stored head mlx-vlm copies the packed
  embedding weight into an unquantized head and `mlx_vlm.load` fails on its shape.
- The processor's files: `preprocessor_config.json` (Gemma3ImageProcessor, square
  `image_size`, mean/std 0.5), `processor_config.json` (`image_seq_length`), flat
  `boi_token` / `eoi_token` / `image_token` in tokenizer_config.json, and
  `chat_template.jinja` (mlx-vlm 0.7.10's Gemma3Processor gets no chat template: only its
  tokenizer has one).
"""

from __future__ import annotations

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

BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
SOT, EOT = "<start_of_turn>", "<end_of_turn>"
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", SOT, EOT, BOI, EOI, IMAGE]
# Flat keys as in the published Gemma 3 tokenizer_config.json: mlx-vlm's Gemma3Processor
# reads `tokenizer.boi_token`, `.eoi_token`, `.image_token` and `.image_token_id`.
GEMMA3_SPECIALS = {"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE}
# Specials, 256 byte-fallback pieces, at least 100 learned pieces (harness/synth/tokenizer.py).
MIN_VOCAB = len(SPECIALS) + 256 + 100
# The LM head is written as a copy of the embedding table drawn in one piece: the weight
# writer splits larger tensors into chunks drawn from per-chunk keys.
MAX_EMBEDDING_ELEMENTS = 1 << 24

# A Gemma 3 chat template: <bos>, an optional system turn folded into the first user turn,
# <start_of_image> per image item, "model" for the assistant role.
CHAT_TEMPLATE = "".join(
    [
        "{{- bos_token -}}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- if messages[0]['content'] is string -%}",
        "{%- set prefix = messages[0]['content'] | trim + '\\n\\n' -%}",
        "{%- else -%}{%- set prefix = messages[0]['content'][0]['text'] | trim + '\\n\\n' -%}",
        "{%- endif -%}{%- set turns = messages[1:] -%}",
        "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}",
        "{%- for message in turns -%}",
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}",
        "{{- '<start_of_turn>' + role + '\\n' + (prefix if loop.first else '') -}}",
        "{%- if message['content'] is string -%}{{- message['content'] | trim -}}",
        "{%- else -%}{%- for item in message['content'] -%}",
        "{%- if item['type'] == 'image' -%}{{- '<start_of_image>' -}}",
        "{%- elif item['type'] == 'text' -%}{{- item['text'] | trim -}}",
        "{%- endif -%}{%- endfor -%}{%- endif -%}",
        "{{- '<end_of_turn>\\n' -}}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}",
    ]
)

PRESETS: dict[str, dict[str, Any]] = {
    # hidden 64: embed_scale 8 is a power of two; 48 is not. Four layers, every second one
    # global (Gemma 3 uses 6; mlx-lm indexes cache[pattern - 1], so layers >= pattern).
    # Vision: 112 px / patch 14 = 8x8 patches, pooled 2x2 into 16 tokens per image.
    "tiny": {
        "hidden_size": 64,
        "num_layers": 4,
        "sliding_window_pattern": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "head_dim": 16,
        "query_pre_attn_scalar": 16,
        "intermediate_size": 128,
        "vocab_size": 512,
        "rope_scaling_factor": 8.0,
        "vision_hidden_size": 32,
        "vision_layers": 2,
        "vision_heads": 2,
        "vision_intermediate_size": 64,
        "image_size": 112,
        "patch_size": 14,
        "mm_tokens_per_image": 16,
        "quantize_bits": None,
    },
}


class Spec(PresetSpec):
    """What to build. Every field is part of the cache key. Fields that other fields' checks
    read come first (a cross-field check sits on the option it blames)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: Literal["tiny"] = "tiny"
    hidden_size: int = Field(ge=8, le=4096, description="sqrt(hidden): both libraries' scale")
    num_layers: int = Field(ge=1, le=64)
    sliding_window_pattern: int = Field(ge=1, le=64, description="every Nth layer is global")
    num_heads: int = Field(ge=1, le=64)
    num_kv_heads: int = Field(ge=1, le=64)
    head_dim: int = Field(ge=2, le=512)
    query_pre_attn_scalar: int = Field(
        ge=1, le=4096, description="attention scale 1/sqrt(this); transformers wants an int"
    )
    intermediate_size: int = Field(ge=1, le=16384)
    vocab_size: int = Field(ge=MIN_VOCAB, le=262144)
    rope_scaling_factor: float | None = Field(
        ge=1.0, le=64.0, allow_inf_nan=False, description="linear RoPE scaling, global layers"
    )
    vision_hidden_size: int = Field(ge=1, le=2048)
    vision_layers: int = Field(ge=1, le=48)
    vision_heads: int = Field(ge=1, le=32)
    vision_intermediate_size: int = Field(ge=1, le=8192)
    image_size: int = Field(ge=1, le=1024, description="square input side, px")
    patch_size: int = Field(ge=1, le=64)
    mm_tokens_per_image: int = Field(ge=1, le=4096)
    quantize_bits: Literal[4, 8] | None
    sliding_window: int = Field(512, ge=1, le=131072)
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    logit_scale: float = Field(
        1.0, gt=0, le=1000.0, allow_inf_nan=False, description="final-norm factor"
    )
    write_top_level_hidden_size: bool = Field(
        True,
        description="false: leave it out as published Gemma 3 configs do (mlx-vlm then "
        "divides image features by sqrt(2048))",
    )
    seed: int = Field(0, ge=0, lt=2**64, description="MLX seeds are unsigned 64-bit")
    add_bos_token: bool = Field(
        False,
        description="the tokenizer adds <bos> when asked for special tokens, as the "
        "published Gemma 3 tokenizers do (mlx-vlm 0.7.10 asks for them on Gemma 3)",
    )

    @field_validator("sliding_window_pattern")
    @classmethod
    def _pattern_fits(cls, value: int, info: ValidationInfo) -> int:
        layers = info.data.get("num_layers")
        if layers is not None and value > layers:
            raise ValueError(
                f"must not exceed num_layers ({layers}): both libraries build the global "
                f"mask from the cache of layer {value - 1}, got {value}"
            )
        return value

    _kv_heads_divide = checks.kv_heads_divide()

    _even_head_dim = checks.even_head_dim()

    @field_validator("vocab_size")
    @classmethod
    def _embedding_in_one_piece(cls, value: int, info: ValidationInfo) -> int:
        hidden = info.data.get("hidden_size")
        if hidden is not None and value * hidden > MAX_EMBEDDING_ELEMENTS:
            raise ValueError(
                f"vocab_size * hidden_size must be at most {MAX_EMBEDDING_ELEMENTS} (the LM "
                f"head is written as a copy of the embedding table), got {value * hidden}"
            )
        return value

    _vision_heads_divide = checks.vision_heads_divide()

    _patch_grid = checks.patch_grid()

    @field_validator("mm_tokens_per_image")
    @classmethod
    def _pooling_grid(cls, value: int, info: ValidationInfo) -> int:
        side = math.isqrt(value)
        if side * side != value:
            raise ValueError(f"must be a perfect square (a square token grid), got {value}")
        size, patch = info.data.get("image_size"), info.data.get("patch_size")
        if size is None or patch is None:
            return value
        patches = size // patch
        if side > patches or patches % side:
            raise ValueError(
                f"sqrt(mm_tokens_per_image) = {side} must divide the {patches} patches per "
                f"side (image_size / patch_size): the projector average-pools patches into "
                f"tokens, got {value}"
            )
        return value


def _specials_config(ids: dict[str, int]) -> dict[str, Any]:
    return {
        "image_token_index": ids[IMAGE],
        "boi_token_index": ids[BOI],
        "eoi_token_index": ids[EOI],
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": [ids["<eos>"], ids[EOT]],
    }


def text_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    pattern = spec.sliding_window_pattern
    rope_scaling = (
        None
        if spec.rope_scaling_factor is None
        else {"rope_type": "linear", "factor": spec.rope_scaling_factor}
    )
    return {
        "model_type": "gemma3_text",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "query_pre_attn_scalar": spec.query_pre_attn_scalar,
        "vocab_size": spec.vocab_size,
        # mlx-lm's global layers read rope_theta, mlx-vlm's rope_global_base_freq.
        "rope_theta": 1_000_000.0,
        "rope_global_base_freq": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "rope_scaling": rope_scaling,
        "rope_traditional": False,
        "sliding_window": spec.sliding_window,
        "sliding_window_pattern": pattern,
        # Informational (transformers); both MLX libraries derive it from the pattern.
        "layer_types": [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(spec.num_layers)
        ],
        "max_position_embeddings": 131072,
        "mm_tokens_per_image": spec.mm_tokens_per_image,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "final_logit_softcapping": None,
        "attn_logit_softcapping": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
    }


def vision_config(spec: Spec) -> dict[str, Any]:
    return {
        "model_type": "siglip_vision_model",
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
        "num_channels": 3,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu_pytorch_tanh",
        "vision_use_head": False,
    }


def model_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    config = {
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "text_config": text_config(spec, ids),
        "vision_config": vision_config(spec),
        "vocab_size": spec.vocab_size,
        "mm_tokens_per_image": spec.mm_tokens_per_image,
        **_specials_config(ids),
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
    }
    if spec.write_top_level_hidden_size:
        config["hidden_size"] = spec.hidden_size
    return config


def preprocessor_config(spec: Spec) -> dict[str, Any]:
    return {
        "image_processor_type": "Gemma3ImageProcessor",
        "processor_class": "Gemma3Processor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": spec.image_size, "width": spec.image_size},
        "resample": 2,  # bilinear
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pan_and_scan": False,
        "image_seq_length": spec.mm_tokens_per_image,
    }


def processor_config(spec: Spec) -> dict[str, Any]:
    return {"processor_class": "Gemma3Processor", "image_seq_length": spec.mm_tokens_per_image}


def tokenizer_config(spec: Spec) -> dict[str, Any]:
    return {
        "tokenizer_class": "GemmaTokenizer",
        "processor_class": "Gemma3Processor",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "padding_side": "left",
        "model_max_length": 131072,
        "add_bos_token": spec.add_bos_token,
        "add_eos_token": False,
        **GEMMA3_SPECIALS,
    }


def _lazy_model(config: dict[str, Any]) -> Any:
    """The mlx-vlm model at its (lazy, unevaluated) random init: shapes and module types
    for the weight writer."""
    from mlx_vlm.models import gemma3 as vlm

    args = vlm.ModelConfig.from_dict(config)
    args.text_config = vlm.TextConfig.from_dict(config["text_config"])
    args.vision_config = vlm.VisionConfig.from_dict(config["vision_config"])
    return vlm.Model(args)


EMBED = "language_model.model.embed_tokens.weight"
HEAD = "language_model.lm_head.weight"
FINAL_NORM = "language_model.model.norm.weight"
PROJECTION = "multi_modal_projector.mm_input_projection_weight"


def _rule(spec: Spec, model: Any):
    """Randomise what MLX initialises to constants, so that no mistake hides behind a
    multiplication by one or an addition of zero."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    lazy = dict(tree_flatten(model.parameters()))
    # Gemma RMSNorms scale by (1 + weight): zero-centred weights, as trained ones are.
    gemma_norms = ("layernorm.weight", "norm.weight", "mm_soft_emb_norm.weight")

    def values(name: str, shape: tuple[int, ...], key: Any) -> Any:
        if name == HEAD:
            return lazy[EMBED]  # the same table (see the module docstring)
        if name == FINAL_NORM:
            # Feeds only the LM head: scaling it sharpens the logits.
            return mx.random.uniform(0.5, 1.5, shape, key=key) * spec.logit_scale - 1.0
        if name == PROJECTION:  # initialised to ones
            bound = 1 / math.sqrt(shape[0])
            return mx.random.uniform(-bound, bound, shape, key=key)
        if name.startswith("language_model.") or "mm_soft_emb_norm" in name:
            if len(shape) == 1 and name.endswith(gemma_norms):
                return mx.random.uniform(-0.5, 0.5, shape, key=key)
            return None
        if len(shape) == 1 and name.endswith(".weight"):  # vision LayerNorm scales
            return mx.random.uniform(0.5, 1.5, shape, key=key)
        if len(shape) == 1 and name.endswith(".bias"):
            return mx.random.normal(shape, key=key) * 0.1
        return None

    return values


def build(spec: Spec, out: Path) -> None:
    """Write the checkpoint files into the (existing, empty) directory `out`."""
    build_checkpoint(
        spec,
        out,
        specials=SPECIALS,
        end_of_turn=EOT,
        model_config=model_config,
        lazy_model=_lazy_model,
        rule=_rule,
        files={
            "preprocessor_config.json": preprocessor_config,
            "processor_config.json": processor_config,
            "tokenizer_config.json": tokenizer_config,
        },
        chat_template=CHAT_TEMPLATE,
    )
