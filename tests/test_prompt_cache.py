"""Prompt-cache restore: a request whose first chunks come from a prompt cache saved with
mlx-lm's `save_prompt_cache` and loaded back must equal the one-shot request, with the
boundary before, inside and after an image block, on a bidirectional Gemma 4 config and a
causal one. The engine's regression (bidirectional image attention lost on the restored
request's suffix) fails on the bidirectional config and passes on the causal one: the
check isolates the mechanism."""

from __future__ import annotations

import pytest
from conftest import CASES

from harness.cases import PromptCacheSpec, load_case
from harness.policy import ImportPolicy
from harness.records import Status
from harness.runner import RunOptions, run_cases

OPTIONS = RunOptions(isolation="none", imports=ImportPolicy(("mutants",)))
# gemma4_bidirectional_chunked: 16-token chunks, the image block at prompt rows 19-81 of 112.
BOUNDARIES = {"before": 1, "inside": 3, "after": 6}
LOST = "mutants:MaskLostAfterRestore"


def _case(config: str, where: str, addon: str = "gemma4"):
    case = load_case(CASES / "gemma4_bidirectional_chunked.yaml")
    options = dict(case.model.options)
    if config == "causal":
        options.pop("bidirectional")
    return case.model_copy(
        update={
            "id": f"{config}-{where}-{addon.removeprefix('mutants:')}",
            "model": case.model.model_copy(update={"options": options}),
            "prompt_cache": PromptCacheSpec(prefix_chunks=BOUNDARIES[where]),
            "addon": addon,
            "decode_steps": 1,
        }
    )


@pytest.fixture(scope="module")
def restore_run():
    cases = [_case(c, w) for c in ("bidirectional", "causal") for w in BOUNDARIES]
    cases += [_case(c, "before", LOST) for c in ("bidirectional", "causal")]
    return {v.case_id: v for v in run_cases(cases, options=OPTIONS).verdicts}


def _row(v):
    (row,) = [c for c in v.checks if c.stage == "prompt_cache"]
    return row


@pytest.mark.parametrize(
    ("config", "where"),
    [("bidirectional", "before"), ("bidirectional", "after")]
    + [("causal", w) for w in BOUNDARIES],
)
def test_restored_request_equals_the_one_shot_request(restore_run, config, where):
    v = restore_run[f"{config}-{where}-gemma4"]
    assert v.status is Status.PASS, v.first_failure_detail or v.reason
    row = _row(v)
    assert row.passed and row.value == 0 and "identical" in row.detail
    assert f"prefix of {16 * BOUNDARIES[where]} tokens" in row.detail


def test_a_boundary_inside_a_bidirectional_block_is_refused_by_the_path(restore_run):
    # The block's rows before the boundary would have been computed without the rest of
    # the block: the bundled add-on refuses such a suffix, and the check says so.
    v = restore_run["bidirectional-inside-gemma4"]
    assert v.status is Status.FAIL and v.first_failure == "prompt_cache"
    assert "splits image block" in _row(v).detail


def test_lost_bidirectional_mask_after_restore_fails_prompt_cache(restore_run):
    v = restore_run["bidirectional-before-MaskLostAfterRestore"]
    assert v.status is Status.FAIL and v.first_failure == "prompt_cache"
    assert "differs from the one-shot request" in _row(v).detail
    # The one-shot request itself is right: only the restored one is wrong.
    assert all(c.passed for c in v.checks if c.stage != "prompt_cache")


def test_the_same_mistake_is_invisible_on_a_causal_config(restore_run):
    v = restore_run["causal-before-MaskLostAfterRestore"]
    assert v.status is Status.PASS, v.first_failure_detail
