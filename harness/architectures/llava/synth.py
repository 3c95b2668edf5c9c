"""Synthesize a tiny random-weight LLaVA 1.5 checkpoint (CLIP tower + Llama decoder).

The directory looks like an mlx-vlm converted LLaVA model (keys `language_model.model.*`,
`language_model.lm_head.*`, `vision_tower.vision_model.*`, `multi_modal_projector.*`; one
safetensors shard + index; tokenizer with `<image>`; chat template; CLIP image processor
and LlavaProcessor configs), so that the real `mlx_lm.load` (llava -> mistral3 -> llama)
and `mlx_vlm.load` both accept it and run the same text model.

Every value whose default differs between the libraries (mlx-lm 0.32.2, mlx-vlm 0.7.10),
or that one of them needs, is written explicitly:
- `text_config.tie_word_embeddings`: mlx-lm's llama defaults to True, its mistral3 wrapper
  sets False when absent, mlx-vlm's TextConfig defaults to False; neither library reads a
  top-level value (written too, for transformers).
- `text_config.rms_norm_eps`: mlx-lm's llama has no default, mlx-vlm's is 1e-6 (Llama 2
  uses 1e-5).
- `text_config.head_dim` = hidden / heads: mlx-vlm always derives it, mlx-lm reads it.
- `image_token_index` (mlx-vlm's default 32000 is llava-1.5's id, not ours) and
  `image_token_id` (transformers 5's name, read by the harness), `pad_token_id`.
- `vision_feature_layer`, `vision_feature_select_strategy`, `projector_hidden_act`
  (`gelu`: mlx-vlm hard-codes the exact-erf nn.GELU whatever the config says) and
  `multimodal_projector_bias` (mlx-vlm hard-codes biases).
- top-level `vocab_size` (mlx-vlm default 32000) and `text_config.vocab_size` (mlx-lm).
- `rope_theta`, `max_position_embeddings`; `attention_bias` / `mlp_bias` False (mlx-vlm
  has no biases; mlx-lm's o_proj follows attention_bias).
- processor files: `preprocessor_config.json` (CLIPImageProcessor: resize the shortest
  edge, centre crop to the square tower input, CLIP mean/std) and `processor_config.json`
  (`patch_size`, `vision_feature_select_strategy`, `num_additional_image_tokens: 1` for
  CLIP's CLS): mlx-vlm's LlavaProcessor expands each `<image>` into
  (side/patch)^2 + 1 tokens, minus 1 under the `default` strategy (CLS dropped). Without
  the strategy it counts 17 for 16 default features, without num_additional_image_tokens
  15: native mlx-vlm then fails in its merge (measured).
- `chat_template.jinja`: mlx-vlm's LlavaProcessor loads it onto the tokenizer only (the
  processor has none); native renders through the tokenizer, as mlx-lm does.
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

IMAGE = "<image>"
SPECIALS = ["<unk>", "<bos>", "<eos>", "<pad>", IMAGE]
MIN_VOCAB = len(SPECIALS) + 256 + 100
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def chat_template(render_bos: bool) -> str:
    """llava-hf/llava-1.5's template: "USER: " + each image as "<image>\\n", then the
    texts, then "ASSISTANT:". The published one renders no BOS (its Llama tokenizer adds
    one); with `render_bos` the template owns it and the tokenizer adds nothing."""
    return "".join(
        [
            "{{- bos_token -}}" if render_bos else "",
            "{%- for message in messages -%}",
            "{%- if message['role'] != 'system' -%}",
            "{{- message['role'].upper() + ': ' -}}{%- endif -%}",
            "{%- if message['content'] is string -%}{{- message['content'] + ' ' -}}",
            "{%- else -%}",
            "{%- for item in message['content'] if item['type'] == 'image' -%}",
            "{{- '<image>\\n' -}}{%- endfor -%}",
            "{%- for item in message['content'] if item['type'] == 'text' -%}",
            "{{- item['text'] + ' ' -}}{%- endfor -%}",
            "{%- endif -%}",
            "{%- endfor -%}",
            "{%- if add_generation_prompt -%}{{- 'ASSISTANT:' -}}{%- endif -%}",
        ]
    )


PRESETS: dict[str, dict[str, Any]] = {
    # Text: 2 Llama layers, hidden 64 (4 heads of 16, 2 KV heads). Vision: 56 px / patch 14
    # = 4x4 patches + CLS, 3 CLIP layers (so that layer -2 is neither the last one nor the
    # embeddings).
    "tiny": {
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 512,
        "vision_hidden_size": 32,
        "vision_layers": 3,
        "vision_heads": 2,
        "vision_intermediate_size": 64,
        "image_size": 56,
        "patch_size": 14,
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
    intermediate_size: int = Field(ge=1, le=16384)
    vocab_size: int = Field(ge=MIN_VOCAB, le=262144)
    vision_hidden_size: int = Field(ge=1, le=2048)
    vision_layers: int = Field(ge=1, le=48)
    vision_heads: int = Field(ge=1, le=32)
    vision_intermediate_size: int = Field(ge=1, le=8192)
    image_size: int = Field(ge=1, le=1024, description="square tower input side, px")
    patch_size: int = Field(ge=1, le=64)
    quantize_bits: Literal[4, 8] | None
    vision_feature_layer: int = Field(
        -2, ge=-49, le=48, description="hidden state of the CLIP tower fed to the projector"
    )
    vision_feature_select_strategy: Literal["default", "full"] = Field(
        "default", description="default: drop the CLS row; full: keep it"
    )
    tie_word_embeddings: bool = False
    rope_theta: float = Field(10000.0, gt=0, le=1e9, allow_inf_nan=False)
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    logit_scale: float = Field(
        1.0, gt=0, le=1000.0, allow_inf_nan=False, description="final-norm factor"
    )
    seed: int = Field(0, ge=0, lt=2**64, description="MLX seeds are unsigned 64-bit")
    add_bos_token: bool = Field(
        False,
        description="the published llava-1.5 BOS policy: the tokenizer adds <bos> and the "
        "template renders none (false: the template renders it, the tokenizer adds none)",
    )

    @field_validator("num_heads")
    @classmethod
    def _heads_divide(cls, value: int, info: ValidationInfo) -> int:
        hidden = info.data.get("hidden_size")
        if hidden is not None and (hidden % value or (hidden // value) % 2):
            raise ValueError(
                f"must divide hidden_size ({hidden}) into an even head_dim (RoPE rotates "
                f"pairs; mlx-vlm derives head_dim = hidden / heads), got {value}"
            )
        return value

    _kv_heads_divide = checks.kv_heads_divide()

    _vision_heads_divide = checks.vision_heads_divide()

    _patch_grid = checks.patch_grid()

    @field_validator("vision_feature_layer")
    @classmethod
    def _layer_exists(cls, value: int, info: ValidationInfo) -> int:
        layers = info.data.get("vision_layers")
        # The tower returns the embeddings and every layer's output: layers + 1 states.
        if layers is not None and not -(layers + 1) <= value <= layers:
            raise ValueError(
                f"must index the {layers + 1} hidden states of a {layers}-layer tower "
                f"(-{layers + 1}..{layers}), got {value}"
            )
        return value


def image_tokens(spec: Spec) -> int:
    """Rows per image: every patch, plus CLS under the `full` strategy."""
    patches = (spec.image_size // spec.patch_size) ** 2
    return patches + (spec.vision_feature_select_strategy == "full")


def text_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.hidden_size // spec.num_heads,
        "vocab_size": spec.vocab_size,
        "rms_norm_eps": 1e-5,
        "rope_theta": spec.rope_theta,
        "rope_scaling": None,
        "rope_traditional": False,
        "max_position_embeddings": 4096,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "tie_word_embeddings": spec.tie_word_embeddings,
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
    }


def vision_config(spec: Spec) -> dict[str, Any]:
    return {
        "model_type": "clip_vision_model",
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
        "projection_dim": spec.hidden_size,
        "num_channels": 3,
        "layer_norm_eps": 1e-5,
        "hidden_act": "quick_gelu",  # mlx-vlm's CLIP MLP: GELU(approx="fast") = quick GELU
        "vocab_size": spec.vocab_size,
    }


def model_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "text_config": text_config(spec, ids),
        "vision_config": vision_config(spec),
        "vocab_size": spec.vocab_size,
        "image_token_index": ids[IMAGE],
        "image_token_id": ids[IMAGE],
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
        "ignore_index": -100,
        "vision_feature_layer": spec.vision_feature_layer,
        "vision_feature_select_strategy": spec.vision_feature_select_strategy,
        "projector_hidden_act": "gelu",
        "multimodal_projector_bias": True,
        "image_seq_length": image_tokens(spec),
        "tie_word_embeddings": spec.tie_word_embeddings,
    }


def preprocessor_config(spec: Spec) -> dict[str, Any]:
    side = spec.image_size
    return {
        "image_processor_type": "CLIPImageProcessor",
        "processor_class": "LlavaProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"shortest_edge": side},
        "resample": 3,  # bicubic
        "do_center_crop": True,
        "crop_size": {"height": side, "width": side},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": CLIP_MEAN,
        "image_std": CLIP_STD,
    }


def processor_config(spec: Spec) -> dict[str, Any]:
    return {
        "processor_class": "LlavaProcessor",
        "image_token": IMAGE,
        "patch_size": spec.patch_size,
        "vision_feature_select_strategy": spec.vision_feature_select_strategy,
        "num_additional_image_tokens": 1,  # CLIP's CLS row
    }


def tokenizer_config(spec: Spec) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "processor_class": "LlavaProcessor",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "image_token": IMAGE,
        "extra_special_tokens": {"image_token": IMAGE},
        "padding_side": "left",
        "model_max_length": 4096,
        "add_bos_token": spec.add_bos_token,
        "add_eos_token": False,
    }


def _lazy_model(config: dict[str, Any]) -> Any:
    """The mlx-vlm model at its (lazy, unevaluated) random init: shapes and module types
    for the weight writer."""
    from mlx_vlm.models import llava as vlm

    args = vlm.ModelConfig.from_dict(config)
    args.text_config = vlm.TextConfig.from_dict(config["text_config"])
    args.vision_config = vlm.VisionConfig.from_dict(config["vision_config"])
    return vlm.Model(args)


FINAL_NORM = "language_model.model.norm.weight"
CLASS_EMBEDDING = "vision_tower.vision_model.embeddings.class_embedding"


def _rule(spec: Spec, model: Any):
    """Randomise what MLX initialises to constants (norm scales, LayerNorm biases, CLIP's
    class embedding), so that no mistake hides behind a multiplication by one or an
    addition of zero."""
    import mlx.core as mx

    def values(name: str, shape: tuple[int, ...], key: Any) -> Any:
        if name == FINAL_NORM:
            # Feeds only the LM head: scaling it sharpens the logits.
            return mx.random.uniform(0.5, 1.5, shape, key=key) * spec.logit_scale
        if name == CLASS_EMBEDDING:  # zeros at init; CLS must differ from the patches
            return mx.random.normal(shape, key=key)
        if len(shape) == 1 and "norm" in name and name.endswith(".weight"):
            return mx.random.uniform(0.5, 1.5, shape, key=key)
        if len(shape) == 1 and "norm" in name and name.endswith(".bias"):
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
        rule=_rule,
        files={
            "preprocessor_config.json": preprocessor_config,
            "processor_config.json": processor_config,
            "tokenizer_config.json": tokenizer_config,
        },
        chat_template=chat_template(render_bos=not spec.add_bos_token),
    )
