"""Same cases, seed and libraries -> identical captures and reports (timestamps aside);
and run options reach the sessions."""

from __future__ import annotations

import pandas as pd
from conftest import CASES

from harness.cases import load_case
from harness.report import to_frame
from harness.runner import RunOptions, run_cases

TIME_COLUMNS = ["run_started"]


def test_two_runs_give_identical_report_tables(tmp_path):
    cases = [
        load_case(CASES / f"{name}.yaml")
        for name in ("gemma4_one_image", "gemma4_4bit", "gemma4_text_patch")
    ]
    frames = []
    for index in range(2):
        options = RunOptions(keep_tensors=tmp_path / str(index))
        frames.append(to_frame(run_cases(cases, options=options)).drop(columns=TIME_COLUMNS))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    first = sorted((tmp_path / "0").rglob("*.safetensors"))
    second = sorted((tmp_path / "1").rglob("*.safetensors"))
    assert len(first) == 6
    for a, b in zip(first, second, strict=True):
        assert a.read_bytes() == b.read_bytes(), a


def test_layer_probes_can_be_switched_off():
    case = load_case(CASES / "gemma4_one_image.yaml")
    (probed,) = run_cases([case], options=RunOptions(isolation="none")).verdicts
    (bare,) = run_cases([case], options=RunOptions(isolation="none", layer_probes=False)).verdicts
    assert any(c.stage.startswith("layer.") for c in probed.checks)
    assert not any(c.stage.startswith("layer.") for c in bare.checks)
    assert bare.status is probed.status
