"""parity.md fits one GitHub comment (65,536 characters) whatever the run holds: hundreds of
cases, long ids, long details and prompts. Passing rows go first, failing cases are always
named, and every cut says how many were left out. Verdicts are built by hand: no model."""

from __future__ import annotations

import re

import numpy as np
import pytest

from harness.records import CheckResult, Status, Verdict
from harness.report_md import MD_LIMIT, markdown, md_limit, md_text
from harness.runner import RunResult

STARTED = "2025-01-01T00:00:00+00:00"
LONG = "a long detail with | pipes, <tags>, @someone and https://x.example " * 40


def _check(case_id: str, stage: str, value: float, detail: str = "") -> CheckResult:
    return CheckResult(case_id, stage, "stats", "max_abs_diff", value, 0.0, value <= 0, value,
                       detail)  # fmt: skip


def _case_id(index: int) -> str:
    name = f"case_{index:03d}"
    return name + "_" + "very_long_identifier" * 8 if index % 7 == 0 else name


def _verdict(index: int, status: Status) -> Verdict:
    case_id = _case_id(index)
    grid = (np.full((7, 9), index / 300.0),)  # image-token grids ride along, unused here
    if status is Status.ERROR:
        return Verdict(case_id, f"{case_id}.yaml", status, reason=LONG)
    if status is Status.FAIL:
        checks = tuple(_check(case_id, "layer.2", 1.0 + k, LONG[:200]) for k in range(3))
        return Verdict(
            case_id, f"{case_id}.yaml", status, (_check(case_id, "embeddings", 0.0), *checks),
            first_divergence="layer.2", first_difference="layer.2",
            first_difference_detail=LONG, first_failure="layer.2",
            first_failure_detail=LONG, prompt_texts=(LONG, LONG) if index % 9 == 0 else (),
            reference="mlx-vlm", candidate="unified", image_token_errors=grid,
        )  # fmt: skip
    return Verdict(  # every passing case differs within tolerance, at length
        case_id, f"{case_id}.yaml", status, (_check(case_id, "embeddings", 0.0),),
        first_difference="embeddings", first_difference_detail=LONG, reason=LONG,
        reference="mlx-vlm", candidate="unified", image_token_errors=grid,
    )  # fmt: skip


def _run(statuses: list[Status]) -> RunResult:
    verdicts = tuple(_verdict(i, s) for i, s in enumerate(statuses))
    return RunResult(verdicts, STARTED, STARTED, {"commit": "abc123", "version_mlx": "0.32.4"})


def _table_ids(text: str) -> list[str]:
    return re.findall(r"^\| (.+?) \| (?:pass|fail|error|skip) \|", text, re.M)


def _left_out(text: str, what: str) -> int:
    found = re.search(rf"_(\d+) {what}[^_]* left out", text)
    return int(found.group(1)) if found else 0


def test_three_hundred_cases_fit_one_comment_with_every_failure_named():
    statuses = [
        Status.FAIL if i % 10 == 3 else Status.ERROR if i % 25 == 4 else Status.PASS
        for i in range(300)
    ]
    run = _run(statuses)
    text = markdown(run)
    assert len(text) < 65_000 < len(markdown(run, limit=10**7))  # it had to be cut
    assert "**FAIL**: " in text.splitlines()[2]
    failing = [v for v in run.verdicts if v.status in (Status.FAIL, Status.ERROR)]
    assert len(failing) == 42
    for v in failing:
        assert f"- **{md_text(v.case_id)}** ({v.status.value})" in text
    rows = _table_ids(text)
    # Passing rows and differences went first: every failing case keeps its full detail
    # (its three failed checks) and its table row, and what was left out is counted.
    assert text.count("  - stats `max_abs_diff` = ") == 3 * 30
    assert {md_text(v.case_id) for v in failing} <= set(rows)
    assert len(rows) + _left_out(text, "passing or skipped row") == 300
    assert _left_out(text, "passing or skipped row") > 0
    listed = len(re.findall(r"^- \*\*", text, re.M))
    assert listed + _left_out(text, "passing case") == 300


def test_a_run_that_fits_is_not_cut():
    run = _run([Status.PASS] * 20 + [Status.FAIL] * 2)
    text = markdown(run)
    assert "left out" not in text and len(_table_ids(text)) == 22
    assert text.index("### Where parity breaks") < text.index("<details><summary>all 22 cases")


def test_every_failing_case_shortened_before_any_is_dropped():
    run = _run([Status.FAIL] * 300)
    text = markdown(run)
    assert len(text) < MD_LIMIT
    for v in run.verdicts:
        assert f"**{md_text(v.case_id)}** (fail)" in text


def test_thousands_of_failures_name_as_many_as_fit_and_count_the_rest():
    run = _run([Status.ERROR] * 3000)
    text = markdown(run)
    assert len(text) < MD_LIMIT and "**FAIL**" in text
    shown = len(re.findall(r"^- \*\*", text, re.M))
    more = re.search(r"and (\d+) more failing case", text)
    assert more and shown + int(more.group(1)) == 3000


@pytest.mark.parametrize(
    ("value", "expected"), [("30000", 30_000), ("10", 2_000), ("900000", MD_LIMIT), ("x", MD_LIMIT)]
)
def test_limit_from_the_environment(monkeypatch, value, expected):
    monkeypatch.setenv("MLX_PARITY_MD_LIMIT", value)
    assert md_limit() == expected
    if value == "30000":
        assert len(markdown(_run([Status.PASS] * 280 + [Status.FAIL] * 20))) < 30_000
