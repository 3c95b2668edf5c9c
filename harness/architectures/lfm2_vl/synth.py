"""Synthesize a tiny random-weight LFM2-VL checkpoint.

The directory looks like an mlx-vlm converted LFM2-VL model (mlx-vlm key names:
`language_model.model.*`, `vision_tower.*`, `multi_modal_projector.*`; one safetensors shard
+ index; a tokenizer with the LFM2-VL image tokens; chat template; processor files), so that
the real `mlx_lm.load` (module `lfm2-vl` -> `lfm2`) and `mlx_vlm.load` (`lfm2_vl`) both accept
it and run the same text model.

Written explicitly because the libraries differ or one of them needs it (mlx-lm 0.32.2,
mlx-vlm 0.7.10):
- `model_type: lfm2-vl` (hyphen): mlx-lm has no `lfm2_vl` module nor a remapping to it.
- Every LFM2 text field mlx-lm's `ModelArgs` requires (it has no defaults for norm_eps,
  conv_bias, conv_L_cache, block_dim, block_multiple_of, block_ffn_dim_multiplier,
  block_auto_adjust_ff_dim, max_position_embeddings); mlx-vlm defaults them to the 1.6B
  model's values (block_dim 1024, ...), which would not even load here.
- `full_attn_idxs` and (unless `write_layer_types: false`) the consistent `layer_types`:
  both libraries read the indices when given, else derive them from the types.
- `tie_word_embeddings: true` in the text config: mlx-lm's LFM2 always ties (its lfm2-vl
  wrapper even sets the flag false, unused); mlx-vlm builds an `lm_head` when it is false.
  No `lm_head` is written.
- `rope_theta` (both default 1e6 today; pinned).
- Convolution weights in MLX layout (hidden, L_cache, 1): mlx-vlm's sanitize transposes a
  PyTorch-layout one, mlx-lm's lfm2-vl sanitize does not (it only drops the vision keys).
- Quantization leaves the vision tower and projector in full precision, as `mlx_vlm.convert`
  does (`skip_multimodal_module`): mlx-vlm's SigLIP2 patch embedding casts pixels to its
  weight's dtype, which a quantized layer would make uint32.
- The processor's files. mlx-vlm 0.7.10 builds its own NumPy image processor from
  `preprocessor_config.json` updated by `processor_config.json` and FORCES the official
  tiling (do_image_splitting, min_tiles 2, max_tiles 10, use_thumbnail), whatever the files
  say; they are written with those values so the files tell the truth. Prompts stay short
  through the token budget instead: patch 8, downsample 2, min/max image tokens 4/16,
  tile_size 32 (4 tokens per tile): an image over 2 x 16 x 16^2 px is split into tiles plus
  a thumbnail of at most 16 tokens.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from harness.synth.files import build_checkpoint

from .spec import (
    IM_END,
    IMAGE,
    IMAGE_END,
    IMAGE_START,
    OFFICIAL_TILING,
    PRESETS,
    SPECIALS,
    THUMBNAIL,
    Spec,
)

__all__ = ["PRESETS", "SYNTH_VERSION", "Spec", "build"]

# Bump when the files written change, so cached checkpoints are rebuilt.
SYNTH_VERSION = 1

# LFM2-VL's ChatML template: <bos>, <|im_start|>role ... <|im_end|>, <image> per image item.
CHAT_TEMPLATE = "".join(
    [
        "{{- bos_token -}}",
        "{%- for message in messages -%}",
        "{{- '<|im_start|>' + message['role'] + '\\n' -}}",
        "{%- if message['content'] is string -%}{{- message['content'] -}}",
        "{%- else -%}{%- for item in message['content'] -%}",
        "{%- if item['type'] == 'image' -%}{{- '<image>' -}}",
        "{%- elif item['type'] == 'text' -%}{{- item['text'] -}}",
        "{%- endif -%}{%- endfor -%}{%- endif -%}",
        "{{- '<|im_end|>\\n' -}}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}",
    ]
)


def max_num_patches(spec: Spec) -> int:
    """Patch rows per view, as mlx-vlm's image processor derives it (splitting is on)."""
    return max(
        spec.max_image_tokens * spec.downsample_factor**2, (spec.tile_size // spec.patch_size) ** 2
    )


def text_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    attention = list(spec.attention_layers)
    config = {
        "model_type": "lfm2",
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "max_position_embeddings": 128000,
        "norm_eps": 1e-5,
        "rope_theta": 1_000_000.0,
        "conv_bias": False,
        "conv_L_cache": spec.conv_L_cache,
        "block_dim": spec.hidden_size,
        "block_ff_dim": spec.ff_dim,
        "block_multiple_of": spec.ff_multiple_of,
        "block_ffn_dim_multiplier": 1.0,
        "block_auto_adjust_ff_dim": True,
        "full_attn_idxs": attention,
        "tie_word_embeddings": True,
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids[IM_END],
        "pad_token_id": ids["<pad>"],
    }
    if spec.write_layer_types:
        config["layer_types"] = [
            "full_attention" if i in attention else "conv" for i in range(spec.num_layers)
        ]
    return config


def vision_config(spec: Spec) -> dict[str, Any]:
    return {
        "model_type": "siglip2_vision_model",
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_hidden_layers": spec.vision_layers,
        "num_attention_heads": spec.vision_heads,
        "num_channels": 3,
        "patch_size": spec.patch_size,
        "num_patches": spec.position_grid**2,
        "layer_norm_eps": 1e-6,
        "hidden_act": "gelu_pytorch_tanh",
        "vision_use_head": False,
    }


def processing_values(spec: Spec) -> dict[str, Any]:
    """The image-processing budget, in config.json and preprocessor_config.json alike."""
    return {
        "downsample_factor": spec.downsample_factor,
        "encoder_patch_size": spec.patch_size,
        "min_image_tokens": spec.min_image_tokens,
        "max_image_tokens": spec.max_image_tokens,
        "max_num_patches": max_num_patches(spec),
        "max_pixels_tolerance": spec.max_pixels_tolerance,
        "tile_size": spec.tile_size,
        **OFFICIAL_TILING,
    }


def model_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    return {
        "architectures": ["Lfm2VlForConditionalGeneration"],
        "model_type": "lfm2-vl",
        "text_config": text_config(spec, ids),
        "vision_config": vision_config(spec),
        "vocab_size": spec.vocab_size,
        "image_token_id": ids[IMAGE],
        "projector_bias": True,
        "projector_hidden_act": "gelu",
        "projector_hidden_size": spec.projector_hidden_size,
        "projector_use_layernorm": spec.projector_use_layernorm,
        "vision_feature_layer": -1,
        "use_image_special_tokens": True,
        **processing_values(spec),
        "tie_word_embeddings": True,
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids[IM_END],
        "pad_token_id": ids["<pad>"],
    }


def preprocessor_config(spec: Spec) -> dict[str, Any]:
    return {
        "image_processor_type": "Lfm2VlImageProcessorFast",
        "processor_class": "Lfm2VlProcessor",
        **processing_values(spec),
        "do_resize": True,
        "resample": 3,  # bicubic, as the published LFM2-VL repos
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "do_pad": True,
        "do_convert_rgb": True,
    }


def processor_config(spec: Spec) -> dict[str, Any]:
    return {"processor_class": "Lfm2VlProcessor", "use_image_special_tokens": True}


def tokenizer_config(spec: Spec) -> dict[str, Any]:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "processor_class": "Lfm2VlProcessor",
        "bos_token": "<bos>",
        "eos_token": IM_END,
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "model_max_length": 128000,
        "add_bos_token": spec.add_bos_token,
        "add_eos_token": False,
        "image_token": IMAGE,
        "image_start_token": IMAGE_START,
        "image_end_token": IMAGE_END,
        "image_thumbnail_token": THUMBNAIL,
    }


