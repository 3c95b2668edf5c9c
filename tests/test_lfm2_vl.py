"""LFM2-VL: the synthesizer builds checkpoints both libraries load identically, the reference
add-on is bit-exact with native mlx-vlm on every shipped case (every stage, max abs diff 0),
and every mutant add-on in tests/lfm2_vl_mutants.py FAILS at the stage where its mistake
enters. Everything runs through the built-in registries and paths (`synth: lfm2_vl`,
`addon: lfm2_vl`, mlx-vlm vs unified), as `make parity` runs the cases."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import arch_suite
import pytest
from arch_suite import PROFILES, check, verdict

from harness.synth import ensure_checkpoint

ARCH = "lfm2_vl"

# (case, mutant class in tests/lfm2_vl_mutants.py, first diverging stage)
MUTANTS = [
    ("lfm2_vl_one_image", "Float32VisionTower", "embeddings"),
    ("lfm2_vl_one_image", "ProjectorNormSkipped", "embeddings"),
    ("lfm2_vl_one_image", "PostLayerNormSkipped", "embeddings"),
    ("lfm2_vl_two_images", "ThumbnailFirst", "embeddings"),
    ("lfm2_vl_split_prefill", "ConvStateDropped", "layer.0"),
]
# Mistakes that only show on some configs: the same add-on passes here.
CONTROLS = [
    ("lfm2_vl_fp32", "Float32VisionTower"),  # float32 is the checkpoint's dtype
    ("lfm2_vl_config_variants", "ProjectorNormSkipped"),  # no norm to skip
    ("lfm2_vl_small_image", "ThumbnailFirst"),  # an untiled image has one view
    ("lfm2_vl_one_image", "ConvStateDropped"),  # one prefill chunk: no state to lose
]


def _case(name: str):
    return arch_suite.case(ARCH, name)


@pytest.fixture(scope="module")
def lfm2_vl_run():
    """Every shipped LFM2-VL case, every mutant and every control, in one run."""
    return arch_suite.arch_run(ARCH, MUTANTS, CONTROLS)


SHIPPED = arch_suite.shipped_ids(ARCH)


# --- the cases --------------------------------------------------------------------------


def test_shipped_cases_exist():
    assert {
        "lfm2_vl_text",
        "lfm2_vl_one_image",
        "lfm2_vl_two_images",
        "lfm2_vl_split_prefill",
        "lfm2_vl_4bit",
        "lfm2_vl_fp32",
    } <= set(SHIPPED)


@pytest.mark.parametrize("case_id", SHIPPED)
def test_case_is_bit_exact(lfm2_vl_run, case_id):
    v = verdict(lfm2_vl_run, case_id)
    arch_suite.assert_bit_exact(v, stages={"layer.3"})
    # Both layer types were tapped: the conv layers' mask (None) and the attention layers',
    # also without layer_types in the config (the layers' is_attention_layer flags).
    assert v.provenance["attention_mask_types"] == "conv,full_attention"


def _image_prompt_ids(case_name: str) -> tuple[list[int], int, Any]:
    """The expanded prompt of a shipped case, from mlx-vlm's own processor."""
    import mlx_vlm.models.lfm2_vl  # noqa: F401  (installs mlx-vlm's processor hook)
    from mlx_vlm.utils import load_processor, prepare_inputs

    case = _case(case_name)
    model_dir = ensure_checkpoint("lfm2_vl", case.model.options)
    processor = load_processor(model_dir, add_detokenizer=False, trust_remote_code=False)
    prompt = processor.tokenizer.apply_chat_template(
        case.template_messages(), tokenize=False, add_generation_prompt=True
    )
    images = [str(p) for p in case.image_files]
    image_token = json.loads((model_dir / "config.json").read_text())["image_token_id"]
    inputs = prepare_inputs(
        processor, images=images, prompts=[prompt], image_token_index=image_token
    )
    return inputs["input_ids"][0].tolist(), image_token, processor.tokenizer


def test_split_prefill_splits_the_tiled_image_span(lfm2_vl_run):
    ids, image_token, tokenizer = _image_prompt_ids("lfm2_vl_split_prefill")
    # 6 tiles (3x2 grid, row-major markers) + thumbnail: 36 image tokens.
    markers = [t for t in tokenizer.convert_ids_to_tokens(ids) if t.startswith("<|img_")]
    assert markers == [f"<|img_row_{r}_col_{c}|>" for r in (1, 2) for c in (1, 2, 3)] + [
        "<|img_thumbnail|>"
    ]
    positions = [i for i, t in enumerate(ids) if t == image_token]
    assert len(positions) == 36
    v = verdict(lfm2_vl_run, "lfm2_vl_split_prefill")
    chunks = arch_suite.prefill_chunks(v)
    assert sum(chunks) == len(ids)
    arch_suite.assert_prefill_splits(v, positions[0], positions[-1], at_least=2)


