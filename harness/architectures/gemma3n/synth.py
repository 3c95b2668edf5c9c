"""Synthesize a tiny-text, random-weight Gemma 3n checkpoint both `mlx_lm.load` and
`mlx_vlm.load` accept unpatched.

Layout: Hugging Face key names (`model.language_model.*`, `model.vision_tower.timm_model.*`,
`model.embed_vision.*`, `model.audio_tower.*`, `model.embed_audio.*`), the one layout both
loaders read: mlx-lm's gemma3n expects `model.language_model` and drops the towers;
mlx-vlm strips `model.` and re-nests the decoder under `language_model.model`. (An
mlx-vlm-converted `language_model.model.*` checkpoint needs a patched mlx-lm, as
mlx-engine's gemma3n patch shows.) Tensors are stored in MLX layout: mlx-vlm's tower and
audio sanitizers detect it and do not transpose.

What cannot be tiny: mlx-vlm 0.7.10's MobileNetV5 tower is hard-coded (~294M parameters,
~590 MB in bf16; convolutions are not quantized), whatever `vision_config` says; the text
decoder, embedders and audio tower are tiny. The tower cannot be left out either: mlx-vlm
would disable a module without weights, but its gemma3n tower sanitizer indexes
`vision_tower.timm_model.blocks.0.0.conv_exp.weight` first (KeyError). So it is written,
by default as zeros (`vision_tower: zeros`: cheap to draw, the same features for every
image), with `vision_tower: random` as drawn weights for image prompts that mean
something, at minutes per image and path on a CPU (MLX's CPU convolutions, ~1 GFLOP/s).

Config values written explicitly because the libraries' defaults differ, or one loader
needs them (mlx-lm's TextConfig has no defaults at all):
- `intermediate_size` as a list (mlx-vlm indexes [0]; mlx-lm [layer]).
- `sliding_window` (mlx-vlm 1024), `rope_theta`, `rope_local_base_freq`,
  `rope_scaling: null`, `final_logit_softcapping`, `altup_coef_clip` (mlx-vlm None),
  `activation_sparsity_pattern`, `num_kv_shared_layers` (mlx-vlm 0), `laurel_rank`,
  `hidden_size_per_layer_input` (mlx-vlm 1024), `vocab_size_per_layer_input` (262144),
  `num_attention_heads` (2), `num_key_value_heads` (4), `head_dim` (256).
- top-level `image_token_id` / `image_token_index` / `audio_token_id` (mlx-vlm defaults
  are the published 262145 / 262273), `vision_soft_tokens_per_image` (256, what the tower
  emits), `audio_soft_tokens_per_image`, `hidden_size`, `vocab_size`.
- `vision_config.vocab_offset` / `audio_config.vocab_offset` (mlx-vlm defaults 262144 and
  262272: after the published text vocabulary) and `audio_config.input_feat_size` (mlx-vlm 80,
  the feature extractor's 128 mel bins).
- `tie_word_embeddings`: both libraries use the embedding table as the head; no
  `lm_head` tensor exists.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...synth.files import build_checkpoint
from .spec import (
    AUDIO,
    BOA,
    BOI,
    EOA,
    EOI,
    EOT,
    GEMMA3N_SPECIALS,
    IMAGE,
    MULTIMODAL,
    MULTIMODAL_VOCAB,
    PRESETS,
    SOFT_TOKENS_PER_IMAGE,
    SPARSITY,
    SPECIALS,
    VISION_HIDDEN,
    Spec,
    layer_types,
)

__all__ = ["PRESETS", "SYNTH_VERSION", "Spec", "build"]

# Bump when the files written change, so cached checkpoints are rebuilt.
SYNTH_VERSION = 1

AUDIO_SEQ_LENGTH = 188  # published audio soft tokens per clip
MEL_BINS = 128

# The published Gemma 3n chat template, simplified: <bos>, a system turn folded into the
# first user turn, the image / audio soft token once per item (the processor expands it).
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
        "{%- if item['type'] == 'audio' -%}{{- '<audio_soft_token>' -}}",
        "{%- elif item['type'] == 'image' -%}{{- '<image_soft_token>' -}}",
        "{%- elif item['type'] == 'text' -%}{{- item['text'] | trim -}}",
        "{%- endif -%}{%- endfor -%}{%- endif -%}",
        "{{- '<end_of_turn>\\n' -}}",
        "{%- endfor -%}",
        "{%- if add_generation_prompt -%}{{- '<start_of_turn>model\\n' -}}{%- endif -%}",
    ]
)


def multimodal_ids(spec: Spec) -> dict[str, int]:
    """Ids of the tokens that open the vision and audio vocabularies (after the text one)."""
    ids = {}
    for index, (_, tokens) in enumerate(MULTIMODAL.items()):
        offset = spec.vocab_size + index * MULTIMODAL_VOCAB
        ids |= {token: offset + i for i, token in enumerate(tokens)}
    return ids


def total_vocab(spec: Spec) -> int:
    return spec.vocab_size + len(MULTIMODAL) * MULTIMODAL_VOCAB


def text_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    layers = spec.num_layers
    return {
        "model_type": "gemma3n_text",
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": layers,
        "intermediate_size": [spec.intermediate_size] * layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "rms_norm_eps": 1e-6,
        "vocab_size": total_vocab(spec),
        "vocab_size_per_layer_input": spec.vocab_size,
        "hidden_size_per_layer_input": spec.per_layer_input_size,
        "num_kv_shared_layers": spec.kv_shared_layers,
        "layer_types": layer_types(layers, spec.sliding_window_pattern),
        "sliding_window_pattern": spec.sliding_window_pattern,
        "sliding_window": spec.sliding_window,
        "max_position_embeddings": 32768,
        "rope_theta": 1_000_000.0,
        "rope_local_base_freq": 10_000.0,
        "rope_scaling": None,
        "final_logit_softcapping": 30.0,
        "attn_logit_softcapping": None,
        "activation_sparsity_pattern": [
            SPARSITY if i < spec.sparse_layers else 0.0 for i in range(layers)
        ],
        "altup_num_inputs": spec.altup_num_inputs,
        "altup_active_idx": 0,
        "altup_coef_clip": 120.0,
        "altup_correct_scale": True,
        "altup_lr_multiplier": 1.0,
        "laurel_rank": spec.laurel_rank,
        "hidden_activation": "gelu_pytorch_tanh",
        "query_pre_attn_scalar": spec.head_dim,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": ids["<eos>"],
        "tie_word_embeddings": True,
    }


def vision_config(spec: Spec) -> dict[str, Any]:
    return {
        "model_type": "gemma3n_vision",
        "architecture": "mobilenetv5_300m_enc",
        "hidden_size": VISION_HIDDEN,
        "vocab_size": MULTIMODAL_VOCAB,
        "vocab_offset": spec.vocab_size,
        "rms_norm_eps": 1e-6,
        "image_size": spec.image_size,
        "num_channels": 3,
    }


def audio_config(spec: Spec) -> dict[str, Any]:
    """A one-block Conformer (never run by the cases; it must load)."""
    return {
        "model_type": "gemma3n_audio",
        "input_feat_size": MEL_BINS,
        "hidden_size": 32,
        "conf_num_hidden_layers": 1,
        "conf_num_attention_heads": 2,
        "conf_attention_chunk_size": 12,
        "conf_attention_context_left": 13,
        "conf_attention_context_right": 0,
        "conf_attention_logit_cap": 50.0,
        "conf_conv_kernel_size": 5,
        "conf_positional_bias_size": 256,
        "conf_reduction_factor": 4,
        "conf_residual_weight": 0.5,
        "sscp_conv_channel_size": [8, 4],
        "sscp_conv_kernel_size": [[3, 3], [3, 3]],
        "sscp_conv_stride_size": [[2, 2], [2, 2]],
        "sscp_conv_eps": 1e-3,
        "sscp_conv_group_norm_eps": 1e-3,
        "rms_norm_eps": 1e-6,
        "gradient_clipping": 1e10,
        "vocab_size": MULTIMODAL_VOCAB,
        "vocab_offset": spec.vocab_size + MULTIMODAL_VOCAB,
    }


def model_config(spec: Spec, ids: dict[str, int]) -> dict[str, Any]:
    mm = multimodal_ids(spec)
    return {
        "architectures": ["Gemma3nForConditionalGeneration"],
        "model_type": "gemma3n",
        "text_config": text_config(spec, ids),
        "vision_config": vision_config(spec),
        "audio_config": audio_config(spec),
        "hidden_size": spec.hidden_size,
        "vocab_size": total_vocab(spec),
        "image_token_id": mm[IMAGE],
        "image_token_index": mm[IMAGE],
        "audio_token_id": mm[AUDIO],
        "boi_token_id": ids[BOI],
        "eoi_token_id": mm[EOI],
        "boa_token_id": ids[BOA],
        "eoa_token_id": mm[EOA],
        "vision_soft_tokens_per_image": SOFT_TOKENS_PER_IMAGE,
        "audio_soft_tokens_per_image": AUDIO_SEQ_LENGTH,
        "pad_token_id": ids["<pad>"],
        "bos_token_id": ids["<bos>"],
        "eos_token_id": [ids["<eos>"], ids[EOT]],
        "initializer_range": 0.02,
        "tie_word_embeddings": True,
    }


def preprocessor_config(spec: Spec) -> dict[str, Any]:
    """The image processor (published: 768 px, pixels in [0, 1]) and the audio feature
    extractor, in one file as published."""
    return {
        "processor_class": "Gemma3nProcessor",
        "image_processor_type": "SiglipImageProcessor",
        "do_convert_rgb": True,
        "do_resize": True,
        "size": {"height": spec.image_size, "width": spec.image_size},
        "resample": 2,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": False,
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "image_seq_length": SOFT_TOKENS_PER_IMAGE,
        "feature_extractor_type": "Gemma3nAudioFeatureExtractor",
        "feature_size": MEL_BINS,
        "sampling_rate": 16000,
        "padding_value": 0.0,
        "padding_side": "right",
        "return_attention_mask": True,
    }


def processor_config(spec: Spec) -> dict[str, Any]:
    return {
        "processor_class": "Gemma3nProcessor",
        "image_seq_length": SOFT_TOKENS_PER_IMAGE,
        "audio_seq_length": AUDIO_SEQ_LENGTH,
    }


def tokenizer_config(spec: Spec) -> dict[str, Any]:
    return {
        "tokenizer_class": "GemmaTokenizer",
        "processor_class": "Gemma3nProcessor",
        "bos_token": "<bos>",
        "eos_token": "<eos>",
        "pad_token": "<pad>",
        "unk_token": "<unk>",
        "mask_token": "<mask>",
        "padding_side": "left",
        "model_max_length": 32768,
        "add_bos_token": False,
        "add_eos_token": False,
        **GEMMA3N_SPECIALS,
    }


def _lazy_model(config: dict[str, Any]) -> Any:
    """The mlx-vlm model at its lazy random init, re-rooted under Hugging Face key names
    (`model.language_model.*`, `model.vision_tower.*`, ...) for the weight writer."""
    import mlx.nn as nn
    from mlx_vlm.models import gemma3n as vlm

    args = vlm.ModelConfig.from_dict(config)
    args.text_config = vlm.TextConfig.from_dict(config["text_config"])
    args.vision_config = vlm.VisionConfig.from_dict(config["vision_config"])
    args.audio_config = vlm.AudioConfig.from_dict(config["audio_config"])
    model = vlm.Model(args)
    inner = nn.Module()
    inner.language_model = model.language_model.model
    for name in ("vision_tower", "embed_vision", "audio_tower", "embed_audio"):
        setattr(inner, name, getattr(model, name))
    root = nn.Module()
    root.model = inner
    return root


FINAL_NORM = "model.language_model.norm.weight"
TOWER = "model.vision_tower."


def _rule(spec: Spec, model: Any):
    """Randomise what MLX initialises to constants, so that no mistake hides behind a
    multiplication by one or zero (a `zeros` tower excepted, on purpose): norm scales
    (Gemma 3n's RMSNorms multiply by the weight, no +1), AltUp's output scale (zeros: it
    would silence every per-layer input) and the vision tower's layer scales (1e-5: the
    tower would pass its stem through)."""
    import mlx.core as mx

    def values(name: str, shape: tuple[int, ...], key: Any) -> Any:
        leaf = name.rsplit(".", 1)[-1]
        if spec.vision_tower == "zeros" and name.startswith(TOWER):
            return mx.zeros(shape)
        if name == FINAL_NORM:
            # Feeds only the tied head: scaling it sharpens the logits.
            return mx.random.uniform(0.5, 1.5, shape, key=key) * spec.logit_scale
        if leaf == "correct_output_scale":
            return mx.random.uniform(0.5, 1.5, shape, key=key)
        if leaf == "gamma":  # LayerScale2d
            return mx.random.uniform(0.05, 0.25, shape, key=key)
        if len(shape) == 1 and leaf == "weight":
            return mx.random.uniform(0.5, 1.5, shape, key=key)
        if len(shape) == 1 and leaf == "bias":
            return mx.random.normal(shape, key=key) * 0.1
        return None

    return values


def _add_multimodal_tokens(spec: Spec, out: Path) -> None:
    """Append the vision and audio vocabularies (128 ids each) after the text one, as
    special tokens: <end_of_image>, <image_soft_token>, unused vision ids, then the same
    for audio. The BPE writer lays out the text vocabulary only."""
    from tokenizers import AddedToken, Tokenizer

    tok = Tokenizer.from_file(str(out / "tokenizer.json"))
    pieces = []
    for modality, tokens in MULTIMODAL.items():
        pieces += tokens
        pieces += [f"<unused_{modality}_{i}>" for i in range(len(tokens), MULTIMODAL_VOCAB)]
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in pieces])
    tok.save(str(out / "tokenizer.json"))
    expected = multimodal_ids(spec)
    found = {t: tok.token_to_id(t) for t in expected}
    if found != expected or tok.get_vocab_size() != total_vocab(spec):
        raise AssertionError(f"multimodal token ids {found}, expected {expected}")


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
    _add_multimodal_tokens(spec, out)
