"""Session state: a case captured again after its session served other prompts (image and
text, images of other sizes) must be identical to its first capture; an add-on that keeps
request state fails `session_state` while each request alone passes."""

from __future__ import annotations

import pytest
from conftest import CASES

from harness.cases import load_case
from harness.policy import ImportPolicy
from harness.records import Status
from harness.runner import RunOptions, run_cases

OPTIONS = RunOptions(isolation="none", imports=ImportPolicy(("mutants",)))
LEAKY = "mutants:PromptStateNeverCleared"


def _case(name: str, label: str, **update):
    case = load_case(CASES / f"{name}.yaml")
    return case.model_copy(update={"id": f"{name}--{label}", "decode_steps": 1, **update})


@pytest.fixture(scope="module")
def state_run():
    cases = [
        _case("gemma4_one_image", "fresh-vs-used", session_state=True),
        _case("gemma4_text", "fresh-vs-used", session_state=True),
        _case("gemma4_two_images", "fresh-vs-used", session_state=True),
        _case("gemma4_text", "leaky", session_state=True, addon=LEAKY),
    ]
    verdicts = run_cases(cases, options=OPTIONS).verdicts
    # Alone in its session, the same request through the same add-on.
    alone = [_case("gemma4_text", "leaky-unchecked", addon=LEAKY)]
    return {v.case_id: v for v in [*verdicts, *run_cases(alone, options=OPTIONS).verdicts]}


@pytest.mark.parametrize("name", ["gemma4_one_image", "gemma4_text", "gemma4_two_images"])
def test_the_reference_addon_keeps_no_state(state_run, name):
    v = state_run[f"{name}--fresh-vs-used"]
    assert v.status is Status.PASS, v.first_failure_detail
    (row,) = [c for c in v.checks if c.stage == "session_state"]
    assert row.passed and row.gating and row.value == 0
    assert "identical after serving" in row.detail and "image prompt" in row.detail


def test_state_kept_across_requests_fails_session_state(state_run):
    v = state_run["gemma4_text--leaky"]
    assert v.status is Status.FAIL
    assert v.first_failure == "session_state", v.first_failure_detail
    (row,) = [c for c in v.checks if c.stage == "session_state"]
    assert not row.passed and "differs" in row.detail
    # Alone, the request is right: every other stage passes.
    assert all(c.passed for c in v.checks if c.stage != "session_state")


def test_without_the_check_the_leak_is_invisible(state_run):
    v = state_run["gemma4_text--leaky-unchecked"]
    assert v.status is Status.PASS
    assert not any(c.stage == "session_state" for c in v.checks)
