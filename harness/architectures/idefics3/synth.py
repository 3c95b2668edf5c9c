"""Synthesize a tiny random-weight Idefics3 vision-language checkpoint.

Default layout is the Hugging Face one (`model.text_model.*`, `lm_head.weight`,
`model.vision_model.*` with a PyTorch-layout patch convolution, `model.connector.*`);
`layout: mlx` writes mlx-vlm's converted names instead (`language_model.*`,
`vision_model.*`, `connector.*`), as mlx-community checkpoints have them. mlx-vlm's sanitize
reads both; `mlx_lm.load` reads neither (it has no `idefics3` model).

Every value whose default differs between the libraries (mlx-lm 0.32.2 `llama.ModelArgs`,
mlx-vlm 0.7.10 `idefics3.TextConfig`), or that one of them needs, is written explicitly:
- `rope_theta`: mlx-lm defaults to 10000, mlx-vlm to 1e6; the preset uses 1e5 (SmolVLM's),
  equal to neither, so a loader that falls back to either default is caught.
- `tie_word_embeddings: false` and a stored `lm_head.weight`: mlx-lm's llama ties by
  default, mlx-vlm's Idefics3 language model always has an untied head.
- `head_dim` = hidden_size / num_attention_heads: mlx-vlm always derives it so, mlx-lm
  reads `head_dim` when present.
- `max_position_embeddings`, `rope_scaling: null`, `rope_traditional`, `rms_norm_eps`,
  `attention_bias` / `mlp_bias` false (mlx-vlm's decoder has no biases).
- `image_token_id` and `scale_factor` at the top level (mlx-vlm defaults 49153 and 2).
- The processor's files: `preprocessor_config.json` (Idefics3ImageProcessor: `size.
  longest_edge` = split_factor x `max_image_size.longest_edge`, tiles of the vision
  tower's image_size), `processor_config.json` (`image_seq_len`, mlx-vlm's processor
  defaults to 169), tokenizer with `<fake_token_around_image>`, `<image>`, `<global-img>`,
  `<end_of_utterance>` and the `<row_i_col_j>` tokens, and the Idefics3 chat template.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, ClassVar, Literal

import mlx.nn as nn
from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from harness.synth import checks
from harness.synth.files import build_checkpoint
from harness.synth.presets import PresetSpec

__all__ = ["PRESETS", "SYNTH_VERSION", "Spec", "build"]

SYNTH_VERSION = 1

FAKE, IMAGE, GLOBAL = "<fake_token_around_image>", "<image>", "<global-img>"
START, EOU = "<|im_start|>", "<end_of_utterance>"
MAX_SPLIT = 4  # tiles per side the tokenizer has <row_i_col_j> tokens for
GRID = [f"<row_{r}_col_{c}>" for r in range(1, MAX_SPLIT + 1) for c in range(1, MAX_SPLIT + 1)]
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", START, EOU, FAKE, IMAGE, GLOBAL, *GRID]
MIN_VOCAB = len(SPECIALS) + 256 + 100

# Idefics3's published template (role capitalized, "User:<image>text<end_of_utterance>"),
# extended to plain-string contents.
CHAT_TEMPLATE = "".join(
    [
        "<|im_start|>{% for message in messages %}",
        "{{ message['role'] | capitalize }}",
        "{% if message['content'] is string %}{{ ': ' + message['content'] }}",
        "{% else %}",
        "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}",
        "{% endif %}",
        "{% for line in message['content'] %}",
        "{% if line['type'] == 'text' %}{{ line['text'] }}",
        "{% elif line['type'] == 'image' %}{{ '<image>' }}{% endif %}",
        "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}",
        "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}",
    ]
)

PRESETS: dict[str, dict[str, Any]] = {
    # Text: 2 Llama layers, hidden 64 (head_dim 16, GQA 4:2). Vision: 28 px tiles of 7 px
    # patches (4x4), pixel-shuffled 2x2 into 4 tokens per tile; images resized to a 56 px
    # longest edge: 2x2 tiles + the global image = 20 image tokens per landscape image.
    "tiny": {
        "hidden_size": 64,
        "num_layers": 2,
        "num_heads": 4,
        "num_kv_heads": 2,
        "intermediate_size": 128,
        "vocab_size": 512,
        "rope_theta": 100_000.0,
        "vision_hidden_size": 32,
        "vision_layers": 2,
        "vision_heads": 2,
        "vision_intermediate_size": 64,
        "image_size": 28,
        "patch_size": 7,
        "scale_factor": 2,
        "split_factor": 2,
        "quantize_bits": None,
    },
}


class Spec(PresetSpec):
    """What to build; every field is part of the cache key. Fields that other fields'
    checks read come first."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = PRESETS

    preset: Literal["tiny"] = "tiny"
    hidden_size: int = Field(ge=8, le=4096)
    num_layers: int = Field(ge=1, le=64)
    num_heads: int = Field(ge=1, le=64)
    num_kv_heads: int = Field(ge=1, le=64)
    intermediate_size: int = Field(ge=1, le=16384)
    vocab_size: int = Field(ge=MIN_VOCAB, le=262144)
    rope_theta: float = Field(gt=0, le=1e9, allow_inf_nan=False)
    vision_hidden_size: int = Field(ge=1, le=2048)
    vision_layers: int = Field(ge=1, le=48)
    vision_heads: int = Field(ge=1, le=32)
    vision_intermediate_size: int = Field(ge=1, le=8192)
    image_size: int = Field(ge=1, le=1024, description="tile side = max_image_size, px")
    patch_size: int = Field(ge=1, le=64)
    scale_factor: int = Field(ge=1, le=8, description="pixel-shuffle factor per side")
    split_factor: int = Field(
        ge=1, le=MAX_SPLIT, description="size.longest_edge / image_size: 1 = one tile, no grid"
    )
    quantize_bits: Literal[4, 8] | None
    dtype: Literal["bfloat16", "float32"] = "bfloat16"
    layout: Literal["hf", "mlx"] = Field(
        "hf", description="hf: model.text_model.* / lm_head names; mlx: mlx-vlm's converted"
    )
    logit_scale: float = Field(
        1.0, gt=0, le=1000.0, allow_inf_nan=False, description="final-norm factor"
    )
    seed: int = Field(0, ge=0, lt=2**64, description="MLX seeds are unsigned 64-bit")

    @property
    def add_bos_token(self) -> bool:
        """The tokenizer adds nothing (SmolVLM's does not): the template owns the prompt."""
        return False

    @field_validator("num_kv_heads")
    @classmethod
    def _kv_heads_divide(cls, value: int, info: ValidationInfo) -> int:
        heads, hidden = info.data.get("num_heads"), info.data.get("hidden_size")
        if heads is not None and heads % value:
            raise ValueError(f"must divide num_heads ({heads}), got {value}")
        if heads is not None and hidden is not None and (hidden % heads or (hidden // heads) % 2):
            raise ValueError(
                f"num_heads ({heads}) must divide hidden_size ({hidden}) into an even head_dim"
            )
        return value

    _vision_heads_divide = checks.vision_heads_divide()

    @field_validator("patch_size")
    @classmethod
    def _patch_grid(cls, value: int, info: ValidationInfo) -> int:
        size, hidden = info.data.get("image_size"), info.data.get("vision_hidden_size")
        if size is not None and size % value:
            raise ValueError(f"must divide image_size ({size}), got {value}")
        if hidden is not None and hidden < value:
            # mlx-vlm's sanitize tells the conv layouts apart by out_channels >= kernel.
            raise ValueError(f"must not exceed vision_hidden_size ({hidden}), got {value}")
        return value

    @field_validator("scale_factor")
    @classmethod
    def _shuffle_grid(cls, value: int, info: ValidationInfo) -> int:
        size, patch = info.data.get("image_size"), info.data.get("patch_size")
        if size is not None and patch is not None and (size // patch) % value:
            raise ValueError(
                f"must divide the {size // patch} patches per tile side (pixel shuffle), "
                f"got {value}"
            )
        return value

    @property
    def tokens_per_tile(self) -> int:
        return (self.image_size // self.patch_size) ** 2 // self.scale_factor**2


def _specials_config(ids: dict[str, int]) -> dict[str, Any]:
    return {
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
    }


def text_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
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
        "max_position_embeddings": 8192,
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        **_specials_config(ids),
    }


def vision_config(spec: Spec) -> dict[str, Any]:
    return {
        "model_type": "idefics3_vision",
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "image_size": spec.image_size,
        "patch_size": spec.patch_size,
        "num_channels": 3,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu_pytorch_tanh",
    }


def model_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["Idefics3ForConditionalGeneration"],
        "model_type": "idefics3",
        "text_config": text_config(spec, ids),
        "vision_config": vision_config(spec),
        "image_token_id": ids[IMAGE],
        "scale_factor": spec.scale_factor,
        "vocab_size": spec.vocab_size,
        "tie_word_embeddings": False,
        **_specials_config(ids),
    }


def preprocessor_config(spec: Spec) -> dict[str, Any]:
    return {
        "image_processor_type": "Idefics3ImageProcessor",
        "processor_class": "Idefics3Processor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"longest_edge": spec.split_factor * spec.image_size},
        "max_image_size": {"longest_edge": spec.image_size},
        "do_image_splitting": True,
        "resample": 1,  # LANCZOS, as published
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pad": True,
    }


def processor_config(spec: Spec) -> dict[str, Any]:
    return {"processor_class": "Idefics3Processor", "image_seq_len": spec.tokens_per_tile}


def tokenizer_config(spec: Spec) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "processor_class": "Idefics3Processor",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "add_bos_token": False,
        "add_eos_token": False,
        "padding_side": "left",
        "model_max_length": 8192,
        "additional_special_tokens": [FAKE, IMAGE, EOU],
    }


class _HFLayout(nn.Module):
    """The mlx-vlm model's modules under Hugging Face names (what mlx-vlm's sanitize
    maps back): model.{text_model,vision_model,connector}, lm_head."""

    def __init__(self, vlm: Any) -> None:
        super().__init__()
        language = vlm.language_model
        text = nn.Module()
        text.embed_tokens, text.layers, text.norm = (
            language.embed_tokens,
            language.layers,
            language.norm,
        )
        self.model = nn.Module()
        self.model.text_model = text
        self.model.vision_model = vlm.vision_model
        self.model.connector = vlm.connector
        self.lm_head = language.lm_head


def _vlm_model(config: dict[str, Any]) -> Any:
    from mlx_vlm.models import idefics3 as vlm

    args = vlm.ModelConfig.from_dict(config)
    args.text_config = vlm.TextConfig.from_dict(config["text_config"])
    args.vision_config = vlm.VisionConfig.from_dict(config["vision_config"])
    return vlm.Model(args)


PATCH_SUFFIX = "vision_model.embeddings.patch_embedding.weight"
FINAL_NORMS = ("model.text_model.norm.weight", "language_model.norm.weight")


def _rule(spec: Spec, model: Any):
    """Randomise what MLX initialises to constants (norm scales, biases), so that no
    mistake hides behind a multiplication by one or an addition of zero; write the patch
    convolution in PyTorch layout for the HF layout."""
    import mlx.core as mx

    def values(name: str, shape: tuple[int, ...], key: Any) -> Any:
        if name in FINAL_NORMS:  # feeds only the LM head: scaling it sharpens the logits
            return mx.random.uniform(0.5, 1.5, shape, key=key) * spec.logit_scale
        if name.endswith(PATCH_SUFFIX) and spec.layout == "hf":
            out, k_h, k_w, channels = shape  # drawn as MLX's init, stored (out, in, kH, kW)
            bound = 1 / math.sqrt(k_h * k_w * channels)
            return mx.random.uniform(-bound, bound, shape, key=key).transpose(0, 3, 1, 2)
        if len(shape) == 1 and name.endswith(".weight"):  # RMSNorm / LayerNorm scales
            return mx.random.uniform(0.5, 1.5, shape, key=key)
        if len(shape) == 1 and name.endswith(".bias"):
            return mx.random.normal(shape, key=key) * 0.1
        return None

    return values


def build(spec: Spec, out: Path) -> None:
    """Write the checkpoint files into the (existing, empty) directory `out`."""

    def lazy_model(config: dict[str, Any]) -> Any:
        vlm = _vlm_model(config)
        return _HFLayout(vlm) if spec.layout == "hf" else vlm

    build_checkpoint(
        spec,
        out,
        specials=SPECIALS,
        end_of_turn=EOU,
        model_config=model_config,
        lazy_model=lazy_model,
        rule=_rule,
        files={
            "preprocessor_config.json": preprocessor_config,
            "processor_config.json": processor_config,
            "tokenizer_config.json": tokenizer_config,
        },
        chat_template=CHAT_TEMPLATE,
    )
