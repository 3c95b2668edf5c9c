"""The shipped cases, end to end through the real mlx-lm / mlx-vlm loaders."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CASES, TOP_LEVEL_CASES, verdict_of

from harness.cases import SynthModel, load_cases
from harness.records import Status

SHIPPED, _ = load_cases(TOP_LEVEL_CASES)
SYNTHETIC = [c.id for c in SHIPPED if isinstance(c.model, SynthModel)]
REAL = [c.id for c in SHIPPED if not isinstance(c.model, SynthModel)]


def test_shipped_cases_load_without_errors():
    cases, errors = load_cases([CASES])
    assert errors == []
    assert len(SYNTHETIC) >= 8 and REAL


@pytest.mark.parametrize("case_id", SYNTHETIC)
def test_synthetic_case_is_bit_exact(shipped_run, case_id):
    v = verdict_of(shipped_run, case_id)
    assert v.status is Status.PASS, v.reason or [c for c in v.checks if not c.passed]
    stages = {c.stage for c in v.checks}
    assert {"input_ids", "embeddings", "logits"} <= stages
    for check in v.checks:
        # Batched generation changes reduction order: its logprob tolerance is measured.
        assert check.passed and (check.required == 0.0 or check.stage == "batch"), check


@pytest.mark.parametrize("case_id", REAL)
def test_real_checkpoint_is_skipped_with_reason_when_absent(shipped_run, case_id):
    v = verdict_of(shipped_run, case_id)
    assert v.status is Status.SKIP
    assert "not in the local Hugging Face cache" in v.reason


def test_run_exit_code_is_zero(shipped_run):
    assert shipped_run.exit_code == 0


def test_per_layer_inputs_are_compared_where_the_model_has_them(shipped_run):
    v = verdict_of(shipped_run, "gemma4_one_image")
    (pli,) = [c for c in v.checks if c.stage == "per_layer_inputs"]
    assert pli.check == "exact" and pli.passed


def test_split_prefill_case_really_splits_the_image_span(shipped_run):
    from harness.cases import load_case
    from harness.models import resolve_model
    from harness.paths import SessionOptions
    from harness.paths.native import NativeSession

    v = verdict_of(shipped_run, "gemma4_split_prefill")
    chunks = [int(n) for n in v.provenance["candidate_prefill_chunks"].split(",")]
    assert chunks[:3] == [16, 16, 16]
    assert v.provenance["reference_prefill_chunks"] == v.provenance["candidate_prefill_chunks"]

    case = load_case(CASES / "gemma4_split_prefill.yaml")
    session = NativeSession(resolve_model(case), SessionOptions())
    ids = session.capture(case).arrays["input_ids"]
    session.close()
    image = np.flatnonzero(ids == ids[np.argmax(np.bincount(ids))])  # the image token
    boundaries = np.cumsum(chunks)[:-1]
    inside = [b for b in boundaries if image.min() < b <= image.max()]
    assert inside, f"no chunk boundary {boundaries} inside image span {image.min()}..{image.max()}"
