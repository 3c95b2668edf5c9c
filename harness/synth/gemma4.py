"""Synthesize a tiny random-weight Gemma 4 vision-language checkpoint.

The directory looks like an mlx-vlm converted Gemma 4 model (mlx-vlm key names, one
safetensors shard + index, tokenizer, chat template, processor and generation configs) so
that the real `mlx_lm.load` and `mlx_vlm.load` both accept it. Recipe and pitfalls:
shared/notes/stack-facts.md.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .tokenizer import build_bpe_tokenizer

# Bump when the files written change, so cached checkpoints are rebuilt.
SYNTH_VERSION = 1

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

# A simplified Gemma 4 chat template (turn markers, image placeholders, thinking switch).
# Without a template file the processor renders prompts with no turn markers (pitfall 4).
CHAT_TEMPLATE = "".join(
    [
        "{{- bos_token -}}",
        "{%- set first = 0 -%}",
        "{%- set system = messages and messages[0]['role'] in ['system', 'developer'] -%}",
        "{%- if enable_thinking | default(false) or system -%}",
        "{{- '<|turn>system\\n' -}}",
        "{%- if enable_thinking | default(false) -%}{{- '<|think|>\\n' -}}{%- endif -%}",
        "{%- if system -%}{%- set first = 1 -%}",
        "{%- if messages[0]['content'] is string -%}{{- messages[0]['content'] | trim -}}",
        "{%- else -%}{%- for item in messages[0]['content'] -%}",
        "{%- if item['type'] == 'text' -%}{{- item['text'] | trim -}}{%- endif -%}",
        "{%- endfor -%}{%- endif -%}{%- endif -%}",
        "{{- '<turn|>\\n' -}}",
        "{%- endif -%}",
        "{%- for message in messages[first:] -%}",
        "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}",
        "{{- '<|turn>' + role + '\\n' -}}",
        "{%- if message['content'] is string -%}{{- message['content'] | trim -}}",
        "{%- else -%}{%- for item in message['content'] -%}",
        "{%- if item['type'] == 'text' -%}{{- item['text'] | trim -}}",
        "{%- elif item['type'] == 'image' -%}{{- '<|image|>' -}}",
        "{%- elif item['type'] == 'audio' -%}{{- '<|audio|>' -}}",
        "{%- elif item['type'] == 'video' -%}{{- '<|video|>' -}}",
        "{%- endif -%}{%- endfor -%}{%- endif -%}",
        "{{- '<turn|>\\n' -}}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{- '<|turn>model\\n' -}}",
        "{%- if not (enable_thinking | default(false)) -%}",
        "{{- '<|channel>thought\\n<channel|>' -}}{%- endif -%}",
        "{%- endif -%}",
    ]
)


class Spec(BaseModel):
    """What to build. Every field is part of the cache key."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hidden_size: int = Field(64, ge=16, description="sqrt(hidden) is mlx-lm's embed_scale")
    num_layers: int = Field(4, ge=2)
    kv_shared_layers: int = Field(2, ge=0)
    per_layer_input_size: int = Field(16, ge=0, description="0 disables per-layer inputs")
    vocab_size: int = Field(512, ge=400)
    soft_tokens: int = Field(70, ge=9, description="max_soft_tokens per image")
    sliding_window: int = Field(512, ge=1)
    bidirectional: Literal["none", "vision"] = "none"
    dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    quantize_bits: Literal[4, 8] | None = None
    logit_scale: float = Field(1.0, gt=0, description="final-norm factor: >1 sharpens logits")
    seed: int = 0


def _special_ids_config(ids: dict[str, int]) -> dict[str, Any]:
    return {
        "image_token_id": ids["<|image|>"],
        "audio_token_id": ids["<|audio|>"],
        "video_token_id": ids["<|video|>"],
        "boi_token_id": ids["<|image>"],
        "eoi_token_id": ids["<image|>"],
        "boa_token_id": ids["<|audio>"],
        "eoa_token_id": ids["<audio|>"],
        "pad_token_id": ids["<pad>"],
        "eos_token_id": [ids["<eos>"], ids["<turn|>"]],
    }


def text_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    layer_types = ["sliding_attention", "full_attention"] * spec.num_layers
    return {
        "model_type": "gemma4_text",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.hidden_size * 2,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 16,
        "global_head_dim": 32,
        "num_kv_shared_layers": spec.kv_shared_layers,
        "use_double_wide_mlp": True,
        "hidden_size_per_layer_input": spec.per_layer_input_size,
        "vocab_size": spec.vocab_size,
        "vocab_size_per_layer_input": spec.vocab_size,
        "layer_types": layer_types[: spec.num_layers],
        "sliding_window": spec.sliding_window,
        "sliding_window_pattern": 2,
        # Explicit: mlx-lm and mlx-vlm default the rotary fraction differently (pitfall 2).
        "rope_parameters": {
            "full_attention": {
                "partial_rotary_factor": 0.25,
                "rope_theta": 1000000.0,
                "rope_type": "proportional",
            },
            "sliding_attention": {"rope_theta": 10000.0, "rope_type": "default"},
        },
        "final_logit_softcapping": 30.0,
        "rms_norm_eps": 1e-6,
        "hidden_activation": "gelu_pytorch_tanh",
        "attention_bias": False,
        "attention_dropout": 0.0,
        "attention_k_eq_v": False,
        "enable_moe_block": False,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": True,
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
        "use_bidirectional_attention": None if spec.bidirectional == "none" else "vision",
    }