def test_conv_state_case_runs_one_row_per_call(lfm2_vl_run):
    v = verdict(lfm2_vl_run, "lfm2_vl_conv_state_tiny_chunks")
    chunks = arch_suite.prefill_chunks(v)
    assert len(chunks) > 30 and set(chunks) == {1}


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("case_name", "mutant", "stage"), MUTANTS)
def test_mutant_fails_at_its_stage(lfm2_vl_run, case_name, mutant, stage, profile):
    v = verdict(lfm2_vl_run, f"{case_name}--{mutant}--{profile}")
    # The image profile does not gate on layer outputs: a mistake entering there fails
    # the case at the logits.
    gated = stage if profile == "exact" or not stage.startswith("layer.") else "logits"
    arch_suite.assert_fails_at(v, stage, gated)


@pytest.mark.parametrize(("case_name", "mutant"), CONTROLS)
def test_mistake_invisible_on_this_config(lfm2_vl_run, case_name, mutant):
    arch_suite.assert_control_passes(verdict(lfm2_vl_run, f"{case_name}--{mutant}"))


def test_dropped_conv_state_enters_after_the_first_chunk_edge(lfm2_vl_run):
    # Layer 0 is a convolution: rows of the first 16-token chunk are right, later ones not.
    v = verdict(lfm2_vl_run, "lfm2_vl_split_prefill--ConvStateDropped--exact")
    emb = check(v, "embeddings", None)
    assert emb.passed and emb.value == 0
    assert check(v, "layer.0").value > 0


# --- the synthesizer --------------------------------------------------------------------


def test_same_spec_same_bytes(tmp_path):
    arch_suite.assert_same_spec_same_bytes(ARCH, tmp_path, quantize_bits=4)


def test_config_writes_every_value_whose_default_differs():
    import importlib.util

    from mlx_lm.models import lfm2 as lm_text
    from mlx_vlm.models import lfm2_vl as vlm
    from mlx_vlm.models.lfm2_vl import processing_lfm2_vl

    model_dir = ensure_checkpoint("lfm2_vl", _case("lfm2_vl_one_image").model.options)
    config = json.loads((model_dir / "config.json").read_text())
    text = config["text_config"]
    # mlx-lm reads only the hyphenated model_type (no lfm2_vl module, no remapping).
    assert config["model_type"] == "lfm2-vl"
    assert importlib.util.find_spec("mlx_lm.models.lfm2_vl") is None
    # mlx-lm's ModelArgs has no defaults for these; mlx-vlm's are the 1.6B model's.
    required = {
        n
        for n, f in lm_text.ModelArgs.__dataclass_fields__.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert {"norm_eps", "conv_L_cache", "block_dim", "block_multiple_of"} <= required
    assert required <= set(text)
    assert vlm.TextConfig.__dataclass_fields__["block_dim"].default == 1024
    assert text["block_dim"] == text["hidden_size"] == 64
    # mlx-vlm builds an lm_head unless the text config ties (mlx-lm always ties).
    assert text["tie_word_embeddings"] is True
    assert text["full_attn_idxs"] == [i for i, t in enumerate(text["layer_types"]) if t != "conv"]
    assert text["layer_types"][0] == "conv"
    # The processor files say what mlx-vlm 0.7.10 enforces anyway.
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    for key, value in processing_lfm2_vl._OFFICIAL_SPLITTING_DEFAULTS.items():
        assert pre[key] == config[key] == value
    assert pre["encoder_patch_size"] == config["vision_config"]["patch_size"] == 8
    assert pre["max_num_patches"] == 64 and pre["tile_size"] == 32
    tokenizer = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer["image_token"] == "<image>"
    assert (model_dir / "chat_template.jinja").exists()


def test_quantized_checkpoint_keeps_vision_in_full_precision():
    model_dir = ensure_checkpoint("lfm2_vl", _case("lfm2_vl_4bit").model.options)
    keys = json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    scales = {k for k in keys if k.endswith(".scales")}
    assert any(k.startswith("language_model.") for k in scales)
    assert not any(k.startswith(("vision_tower.", "multi_modal_projector.")) for k in scales)
    assert json.loads((model_dir / "config.json").read_text())["quantization"]["bits"] == 4


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"attention_layers": (0, 1, 2, 3)}, "attention_layers"),
        ({"attention_layers": (3, 1)}, "attention_layers"),
        ({"attention_layers": (4,)}, "attention_layers"),
        ({"attention_layers": ()}, "attention_layers"),
        ({"num_heads": 3}, "num_heads"),
        ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads"),
        ({"vision_heads": 3}, "vision_heads"),
        ({"min_image_tokens": 32, "max_image_tokens": 16}, "max_image_tokens"),
        ({"tile_size": 30}, "tile_size"),
        ({"vocab_size": 300}, "vocab_size"),
        ({"dtype": "float16"}, "dtype"),
        ({"quantize_bits": 3}, "quantize_bits"),
        ({"seed": -1}, "seed"),
        ({"preset": "450m"}, "preset"),
        ({"colour": "red"}, "colour"),
        ({"hidden_size": 100_000}, "hidden_size"),
        ({"num_layers": 1000}, "num_layers"),
    ],
)
def test_invalid_options_are_refused_naming_the_option(options, field):
    arch_suite.assert_option_refused(ARCH, options, field)
