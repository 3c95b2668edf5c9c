"""Synthesize a tiny random-weight Mistral 3 vision-language checkpoint.

The directory looks like an mlx-vlm converted Mistral Small 3.1 (mlx-vlm key names:
`language_model.model.*`, `language_model.lm_head.*`, `vision_tower.vision_model.*`,
`multi_modal_projector.*`; one safetensors shard + index; tokenizer with `[INST]`, `[IMG]`,
`[IMG_BREAK]`, `[IMG_END]`; chat template; processor files), so that the real `mlx_lm.load`
and `mlx_vlm.load` both accept it and run the same text model.

Every value whose default differs between the libraries (mlx-lm 0.32.2, mlx-vlm 0.7.10), or
that one loader needs, is written explicitly:
- `text_config.rope_theta`: mlx-vlm's mistral3 TextConfig defaults to None (its RoPE base),
  mlx-lm's llama to 1e4 (Mistral Small 3.1 uses 1e9).
- `text_config.head_dim`: mlx-vlm's Mistral attention reads it as is (default None: no
  model), mlx-lm derives hidden / heads.
- `tie_word_embeddings: false` in `text_config` (mlx-lm's mistral3 reads it there, default
  False; transformers' Mistral3Config defaults the top-level one to True) and a stored
  `language_model.lm_head.weight`, as the published checkpoints have.
- `sliding_window: null` and `rope_scaling: null`: mlx-lm's llama honours a window through
  `layer_types`; mlx-vlm's Mistral has neither (and wants `rope_scaling["type"]`).
- `vision_config.head_dim` (mlx-vlm's default 64 feeds the 2-D RoPE whatever the heads are),
  `image_size` = the processor's `longest_edge` (the 2-D RoPE table has image_size /
  patch_size rows per side: a larger image would index past it, silently on MLX),
  `rope_theta`, `rms_norm_eps`.
- `spatial_merge_size` at the top level (mlx-vlm's processor reads it from config.json,
  its own default is 1; its model defaults to 2), `vision_feature_layer`,
  `multimodal_projector_bias`, `image_token_index` (and `image_token_id`, as transformers
  5 names it).
- The processor's files: `processor_config.json` (`[IMG]`, `[IMG_BREAK]`, `[IMG_END]`,
  `patch_size`, `spatial_merge_size`) and `preprocessor_config.json`
  (PixtralImageProcessor, `size.longest_edge`, `patch_size`, CLIP mean/std).
- Token names: the shared builder names BOS/EOS `<bos>` / `<eos>` (Mistral's own are `<s>`
  / `</s>`); only their ids and the template matter.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from harness.synth import checks
from harness.synth.files import build_checkpoint
from harness.synth.presets import PresetSpec

__all__ = ["PRESETS", "SYNTH_VERSION", "Spec", "build"]

# Bump when the files written change, so cached checkpoints are rebuilt.
SYNTH_VERSION = 1

INST, END_INST = "[INST]", "[/INST]"
SYSTEM, END_SYSTEM = "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]"
IMG, IMG_BREAK, IMG_END = "[IMG]", "[IMG_BREAK]", "[IMG_END]"
SPECIALS = [
    "<unk>", "<bos>", "<eos>", "<pad>", INST, END_INST, SYSTEM, END_SYSTEM,
    IMG, IMG_BREAK, IMG_END,
]  # fmt: skip
# Specials, 256 byte-fallback pieces, at least 100 learned pieces (harness/synth/tokenizer.py).
MIN_VOCAB = len(SPECIALS) + 256 + 100

# Mistral Small 3.1's template, reduced: BOS, an optional system prompt, [INST]...[/INST]
# turns with [IMG] per image item, assistant turns closed by EOS. No generation prompt.
CHAT_TEMPLATE = "".join(
    [
        "{{- bos_token -}}",
        "{%- if messages and messages[0]['role'] == 'system' -%}",
        "{%- if messages[0]['content'] is string -%}",
        "{{- '[SYSTEM_PROMPT]' + messages[0]['content'] + '[/SYSTEM_PROMPT]' -}}",
        "{%- else -%}",
        "{{- '[SYSTEM_PROMPT]' + messages[0]['content'][0]['text'] + '[/SYSTEM_PROMPT]' -}}",
        "{%- endif -%}{%- set turns = messages[1:] -%}",
        "{%- else -%}{%- set turns = messages -%}{%- endif -%}",
        "{%- for message in turns -%}",
        "{%- if message['role'] == 'user' -%}{{- '[INST]' -}}",
        "{%- if message['content'] is string -%}{{- message['content'] -}}",
        "{%- else -%}{%- for item in message['content'] -%}",
        "{%- if item['type'] == 'image' -%}{{- '[IMG]' -}}",
        "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}",
        "{%- endif -%}{%- endfor -%}{%- endif -%}",
        "{{- '[/INST]' -}}",
        "{%- else -%}",
        "{%- if message['content'] is string -%}{{- message['content'] -}}",
        "{%- else -%}{{- message['content'][0]['text'] -}}{%- endif -%}",
        "{{- eos_token -}}",
        "{%- endif -%}",
        "{%- endfor -%}",
    ]
)

# CLIP normalisation, as Pixtral's published preprocessor_config.json.
IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

PRESETS: dict[str, dict[str, Any]] = {
    # Text: hidden 64, 2 layers, GQA 4/2. Vision: patch 8, images fitted into 64 px (up to
    # 8x8 patches), merged 2x2: at most 4x4 image tokens + 3 [IMG_BREAK] + [IMG_END].
    "tiny": {
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
        "vocab_size": 512,
        "vision_hidden_size": 32,
        "vision_layers": 2,
        "vision_heads": 2,
        "vision_intermediate_size": 64,
        "patch_size": 8,
        "longest_edge": 64,
        "quantize_bits": None,
    },
}


class SpecBase(PresetSpec):
    """The options Mistral 3 and Pixtral share (a Mistral decoder behind a Pixtral tower).
    Fields that other fields' checks read come first."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: Literal["tiny"] = "tiny"
    hidden_size: int = Field(ge=8, le=4096)
    num_layers: int = Field(ge=1, le=64)
    num_heads: int = Field(ge=1, le=64)
    num_kv_heads: int = Field(ge=1, le=64)
    head_dim: int = Field(ge=2, le=512)
    intermediate_size: int = Field(ge=1, le=16384)
    vocab_size: int = Field(ge=MIN_VOCAB, le=262144)
    rope_theta: float = Field(1e9, gt=1.0, le=1e12, allow_inf_nan=False)
    vision_hidden_size: int = Field(ge=4, le=2048)
    vision_layers: int = Field(ge=1, le=48)
    vision_heads: int = Field(ge=1, le=32)
    vision_intermediate_size: int = Field(ge=1, le=8192)
    patch_size: int = Field(ge=1, le=64)
    spatial_merge_size: int = Field(2, ge=1, le=4, description="patches per token side")
    longest_edge: int = Field(ge=1, le=1024, description="images are fitted into this square")
    quantize_bits: Literal[4, 8] | None
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    logit_scale: float = Field(
        1.0, gt=0, le=1000.0, allow_inf_nan=False, description="final-norm factor"
    )
    seed: int = Field(0, ge=0, lt=2**64, description="MLX seeds are unsigned 64-bit")
    add_bos_token: bool = Field(
        False,
        description="the tokenizer adds <bos> when asked for special tokens, as the "
        "published Mistral tokenizers do (the chat template renders one as well)",
    )

    _kv_heads_divide = checks.kv_heads_divide()

    _even_head_dim = checks.even_head_dim()

    @field_validator("vision_heads")
    @classmethod
    def _vision_head_dim(cls, value: int, info: ValidationInfo) -> int:
        hidden = info.data.get("vision_hidden_size")
        if hidden is not None and (hidden % value or (hidden // value) % 4):
            raise ValueError(
                f"must divide vision_hidden_size ({hidden}) into heads of a multiple of 4 "
                f"(the 2-D RoPE splits each head's frequencies between rows and columns), "
                f"got {value}"
            )
        return value

    @field_validator("patch_size")
    @classmethod
    def _patch_conv_layout(cls, value: int, info: ValidationInfo) -> int:
        hidden = info.data.get("vision_hidden_size")
        if hidden is not None and hidden < value:
            # mlx-vlm's sanitize takes a conv weight whose out_channels < kernel size for a
            # PyTorch-layout one and transposes it.
            raise ValueError(
                f"must not exceed vision_hidden_size ({hidden}): mlx-vlm would transpose "
                f"the patch embedding, got {value}"
            )
        return value

    @field_validator("longest_edge")
    @classmethod
    def _whole_token_grid(cls, value: int, info: ValidationInfo) -> int:
        patch, merge = info.data.get("patch_size"), info.data.get("spatial_merge_size")
        if patch is not None and merge is not None and value % (patch * merge):
            raise ValueError(
                f"must be a multiple of patch_size * spatial_merge_size ({patch * merge}): "
                f"the processor rounds image sides up to that multiple, got {value}"
            )
        return value


class Spec(SpecBase):
    """What to build. Every field is part of the cache key."""


def specials_config(ids: dict[str, int]) -> dict[str, Any]:
    return {
        "image_token_index": ids[IMG],
        "image_token_id": ids[IMG],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
        "pad_token_id": ids["<pad>"],
    }


def text_config(spec: SpecBase, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "model_type": "mistral",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "vocab_size": spec.vocab_size,
        "rope_theta": spec.rope_theta,
        "rope_scaling": None,
        "rope_traditional": False,
        "sliding_window": None,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
        "pad_token_id": ids["<pad>"],
    }


def vision_config(spec: SpecBase) -> dict[str, Any]:
    edge = spec.longest_edge
    return {
        "model_type": "pixtral",
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "head_dim": spec.vision_hidden_size // spec.vision_heads,
        "image_size": edge,
        "patch_size": spec.patch_size,
        "num_channels": 3,
        "rope_theta": 10_000.0,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "attention_dropout": 0.0,
    }


def model_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["Mistral3ForConditionalGeneration"],
        "model_type": "mistral3",
        "text_config": text_config(spec, ids),
        "vision_config": vision_config(spec),
        "vocab_size": spec.vocab_size,
        "spatial_merge_size": spec.spatial_merge_size,
        "vision_feature_layer": -1,
        "multimodal_projector_bias": False,
        "projector_hidden_act": "gelu",
        "tie_word_embeddings": False,
        **specials_config(ids),
    }


def preprocessor_config(spec: SpecBase) -> dict[str, Any]:
    return {
        "image_processor_type": "PixtralImageProcessor",
        "processor_class": "PixtralProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"longest_edge": spec.longest_edge},
        "patch_size": {"height": spec.patch_size, "width": spec.patch_size},
        "resample": 3,  # bicubic
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": IMAGE_MEAN,
        "image_std": IMAGE_STD,
    }


def processor_config(spec: SpecBase) -> dict[str, Any]:
    return {
        "processor_class": "PixtralProcessor",
        "image_token": IMG,
        "image_break_token": IMG_BREAK,
        "image_end_token": IMG_END,
        "patch_size": spec.patch_size,
        "spatial_merge_size": spec.spatial_merge_size,
    }


def tokenizer_config(spec: SpecBase) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "padding_side": "left",
        "model_max_length": 131072,
        "add_bos_token": spec.add_bos_token,
        "add_eos_token": False,
    }


