"""An engine's pipeline as a path: the libraries' `stream_generate` (as engines drive them)
against `generate_step`, and the documented example engine (examples/engine_path.py) run
through the CLI as a user runs it: exact on equal prefill schedules, decode steps too."""

from __future__ import annotations

import pytest
from conftest import CASES, ROOT, run_cli

from harness.cases import PathPair, load_case
from harness.records import Status
from harness.runner import RunOptions, run_cases

PAIRS = [("mlx-vlm", "mlx-vlm-stream"), ("unified", "unified-stream")]


@pytest.fixture(scope="module")
def stream_run():
    cases = []
    for name in ("gemma4_one_image", "gemma4_split_prefill"):
        for reference, candidate in PAIRS:
            case = load_case(CASES / f"{name}.yaml")
            cases.append(
                case.model_copy(
                    update={
                        "id": f"{name}--{candidate}",
                        "paths": PathPair(reference=reference, candidate=candidate),
                        "profile": "exact",
                    }
                )
            )
    return {v.case_id: v for v in run_cases(cases, options=RunOptions(isolation="none")).verdicts}


@pytest.mark.parametrize("name", ["gemma4_one_image", "gemma4_split_prefill"])
@pytest.mark.parametrize("candidate", [c for _, c in PAIRS])
def test_stream_generate_equals_generate_step(stream_run, name, candidate):
    v = stream_run[f"{name}--{candidate}"]
    assert v.status is Status.PASS, v.first_failure_detail or v.reason
    assert {"decode.1", "decode.2", "tokens"} <= {c.stage for c in v.checks}
    assert v.provenance["reference_prefill_chunks"] == v.provenance["candidate_prefill_chunks"]
    assert v.provenance["cached_prompt_tokens"] == "0"


def test_the_example_engine_runs_as_documented(tmp_path):
    case = ROOT / "examples" / "engine_case.yaml"
    args = ("run", case, "--allow-import", "engine_path", "--report-dir", tmp_path / "r")
    done = run_cli(*args, pythonpath=ROOT / "examples")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS engine_case" in done.stdout
    # Without the permission the case alone imports nothing: a configuration error.
    refused = run_cli(*args[:2], "--report-dir", tmp_path / "s", pythonpath=ROOT / "examples")
    assert refused.returncode == 2 and "engine_path" in refused.stdout + refused.stderr
