"""Proof that the gate bites: every mutant add-on FAILS, under the shipped exact profile
and under the engine's looser default image profile, and the verdict and the report name
the stage where the mistake enters. A correct add-on of another design is the control."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import CASES, TEST_MODULES

from harness.cases import load_case
from harness.policy import ImportPolicy
from harness.records import Status, stage_rank
from harness.report import to_frame
from harness.runner import RunOptions, run_cases

# (case file, mutant class in tests/mutants.py, first diverging stage)
MUTANTS = [
    ("gemma4_one_image", "FeaturesNotDivided", "embeddings"),
    ("gemma4_embed_scale_not_pow2", "FeaturesNotDivided", "embeddings"),
    ("gemma4_one_image", "EmbedScaleTwice", "embeddings"),
    ("gemma4_one_image", "PerLayerInputsNotZeroed", "per_layer_inputs"),
    ("gemma4_two_images", "PerLayerInputsNotPassed", "per_layer_inputs"),
    ("gemma4_split_prefill", "PerLayerInputsNotSliced", "per_layer_inputs"),
    # The mask itself is captured: a causal mask over image blocks is named there.
    ("gemma4_bidirectional", "CausalVision", "attention_mask"),
    # A perturbation that enters at one decoder layer is named at that layer.
    ("gemma4_one_image", "NudgeLayerTwoInput", "layer.2"),
    ("gemma4_text", "NudgeLayerTwoInput", "layer.2"),
]
# A 1e-2 nudge may or may not move the top-5 of random weights: under the image profile
# the verdict may pass, but the diagnostic layer probes must still name where it entered.
MAY_PASS_UNDER_IMAGE = {"NudgeLayerTwoInput"}
PROFILES = ["exact", "image"]


def _variant(case_file: str, addon: str, profile: str):
    base = load_case(CASES / f"{case_file}.yaml")
    return base.model_copy(
        update={
            "id": f"{case_file}--{addon}--{profile}",
            "addon": f"mutants:{addon}",
            "profile": profile,
        }
    )


@pytest.fixture(scope="module")
def mutant_run():
    cases = [_variant(f, m, p) for f, m, _ in MUTANTS for p in PROFILES]
    cases += [
        _variant("gemma4_one_image", "EngineStyle", "exact"),
        _variant("gemma4_embed_scale_not_pow2", "EngineStyle", "exact"),
    ]
    return run_cases(cases, options=RunOptions(imports=ImportPolicy(TEST_MODULES)))


def _verdict(run, case_id):
    (v,) = [v for v in run.verdicts if v.case_id == case_id]
    return v


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("case_file", "mutant", "stage"), MUTANTS)
def test_mutant_fails_at_its_stage(mutant_run, case_file, mutant, stage, profile):
    v = _verdict(mutant_run, f"{case_file}--{mutant}--{profile}")
    gating_failures = [c for c in v.checks if c.gating and not c.passed]
    if profile == "image" and mutant in MAY_PASS_UNDER_IMAGE:
        assert v.status is (Status.FAIL if gating_failures else Status.PASS)
    else:
        assert v.status is Status.FAIL and gating_failures, v.reason
    assert v.first_divergence == stage
    # Every stage before the culprit still matches: the verdict localises the mistake.
    failing = {c.stage for c in v.checks if not c.passed}
    assert stage in failing
    assert all(stage_rank(s) >= stage_rank(stage) for s in failing)
    earlier = {c.stage for c in v.checks if stage_rank(c.stage) < stage_rank(stage)}
    assert "input_ids" in earlier


@pytest.mark.parametrize(("case_file", "mutant", "stage"), MUTANTS)
def test_report_rows_name_the_diverging_stage(mutant_run, case_file, mutant, stage):
    frame = to_frame(mutant_run)
    rows = frame[frame.case_id == f"{case_file}--{mutant}--exact"]
    assert set(rows.first_divergence) == {stage}
    assert (rows.status == "fail").all()
    assert not rows[rows.stage == stage].passed.all()


def test_run_with_mutants_exits_one(mutant_run):
    assert mutant_run.exit_code == 1


def test_engine_style_addon_is_exact_when_embed_scale_is_a_power_of_two(mutant_run):
    v = _verdict(mutant_run, "gemma4_one_image--EngineStyle--exact")
    assert v.status is Status.PASS


def test_engine_style_round_trip_is_caught_when_embed_scale_is_not(mutant_run):
    # Dividing by sqrt(48) and multiplying back in bf16 moves image rows by ~1 ulp.
    v = _verdict(mutant_run, "gemma4_embed_scale_not_pow2--EngineStyle--exact")
    assert v.status is Status.FAIL and v.first_divergence == "embeddings"
    (emb,) = [c for c in v.checks if c.stage == "embeddings"]
    assert 0 < emb.value < 0.05


def test_report_explains_where_parity_breaks(mutant_run, tmp_path):
    from PIL import Image

    from harness.report import markdown, write_reports

    text = markdown(mutant_run)
    assert "### Where parity breaks" in text
    (line,) = [
        t
        for t in text.splitlines()
        if t.startswith("- **gemma4_one_image--NudgeLayerTwoInput--exact**")
    ]
    assert "(fail): layer.2 differs first" in line and "first failure: layer.2 stats" in line
    outputs = write_reports(mutant_run, tmp_path)
    with Image.open(outputs["layers_figure"]) as figure:
        assert figure.size[0] > 500
    heatmap = tmp_path / "figures" / "image_tokens.gemma4_one_image--FeaturesNotDivided--exact.png"
    assert heatmap.exists()
    tokens = pd.read_parquet(outputs["image_tokens"])
    grid = tokens[tokens.case_id == "gemma4_one_image--FeaturesNotDivided--exact"]
    assert (grid.row.max() + 1, grid.col.max() + 1) == (7, 9)  # 63 tokens of a 4:3 image
    assert (grid.error > 0).all()  # every image token carries the unscaled features
    nudge = tokens[tokens.case_id == "gemma4_one_image--NudgeLayerTwoInput--exact"]
    assert (nudge.error == 0).all()  # the embeddings themselves were right
