"""Past the first token: greedy decode steps compared as `decode.1 ... decode.N` (each step's
full logits under the case's profile) and `tokens` (the generated ids). A mistake invisible
at the first token fails at the step where it enters."""

from __future__ import annotations

import pytest
from conftest import CASES

from harness.cases import load_case
from harness.policy import ImportPolicy
from harness.records import Status
from harness.runner import RunOptions, run_cases

OPTIONS = RunOptions(isolation="none", imports=ImportPolicy(("mutants",)))


def _case(name: str, **update):
    case = load_case(CASES / f"{name}.yaml")
    label = "-".join(str(v).removeprefix("mutants:") for v in update.values())
    return case.model_copy(update={"id": f"{name}--{label}", **update})


@pytest.fixture(scope="module")
def decode_run():
    cases = [
        _case("gemma4_one_image", decode_steps=3),
        _case("gemma4_split_prefill", decode_steps=2),
        _case("gemma4_text", decode_steps=0),
        _case("gemma4_one_image", addon="mutants:StalePromptStateAtDecode"),
        _case("gemma4_one_image", addon="mutants:StalePromptStateAtDecode", profile="image"),
        # A text prompt never stores prompt state: the same add-on is exact there.
        _case("gemma4_text", addon="mutants:StalePromptStateAtDecode"),
    ]
    return {v.case_id: v for v in run_cases(cases, options=OPTIONS).verdicts}


def _stages(v):
    return {c.stage for c in v.checks}


def test_decode_steps_are_compared_exactly(decode_run):
    v = decode_run["gemma4_one_image--3"]
    assert v.status is Status.PASS, v.first_failure_detail
    assert {"logits", "decode.1", "decode.2", "decode.3", "tokens"} <= _stages(v)
    assert "decode.4" not in _stages(v)
    assert all(c.value == 0 for c in v.checks if c.metric == "max_abs_diff")
    v = decode_run["gemma4_split_prefill--2"]
    assert v.status is Status.PASS and {"decode.2", "tokens"} <= _stages(v)


def test_zero_decode_steps_stop_at_the_first_token(decode_run):
    v = decode_run["gemma4_text--0"]
    assert v.status is Status.PASS
    assert not any(s.startswith("decode.") for s in _stages(v))
    (tokens,) = [c for c in v.checks if c.stage == "tokens"]
    assert tokens.passed


@pytest.mark.parametrize("profile", ["", "-image"])
def test_a_mistake_invisible_at_the_first_token_fails_at_decode_1(decode_run, profile):
    v = decode_run[f"gemma4_one_image--StalePromptStateAtDecode{profile}"]
    assert v.status is Status.FAIL
    assert v.first_failure == "decode.1" and v.first_divergence == "decode.1"
    assert all(c.passed for c in v.checks if c.stage == "logits")


def test_the_decode_mistake_needs_prompt_state(decode_run):
    (v,) = [v for k, v in decode_run.items() if k.startswith("gemma4_text--Stale")]
    assert v.status is Status.PASS, v.first_failure_detail
