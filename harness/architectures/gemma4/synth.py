"""Synthesize a tiny random-weight Gemma 4 vision-language checkpoint.

The directory looks like an mlx-vlm converted Gemma 4 model (mlx-vlm key names, one
safetensors shard + index, tokenizer, chat template, processor and generation configs) so
that the real `mlx_lm.load` and `mlx_vlm.load` both accept it. Recipe and pitfalls:
shared/notes/stack-facts.md. The options and what the loaders require of them:
spec.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...synth.files import build_checkpoint
from .spec import GEMMA4_SPECIALS, PRESETS, SPECIALS, Spec, layer_types

__all__ = ["PRESETS", "SYNTH_VERSION", "Spec", "build"]

# Bump when the files written change, so cached checkpoints are rebuilt.
SYNTH_VERSION = 2

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


def _special_ids_config(ids: dict[str, int], pad_token: str = "<pad>") -> dict[str, Any]:
    return {
        "image_token_id": ids["<|image|>"],
        "audio_token_id": ids["<|audio|>"],
        "video_token_id": ids["<|video|>"],
        "boi_token_id": ids["<|image>"],
        "eoi_token_id": ids["<image|>"],
        "boa_token_id": ids["<|audio>"],
        "eoa_token_id": ids["<audio|>"],
        "pad_token_id": ids[pad_token],
        "eos_token_id": [ids["<eos>"], ids["<turn|>"]],
    }


def text_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    every = spec.full_attention_every
    return {
        "model_type": "gemma4_text",
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": 1,
        "head_dim": spec.head_dim,
        "global_head_dim": spec.global_head_dim,
        "num_kv_shared_layers": spec.kv_shared_layers,
        "use_double_wide_mlp": True,
        "hidden_size_per_layer_input": spec.per_layer_input_size,
        "vocab_size": spec.vocab_size,
        "vocab_size_per_layer_input": spec.vocab_size,
        "layer_types": layer_types(spec.num_layers, every),
        "sliding_window": spec.sliding_window,
        "sliding_window_pattern": every,
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
        "pad_token_id": ids[spec.pad_token],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
        "use_bidirectional_attention": None if spec.bidirectional == "none" else "vision",
    }


def vision_config(spec: Spec) -> dict[str, Any]:
    return {
        "model_type": "gemma4_vision",
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "num_key_value_heads": spec.vision_heads,
        "head_dim": spec.vision_head_dim,
        "global_head_dim": spec.vision_head_dim,
        "hidden_activation": "gelu_pytorch_tanh",
        "rms_norm_eps": 1e-6,
        "patch_size": 16,
        "pooling_kernel_size": 3,
        "position_embedding_size": spec.vision_position_embeddings,
        "default_output_length": spec.soft_tokens,
        "rope_parameters": {"rope_theta": 100.0, "rope_type": "default"},
        "use_clipped_linears": False,
        "standardize": False,
        "use_bidirectional_attention": "vision",
        "layer_types": ["full_attention"] * spec.vision_layers,
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
        **_special_ids_config(ids, spec.pad_token),
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


def tokenizer_config(spec: Spec | None = None) -> dict[str, Any]:
    bos = {"add_bos_token": True} if spec is not None and spec.add_bos_token else {}
    return {
        **bos,
        "tokenizer_class": "GemmaTokenizer",
        "backend": "tokenizers",
        "processor_class": "Gemma4Processor",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": spec.pad_token if spec is not None else "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "padding_side": "left",
        "model_max_length": 131072,
        **GEMMA4_SPECIALS,
    }


def _lazy_model(config: dict[str, Any]) -> Any:
    """The mlx-vlm model at its (lazy, unevaluated) random init: shapes and module types
    for the weight writer, no memory until a tensor is evaluated."""
    from mlx_vlm.models import gemma4 as vlm_gemma4

    args = vlm_gemma4.ModelConfig.from_dict(config)
    args.text_config = vlm_gemma4.TextConfig.from_dict(config["text_config"])
    args.vision_config = vlm_gemma4.VisionConfig.from_dict(config["vision_config"])
    args.audio_config = None
    return vlm_gemma4.Model(args)


def _rule(spec: Spec):
    """MLX initialises norm scales and layer scalars to 1; randomise them so that a norm
    offset or a mis-wired scale cannot hide behind a multiplication by one."""
    import mlx.core as mx

    def values(name: str, shape: tuple[int, ...], key: Any) -> Any:
        leaf = name.rsplit(".", 1)[-1]
        if name == "language_model.model.norm.weight":
            # The final norm feeds only the tied LM head: scaling it sharpens the logits.
            return mx.random.uniform(0.5, 1.5, shape, key=key) * spec.logit_scale
        if leaf == "weight" and len(shape) == 1:
            return mx.random.uniform(0.5, 1.5, shape, key=key)
        if leaf == "layer_scalar":
            return mx.random.uniform(0.5, 1.0, shape, key=key)
        if leaf == "position_embedding_table":
            return mx.random.normal(shape, key=key) * 0.5
        return None

    return values


def build(spec: Spec, out: Path) -> None:
    """Write the checkpoint files into the (existing, empty) directory `out`."""
    build_checkpoint(
        spec,
        out,
        specials=SPECIALS,
        end_of_turn="<turn|>",
        model_config=model_config,
        lazy_model=_lazy_model,
        rule=lambda spec, model: _rule(spec),
        files={
            "processor_config.json": processor_config,
            "tokenizer_config.json": tokenizer_config,
        },
        chat_template=CHAT_TEMPLATE,
    )
