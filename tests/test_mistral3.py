"""Mistral 3: the synthesizer builds checkpoints both libraries load identically, the reference
add-on is bit-exact with native mlx-vlm on every shipped case (every stage, max abs diff 0),
and every mutant add-on in tests/mistral3_mutants.py FAILS at the stage where its mistake
enters. Everything runs through the built-in registries and paths (`synth: mistral3`,
`addon: mistral3`, mlx-vlm vs unified), as `make parity` runs the cases."""

from __future__ import annotations

import inspect
import json

import arch_suite
import pytest
from arch_suite import PROFILES, verdict

from harness.records import Status
from harness.synth import ensure_checkpoint

ARCH = "mistral3"

# (case, mutant class in tests/mistral3_mutants.py, first diverging stage)
MUTANTS = [
    ("mistral3_one_image", "Float32Features", "embeddings"),
    ("mistral3_two_images", "ContiguousImageSpan", "embeddings"),
    ("mistral3_one_image", "ProjectorNormSkipped", "embeddings"),
    ("mistral3_bos", "SingleBos", "input_ids"),
]
# Mistakes that only show on some configs: the same add-on passes here.
CONTROLS = [
    # float32 features on a float32 checkpoint are the checkpoint's dtype.
    ("mistral3_fp32", "Float32Features"),
    # A one-row token grid has no [IMG_BREAK]: its [IMG] rows are one contiguous run.
    ("mistral3_one_row", "ContiguousImageSpan"),
]
ONE_ROW_IMAGE = "images/wide_strip_256x48.png"  # fitted into 64x16 px: one row of 4 [IMG]


def _case(name: str):
    if name == "mistral3_one_row":
        return arch_suite.with_image_prompt(_case("mistral3_one_image"), name, ONE_ROW_IMAGE)
    return arch_suite.case(ARCH, name)


@pytest.fixture(scope="module")
def mistral3_run():
    """Every shipped Mistral 3 case, every mutant and every control, in one run."""
    # Native's double <bos> on a text prompt: the unified text path feeds the template's one.
    bos_text = _case("mistral3_text").model_copy(
        update={"id": "mistral3_text--bos", "model": _case("mistral3_bos").model}
    )
    return arch_suite.arch_run(ARCH, MUTANTS, CONTROLS, extra=[bos_text], load=_case)


SHIPPED = arch_suite.shipped_ids(ARCH)


# --- the cases --------------------------------------------------------------------------


def test_shipped_cases_exist():
    assert {
        "mistral3_text",
        "mistral3_one_image",
        "mistral3_two_images",
        "mistral3_split_prefill",
        "mistral3_4bit",
        "mistral3_fp32",
        "mistral3_bos",
    } <= set(SHIPPED)


@pytest.mark.parametrize("case_id", SHIPPED)
def test_case_is_bit_exact(mistral3_run, case_id):
    arch_suite.assert_bit_exact(verdict(mistral3_run, case_id))


def test_split_prefill_splits_the_image_span(mistral3_run):
    # [IMG] / [IMG_BREAK] / [IMG_END] of the 4x4-token image sit at prompt positions 2..21.
    arch_suite.assert_prefill_splits(verdict(mistral3_run, "mistral3_split_prefill"), 2, 21)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("case_name", "mutant", "stage"), MUTANTS)
def test_mutant_fails_at_its_stage(mistral3_run, case_name, mutant, stage, profile):
    # Under the shipped exact profile and under the engine's looser image profile alike.
    v = verdict(mistral3_run, f"{case_name}--{mutant}--{profile}")
    arch_suite.assert_fails_at(v, stage)


@pytest.mark.parametrize(("case_name", "mutant"), CONTROLS)
def test_mistake_invisible_on_this_config(mistral3_run, case_name, mutant):
    arch_suite.assert_control_passes(verdict(mistral3_run, f"{case_name}--{mutant}"))


def test_native_double_bos_on_text_prompts_is_caught_at_input_ids(mistral3_run):
    arch_suite.assert_bos_caught(verdict(mistral3_run, "mistral3_text--bos"), position=1)