def vision_config(spec: Spec) -> dict[str, Any]:
    return {
        "model_type": "gemma4_vision",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "global_head_dim": 16,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "patch_size": 16,
        "pooling_kernel_size": 3,
        "position_embedding_size": 256,
        "default_output_length": spec.soft_tokens,
        "rope_parameters": {"rope_theta": 100.0, "rope_type": "default"},
        "use_clipped_linears": False,
        "standardize": False,
        "use_bidirectional_attention": "vision",
        "layer_types": ["full_attention"] * 2,
    }


def model_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["Gemma4ForConditionalGeneration"],
        "model_type": "gemma4",
        "text_config": text_config(spec, ids),
        "vision_config": vision_config(spec),
        "audio_config": None,
        # mlx-lm copies this top-level value into text_config (default 262144, pitfall 1).
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        **_special_ids_config(ids),
        "vision_soft_tokens_per_image": spec.soft_tokens,
        "tie_word_embeddings": True,
        "initializer_range": 0.02,
    }


def processor_config(spec: Spec) -> dict[str, Any]:
    image = {
        "do_convert_rgb": True,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": False,
        "image_mean": [0.0, 0.0, 0.0],
        "image_std": [1.0, 1.0, 1.0],
        "patch_size": 16,
        "pooling_kernel_size": 3,
        "max_soft_tokens": spec.soft_tokens,
    }
    return {
        "processor_class": "Gemma4Processor",
        "image_seq_length": spec.soft_tokens,
        "audio_seq_length": 750,
        "audio_ms_per_token": 40,
        "image_processor": {"image_processor_type": "Gemma4ImageProcessor", **image},
        "video_processor": {
            "video_processor_type": "Gemma4VideoProcessor",
            "patch_size": 16,
            "pooling_kernel_size": 3,
            "max_soft_tokens": spec.soft_tokens,
            "num_frames": 4,
        },
    }


def tokenizer_config() -> dict[str, Any]:
    return {
        "tokenizer_class": "GemmaTokenizer",
        "backend": "tokenizers",
        "processor_class": "Gemma4Processor",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "padding_side": "left",
        "model_max_length": 131072,
        **GEMMA4_SPECIALS,
    }


def _random_weights(spec: Spec, config: dict[str, Any]) -> dict[str, Any]:
    """Build the mlx-vlm model at random init and return its flattened parameters."""
    import mlx.core as mx
    import mlx.nn as nn
    from mlx.utils import tree_flatten, tree_map_with_path
    from mlx_vlm.models import gemma4 as vlm_gemma4

    mx.random.seed(spec.seed)
    args = vlm_gemma4.ModelConfig.from_dict(config)
    args.text_config = vlm_gemma4.TextConfig.from_dict(config["text_config"])
    args.vision_config = vlm_gemma4.VisionConfig.from_dict(config["vision_config"])
    args.audio_config = None
    model = vlm_gemma4.Model(args)

    # MLX initialises norm scales and layer scalars to 1; randomise them so that a norm
    # offset or a mis-wired scale cannot hide behind a multiplication by one.
    def perturb(path: str, value: mx.array) -> mx.array:
        leaf = path.rsplit(".", 1)[-1]
        if leaf == "weight" and value.ndim == 1:
            return mx.random.uniform(0.5, 1.5, value.shape)
        if leaf == "layer_scalar":
            return mx.random.uniform(0.5, 1.0, value.shape)
        if leaf == "position_embedding_table":
            return mx.random.normal(value.shape) * 0.5
        return value

    model.update(tree_map_with_path(perturb, model.parameters()))
    text = model.language_model.model
    # The final norm feeds only the tied LM head, so scaling it sharpens the logits.
    text.norm.weight = text.norm.weight * spec.logit_scale
    model.set_dtype(getattr(mx, spec.dtype))

    if spec.quantize_bits is not None:
        # Like `mlx_vlm.convert -q`: affine, group 64, wherever the input dim allows.
        nn.quantize(
            model,
            group_size=64,
            bits=spec.quantize_bits,
            class_predicate=lambda _, m: (
                hasattr(m, "to_quantized") and m.weight.shape[-1] % 64 == 0
            ),
        )
    weights = dict(tree_flatten(model.parameters()))
    mx.eval(weights)
    return weights


def build(spec: Spec, out: Path) -> None:
    """Write the checkpoint files into the (existing, empty) directory `out`."""
    import mlx.core as mx

    ids = build_bpe_tokenizer(out, BASE_SPECIALS + list(GEMMA4_SPECIALS.values()), spec.vocab_size)
    config = model_config(spec, ids)
    weights = _random_weights(spec, config)
    if spec.quantize_bits is not None:
        quant = {"group_size": 64, "bits": spec.quantize_bits, "mode": "affine"}
        config["quantization"] = quant
        config["quantization_config"] = quant

    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    index = {
        "metadata": {"total_size": sum(v.nbytes for v in weights.values())},
        "weight_map": {k: "model.safetensors" for k in sorted(weights)},
    }
    files = {
        "config.json": config,
        "model.safetensors.index.json": index,
        "generation_config.json": {
            "bos_token_id": ids["<bos>"],
            "eos_token_id": [ids["<eos>"], ids["<turn|>"]],
            "pad_token_id": ids["<pad>"],
        },
        "processor_config.json": processor_config(spec),
        "tokenizer_config.json": tokenizer_config(),
    }
    for name, payload in files.items():
        (out / name).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