@cache
def _full_precision(cls: type) -> type:
    """`cls` without `to_quantized`: the weight writer quantizes only modules having it."""

    def to_quantized(self: Any) -> Any:
        raise AttributeError("multimodal modules stay in full precision")

    return type(f"FullPrecision{cls.__name__}", (cls,), {"to_quantized": property(to_quantized)})


def _lazy_model(config: dict[str, Any]) -> Any:
    """The mlx-vlm model at its (lazy, unevaluated) random init: shapes and module types
    for the weight writer, the vision tower and projector marked unquantizable."""
    from mlx_vlm.models import lfm2_vl as vlm

    args = vlm.ModelConfig.from_dict(config)
    args.text_config = vlm.TextConfig.from_dict(config["text_config"])
    args.vision_config = vlm.VisionConfig.from_dict(config["vision_config"])
    model = vlm.Model(args)
    for path, module in model.named_modules():
        if path.startswith(("vision_tower", "multi_modal_projector")) and hasattr(
            module, "to_quantized"
        ):
            module.__class__ = _full_precision(type(module))
    return model


FINAL_NORM = "language_model.model.embedding_norm.weight"


def _rule(spec: Spec, model: Any):
    """Randomise what MLX initialises to constants (norm scales 1, LayerNorm biases 0), so
    that no skipped norm hides behind a multiplication by one."""
    import mlx.core as mx

    def values(name: str, shape: tuple[int, ...], key: Any) -> Any:
        if name == FINAL_NORM:
            # LFM2's "embedding_norm" is the final norm: scaling it sharpens the logits.
            return mx.random.uniform(0.5, 1.5, shape, key=key) * spec.logit_scale
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
        end_of_turn=IM_END,
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