def test_native_feeds_two_bos_on_image_prompts_too(mistral3_run):
    # SingleBos drops ids[1] only when ids[0] == ids[1] == <bos>, and otherwise is the
    # bundled add-on (bit-exact with native on this prompt): its failure at position 1
    # shows native's image prompt starts <bos><bos>. It feeds what the model expects and
    # still fails: the gate follows its reference, here a wrong one.
    assert verdict(mistral3_run, "mistral3_bos").status is Status.PASS
    v = verdict(mistral3_run, "mistral3_bos--SingleBos--exact")
    ids = arch_suite.check(v, "input_ids", None)
    assert v.first_failure == "input_ids" and "position 1" in ids.detail, ids.detail


# --- the synthesizer --------------------------------------------------------------------


def test_same_spec_same_bytes(tmp_path):
    arch_suite.assert_same_spec_same_bytes(ARCH, tmp_path, quantize_bits=4, add_bos_token=True)


def test_config_writes_every_value_whose_default_differs():
    from mlx_lm.models import llama as lm_llama
    from mlx_vlm.models import mistral3 as vlm
    from mlx_vlm.models.mistral3.processing_mistral3 import Mistral3Processor

    model_dir = ensure_checkpoint("mistral3", _case("mistral3_one_image").model.options)
    config = json.loads((model_dir / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    # The libraries' defaults differ (or are wrong for a tiny model): pin why each is written.
    assert vlm.TextConfig.__dataclass_fields__["rope_theta"].default is None
    assert lm_llama.ModelArgs.__dataclass_fields__["rope_theta"].default == 10000
    assert vlm.TextConfig.__dataclass_fields__["head_dim"].default is None
    assert vlm.VisionConfig.__dataclass_fields__["head_dim"].default == 64
    assert vlm.ModelConfig.__dataclass_fields__["spatial_merge_size"].default == 2
    merge_default = inspect.signature(Mistral3Processor).parameters["spatial_merge_size"]
    assert merge_default.default == 1
    assert text["model_type"] == "mistral" and text["rope_theta"] == 1e9
    assert text["head_dim"] == 16 and text["tie_word_embeddings"] is False
    assert text["sliding_window"] is None and text["rope_scaling"] is None
    assert vision["model_type"] == "pixtral" and vision["head_dim"] == 16
    assert config["spatial_merge_size"] == 2 and config["vision_feature_layer"] == -1
    assert config["image_token_index"] == config["image_token_id"]
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert pre["size"] == {"longest_edge": vision["image_size"]}
    assert pre["patch_size"] == {"height": 8, "width": 8}
    proc = json.loads((model_dir / "processor_config.json").read_text())
    assert (proc["image_token"], proc["image_break_token"], proc["image_end_token"]) == (
        "[IMG]",
        "[IMG_BREAK]",
        "[IMG_END]",
    )
    assert proc["patch_size"] == vision["patch_size"] and proc["spatial_merge_size"] == 2
    assert (model_dir / "chat_template.jinja").exists()
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    assert "language_model.lm_head.weight" in index["weight_map"]  # untied, as published


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"head_dim": 15}, "head_dim"),
        ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads"),
        ({"vision_heads": 3}, "vision_heads"),
        ({"vision_hidden_size": 24, "vision_heads": 4}, "vision_heads"),  # head dim 6
        ({"vision_hidden_size": 4, "vision_heads": 1}, "patch_size"),
        ({"longest_edge": 60}, "longest_edge"),
        ({"spatial_merge_size": 3}, "longest_edge"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"dtype": "float16"}, "dtype"),
        ({"quantize_bits": 3}, "quantize_bits"),
        ({"rope_theta": float("inf")}, "rope_theta"),
        ({"seed": -1}, "seed"),
        ({"preset": "small"}, "preset"),
        ({"colour": "red"}, "colour"),
        # Upper bounds: a case file cannot ask for a multi-gigabyte allocation.
        ({"hidden_size": 100_000}, "hidden_size"),
        ({"longest_edge": 14_000}, "longest_edge"),
        ({"num_layers": 1000}, "num_layers"),
    ],
)
def test_invalid_options_are_refused_naming_the_option(options, field):
    arch_suite.assert_option_refused(ARCH, options, field)
