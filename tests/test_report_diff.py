"""`mlx-parity diff OLD NEW` on reports built by hand (to_frame of hand-made verdicts,
written as parquet): status changes, stage moves, version changes, the exit code, and
"no change" for identical reports. No model is loaded."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest

from harness.cli import main
from harness.records import CheckResult, Status, Verdict
from harness.report import to_frame
from harness.report_diff import ReportError, diff_frames, diff_reports, read_report
from harness.report_diff_format import format_markdown, format_text
from harness.runner import RunResult

STARTED = "2025-01-01T00:00:00+00:00"
VERSIONS = {"version_mlx": "0.32.4", "version_mlx-lm": "0.32.2"}


def _check(case_id: str, stage: str, value: float, threshold: float = 0.0, **kw) -> CheckResult:
    passed = not math.isnan(value) and value <= threshold
    return CheckResult(case_id, stage, kw.pop("check", "exact"), kw.pop("metric", "max_abs_diff"),
                       value, threshold, passed, value, **kw)  # fmt: skip


def _case(
    case_id: str,
    status: Status = Status.PASS,
    logits: float = 0.0,
    layer: float = 0.0,
    diagnostic: float = 0.0,
    checkpoint: str = "aaaa",
) -> Verdict:
    checks = (
        _check(case_id, "embeddings", 0.0),
        _check(case_id, "layer.0", layer, check="stats"),
        _check(case_id, "logits", logits),
        _check(case_id, "logits", diagnostic, 1e-3, check="kl", metric="kl", gating=False),
    )
    failed = next((c.stage for c in checks if c.gating and not c.passed), None)
    if status in (Status.ERROR, Status.SKIP):
        return Verdict(case_id, f"{case_id}.yaml", status, reason=f"{case_id} could not run")
    return Verdict(
        case_id, f"{case_id}.yaml", status, checks, first_divergence=failed,
        first_failure=failed, first_failure_detail="exact max_abs_diff > 0" if failed else "",
        reference="mlx-vlm", candidate="unified",
        provenance={**VERSIONS, "checkpoint_hash": checkpoint},
    )  # fmt: skip


def _frame(*verdicts: Verdict, commit: str = "abc123", **versions: str) -> pd.DataFrame:
    provenance = {"commit": commit, **VERSIONS, **versions}
    return to_frame(RunResult(tuple(verdicts), STARTED, STARTED, provenance))


def _write(frame: pd.DataFrame, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(directory / "parity.parquet", index=False)
    return directory


def _kinds(diff) -> dict[str, str]:
    return {c.case_id: c.kind for c in diff.cases}


def test_identical_reports_say_no_change():
    frame = _frame(_case("a"), _case("b", Status.FAIL, logits=0.5), _case("c", Status.SKIP))
    diff = diff_frames(frame, frame.copy())
    assert set(_kinds(diff).values()) == {"same"}
    assert not diff.moves and not diff.versions and not diff.changed and diff.exit_code == 0
    text, md = format_text(diff), format_markdown(diff)
    assert text.startswith("mlx-parity diff: no change") and "3 same" in text
    assert "**no change**" in md and "###" not in md


def test_status_changes_and_the_regression_exit_code():
    old = _frame(
        _case("to_fail"), _case("to_error"), _case("fixed", Status.FAIL, logits=1.0),
        _case("fail_to_error", Status.FAIL, logits=1.0), _case("skip_to_pass", Status.SKIP),
        _case("removed"),
    )  # fmt: skip
    new = _frame(
        _case("to_fail", Status.FAIL, logits=2.0), _case("to_error", Status.ERROR),
        _case("fixed"), _case("fail_to_error", Status.ERROR), _case("skip_to_pass"),
        _case("added", Status.FAIL, logits=1.0),
    )  # fmt: skip
    diff = diff_frames(old, new)
    assert _kinds(diff) == {
        "to_error": "regressed", "to_fail": "regressed", "fail_to_error": "errored",
        "fixed": "fixed", "skip_to_pass": "changed", "added": "new", "removed": "removed",
    }  # fmt: skip
    assert [c.kind for c in diff.cases][:2] == ["regressed", "regressed"]  # listed first
    assert diff.exit_code == 1
    regressed = {c.case_id: c for c in diff.regressed}
    assert regressed["to_fail"].new_first_failure == "logits"
    assert regressed["to_error"].new_detail == "to_error could not run"
    assert "REGRESSION: 2 case(s)" in format_text(diff)
    # Without the two regressions nothing went from pass to fail or error: exit 0.
    keep = ~old.case_id.isin(["to_fail", "to_error"])
    calm = diff_frames(old[keep], new[~new.case_id.isin(["to_fail", "to_error"])])
    assert calm.exit_code == 0 and calm.changed
    assert format_text(calm).startswith("mlx-parity diff: changed (no case went")


def test_stage_moves_per_case_and_stage():
    old = _frame(
        _case("drift", layer=0.0), _case("moves_failure", Status.FAIL, logits=1.0),
        _case("diagnostic_only", diagnostic=1e-4), _case("nan_both", Status.FAIL, logits=math.nan),
        _case("to_nan", Status.FAIL, logits=1.0),
    )  # fmt: skip
    new = _frame(
        _case("drift", layer=0.0), _case("moves_failure", Status.FAIL, layer=0.25, logits=1.0),
        _case("diagnostic_only", diagnostic=5e-4), _case("nan_both", Status.FAIL, logits=math.nan),
        _case("to_nan", Status.FAIL, logits=math.nan),
    )  # fmt: skip
    diff = diff_frames(old, new)
    kinds = _kinds(diff)
    # A diagnostic that moved, and NaN staying NaN, are no change; a value becoming NaN is.
    assert kinds["drift"] == kinds["diagnostic_only"] == kinds["nan_both"] == "same"
    assert kinds["moves_failure"] == kinds["to_nan"] == "moved"
    (layer,) = [m for m in diff.moves if m.case_id == "moves_failure"]
    assert (layer.stage, layer.old, layer.new, layer.delta) == ("layer.0", 0.0, 0.25, 0.25)
    assert (layer.old_passed, layer.new_passed) == (True, False)
    (nan,) = [m for m in diff.moves if m.case_id == "to_nan"]
    assert nan.old == 1.0 and math.isnan(nan.new) and nan.delta is None
    change = next(c for c in diff.cases if c.case_id == "moves_failure")
    assert (change.old_first_failure, change.new_first_failure) == ("logits", "layer.0")
    assert change.moved == 1 and diff.exit_code == 0
    text = format_text(diff)
    assert re.search(r"moves_failure\s+layer\.0\s+stats\s+max_abs_diff\s+0\s+0\.25\s+\+0\.25", text)
    assert "logits → layer.0" in text and "pass → FAIL" in text


def test_a_stage_only_one_report_has_is_a_move():
    old = _frame(_case("a"))
    new_verdict = _case("a")
    extra = _check("a", "decode.1", 0.0)
    new = _frame(Verdict(**{**new_verdict.__dict__, "checks": (*new_verdict.checks, extra)}))
    (move,) = diff_frames(old, new).moves
    assert (move.stage, move.old, move.new, move.old_passed) == ("decode.1", None, 0.0, None)


def test_version_commit_and_checkpoint_changes():
    old = _frame(_case("a"), _case("b"), commit="abc123")
    new_cases = (_case("a", checkpoint="bbbb"), _case("b"))
    new = _frame(*new_cases, commit="def456", **{"version_mlx": "0.33.0"})
    # the worker's per-case versions follow the run's
    new.loc[:, "version_mlx"] = "0.33.0"
    diff = diff_frames(old, new)
    found = {(v.name, v.old, v.new, v.cases) for v in diff.versions}
    assert found == {
        ("commit", "abc123", "def456", ()),
        ("mlx", "0.32.4", "0.33.0", ()),  # per-case version_mlx: the same change, not repeated
        ("checkpoint_hash", "aaaa", "bbbb", ("a",)),
    }
    assert set(_kinds(diff).values()) == {"same"} and diff.exit_code == 0
    text = format_text(diff)
    assert "versions, commit and checkpoints that changed" in text
    assert re.search(r"commit\s+abc123\s+def456\s+run", text)
    md = format_markdown(diff)
    assert "| mlx | 0.32.4 | 0.33.0 | run |" in md and "| checkpoint_hash | aaaa | bbbb | a |" in md


def test_cli_exit_codes_and_formats(tmp_path, capsys):
    old = _write(_frame(_case("a"), _case("b")), tmp_path / "old")
    new = _write(_frame(_case("a", Status.FAIL, logits=3.0), _case("b")), tmp_path / "new")
    assert main(["diff", str(old), str(old / "parity.parquet")]) == 0
    assert "no change" in capsys.readouterr().out
    assert main(["diff", str(old), str(new)]) == 1
    assert "REGRESSION" in capsys.readouterr().out
    assert main(["diff", str(new), str(old), "--format", "md"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("## mlx-parity diff") and "| a | fixed | fail | pass |" in out
    (tmp_path / "junk.parquet").write_text("not parquet")
    for bad in (tmp_path / "missing", tmp_path / "junk.parquet", tmp_path):
        assert main(["diff", str(bad), str(new)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1


def test_unreadable_reports_name_the_file(tmp_path):
    other = tmp_path / "other.parquet"
    pd.DataFrame({"x": [1]}).to_parquet(other)
    with pytest.raises(ReportError, match="column 'case_id' missing"):
        read_report(other)
    with pytest.raises(ReportError, match="no parity.parquet"):
        diff_reports(tmp_path, tmp_path)


def test_markdown_is_inert_and_bounded():
    evil = "<img src=x onerror=alert(1)> @team [x](http://e.example) | `code`"
    cases = [_case(f"{evil} {i}", layer=float(i)) for i in range(400)]
    worse = [_case(f"{evil} {i}", Status.FAIL, layer=float(i) + 1) for i in range(400)]
    diff = diff_frames(_frame(*cases), _frame(*worse))
    md = format_markdown(diff, max_rows=0)
    assert len(md) < 65_000 and "**REGRESSION: 400 case(s)" in md
    assert re.search(r"_\d+ more row\(s\) left out", md)
    for line in md.splitlines():
        if re.fullmatch(r"<details><summary>[\w :()]+</summary>|</details>", line):
            continue
        assert "<" not in line and "](" not in line and "://" not in line, line
        assert not re.search(r"[@#]\w", line), line
