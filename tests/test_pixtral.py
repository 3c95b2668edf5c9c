"""Pixtral: the synthesizer builds checkpoints both libraries load identically, the reference
add-on is bit-exact with native mlx-vlm on every shipped case (every stage, max abs diff 0),
and every mutant add-on in tests/pixtral_mutants.py FAILS at the stage where its mistake
enters. One `run_cases` for everything, built by tests/arch_suite.py as for Mistral 3."""

from __future__ import annotations

import inspect
import json

import arch_suite
import pytest
from arch_suite import PROFILES, verdict

from harness.synth import ensure_checkpoint

ARCH = "pixtral"

# (case, mutant class in tests/pixtral_mutants.py, first diverging stage)
MUTANTS = [
    ("pixtral_one_image", "Float32Features", "embeddings"),
    ("pixtral_two_images", "ContiguousImageSpan", "embeddings"),
    ("pixtral_one_image", "PenultimateVisionLayer", "embeddings"),
]
# A one-row token grid has no [IMG_BREAK]: its [IMG] rows are one contiguous run.
CONTROLS = [("pixtral_one_row", "ContiguousImageSpan")]
ONE_ROW_IMAGE = "images/wide_strip_256x48.png"  # fitted into 32x8 px: one row of 4 [IMG]


def _case(name: str):
    if name == "pixtral_one_row":
        return arch_suite.with_image_prompt(_case("pixtral_one_image"), name, ONE_ROW_IMAGE)
    return arch_suite.case(ARCH, name)


@pytest.fixture(scope="module")
def pixtral_run():
    """Every shipped Pixtral case, every mutant and the control, in one run."""
    return arch_suite.arch_run(ARCH, MUTANTS, CONTROLS, load=_case)


SHIPPED = arch_suite.shipped_ids(ARCH)


def test_shipped_cases_exist():
    assert {"pixtral_text", "pixtral_one_image", "pixtral_split_prefill", "pixtral_4bit"} <= set(
        SHIPPED
    )


@pytest.mark.parametrize("case_id", SHIPPED)
def test_case_is_bit_exact(pixtral_run, case_id):
    arch_suite.assert_bit_exact(verdict(pixtral_run, case_id))


def test_split_prefill_splits_the_image_span(pixtral_run):
    # [IMG] / [IMG_BREAK] / [IMG_END] of the 4x4-token image sit at prompt positions 2..21.
    arch_suite.assert_prefill_splits(verdict(pixtral_run, "pixtral_split_prefill"), 2, 21)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("case_name", "mutant", "stage"), MUTANTS)
def test_mutant_fails_at_its_stage(pixtral_run, case_name, mutant, stage, profile):
    arch_suite.assert_fails_at(verdict(pixtral_run, f"{case_name}--{mutant}--{profile}"), stage)


@pytest.mark.parametrize(("case_name", "mutant"), CONTROLS)
def test_mistake_invisible_on_this_config(pixtral_run, case_name, mutant):
    arch_suite.assert_control_passes(verdict(pixtral_run, f"{case_name}--{mutant}"))


# --- the synthesizer --------------------------------------------------------------------


def test_same_spec_same_bytes(tmp_path):
    arch_suite.assert_same_spec_same_bytes(ARCH, tmp_path, add_bos_token=True)


def test_config_writes_every_value_whose_default_differs():
    from mlx_lm.models import llama as lm_llama
    from mlx_vlm.models import pixtral as vlm
    from mlx_vlm.models.pixtral.processing_pixtral import PixtralProcessor

    model_dir = ensure_checkpoint("pixtral", _case("pixtral_one_image").model.options)
    config = json.loads((model_dir / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    # mlx-vlm's pixtral text defaults are Pixtral 12B's, mlx-lm's llama derives or
    # defaults otherwise: every one is written.
    vlm_text = vlm.TextConfig.__dataclass_fields__
    assert (vlm_text["head_dim"].default, vlm_text["num_key_value_heads"].default) == (128, 8)
    assert lm_llama.ModelArgs.__dataclass_fields__["rope_theta"].default == 10000
    assert vlm_text["rope_theta"].default == 1e9
    assert (text["head_dim"], text["num_key_value_heads"], text["rope_theta"]) == (16, 2, 1e9)
    assert text["tie_word_embeddings"] is False and text["rope_scaling"] is None
    assert vision["model_type"] == "pixtral" and vision["head_dim"] == 16
    assert vision["image_size"] == 32
    assert config["model_type"] == "pixtral" and "spatial_merge_size" not in config
    assert config["vision_feature_layer"] == -1
    # The processor's patch size comes from processor_config.json alone (default 16).
    assert inspect.signature(PixtralProcessor).parameters["patch_size"].default == 16
    proc = json.loads((model_dir / "processor_config.json").read_text())
    assert proc["patch_size"] == vision["patch_size"] == 8 and proc["spatial_merge_size"] == 1
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert pre["size"] == {"longest_edge": 32}
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    weights = index["weight_map"]
    assert "language_model.lm_head.weight" in weights
    assert "multi_modal_projector.linear_1.bias" in weights
    assert not any("patch_merger" in k or "projector.norm" in k for k in weights)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"spatial_merge_size": 2}, "spatial_merge_size"),
        ({"longest_edge": 36}, "longest_edge"),
        ({"vision_heads": 3}, "vision_heads"),
        ({"head_dim": 15}, "head_dim"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_options_are_refused_naming_the_option(options, field):
    arch_suite.assert_option_refused(ARCH, options, field)