def _lazy_model(config: dict[str, Any]) -> Any:
    """The mlx-vlm model at its (lazy, unevaluated) random init: shapes and module types
    for the weight writer."""
    from mlx_vlm.models import mistral3 as vlm

    args = vlm.ModelConfig.from_dict(config)
    args.text_config = vlm.TextConfig.from_dict(config["text_config"])
    args.vision_config = vlm.VisionConfig.from_dict(config["vision_config"])
    return vlm.Model(args)


FINAL_NORM = "language_model.model.norm.weight"


def rule(spec: SpecBase, model: Any):
    """Randomise what MLX initialises to constants (every RMSNorm scale is ones), so that
    no mistake hides behind a multiplication by one."""
    import mlx.core as mx

    def values(name: str, shape: tuple[int, ...], key: Any) -> Any:
        if name == FINAL_NORM:
            # Feeds only the LM head: scaling it sharpens the logits.
            return mx.random.uniform(0.5, 1.5, shape, key=key) * spec.logit_scale
        if len(shape) == 1 and name.endswith(".weight"):  # RMSNorm scales
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
        end_of_turn="<eos>",
        model_config=model_config,
        lazy_model=_lazy_model,
        rule=rule,
        files={
            "preprocessor_config.json": preprocessor_config,
            "processor_config.json": processor_config,
            "tokenizer_config.json": tokenizer_config,
        },
        chat_template=CHAT_TEMPLATE,
    )
