"""Batching: a text request batched with another (mlx-lm's batch generator) generates the
same tokens as alone, with selected-token log-probabilities inside the case's tolerance;
a broken batch path fails `batch`, an image request says the generator cannot take it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CASES

from harness.batching import check
from harness.cases import BATCH_LOGPROB_TOLERANCE, BatchSpec, load_case
from harness.records import Capture, Status
from harness.runner import RunOptions, run_cases

BATCH = BatchSpec()


@pytest.fixture(scope="module")
def batch_run():
    cases = [
        load_case(CASES / f"{name}.yaml").model_copy(update={"batch": BATCH, "decode_steps": 3})
        for name in ("gemma4_text", "gemma4_sliding_window_text", "gemma4_one_image")
    ]
    return {v.case_id: v for v in run_cases(cases, options=RunOptions(isolation="none")).verdicts}


@pytest.mark.parametrize("name", ["gemma4_text", "gemma4_sliding_window_text"])
def test_batched_text_requests_generate_the_same_tokens(batch_run, name):
    v = batch_run[name]
    assert v.status is Status.PASS, v.first_failure_detail
    (row,) = [c for c in v.checks if c.stage == "batch"]
    assert row.passed and 0 <= row.value <= BATCH_LOGPROB_TOLERANCE
    assert row.threshold == BATCH_LOGPROB_TOLERANCE and "tokens equal" in row.detail


def test_an_image_request_cannot_be_batched_and_says_so(batch_run):
    v = batch_run["gemma4_one_image"]
    assert v.status is Status.FAIL and v.first_failure == "batch"
    assert "token prompts only" in v.first_failure_detail


def _capture(tokens, logits_rows, logprobs=None):
    arrays = {"tokens": np.array(tokens, np.int32)}
    if logprobs is not None:
        arrays["selected_logprobs"] = np.array(logprobs, np.float32)
    for k, row in enumerate(logits_rows):
        arrays["logits" if k == 0 else f"decode.{k}"] = np.array(row, np.float32)
    return Capture("p", "c", arrays, {}, (), provenance={"batch_sizes": "5,7"})


LOGITS = [[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]]
EXACT = [float(np.log(np.exp(r[t]) / np.exp(r).sum())) for r, t in zip(LOGITS, [1, 0], strict=True)]


@pytest.mark.parametrize(
    ("tokens", "logprobs", "passes"),
    [
        ([1, 0], EXACT, True),
        ([1, 0], [EXACT[0], EXACT[1] + 0.01], True),
        ([1, 0], [EXACT[0], EXACT[1] + 0.5], False),  # logprob moved past tolerance
        ([1, 2], EXACT, False),  # a different token
        ([1], EXACT[:1], False),  # stopped early
        ([1, 0], [EXACT[0], float("nan")], False),  # NaN never passes
    ],
)
def test_check_on_hand_built_captures(tokens, logprobs, passes):
    alone = _capture([1, 0], LOGITS)
    row = check("c", alone, _capture(tokens, [], logprobs), tolerance=0.05)
    assert row.passed is passes and row.gating
