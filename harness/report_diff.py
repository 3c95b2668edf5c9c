"""Compare two runs' reports (`mlx-parity diff OLD NEW`): which cases changed status, which
gating metrics moved and by how much, and which versions, commit or checkpoints changed
in between. Computed here from the two parity.parquet tables into plain records;
`report_diff_format` turns them into text or Markdown."""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pandas as pd

from .records import stage_rank

REPORT_FILE = "parity.parquet"
EXIT_SAME, EXIT_REGRESSED, EXIT_UNREADABLE = 0, 1, 2

Kind = Literal["regressed", "fixed", "errored", "new", "removed", "changed", "moved", "same"]
# Report order: what a reviewer must look at first.
KINDS: tuple[Kind, ...] = (
    "regressed",
    "errored",
    "fixed",
    "changed",
    "new",
    "removed",
    "moved",
    "same",
)
BAD = ("fail", "error")
# Run-wide columns that are not versions: when the run started, whether it finished.
_RUN_NOT_VERSIONS = ("run_started", "run_complete")
# Per-case columns whose change means the comparison itself changed.
_CASE_COLUMNS = ("checkpoint_hash", "reference", "candidate")


Row = dict[str, object]  # one report row, column -> value


class ReportError(ValueError):
    """A report that cannot be read: one line naming the file and what is wrong."""


@dataclass(frozen=True)
class RunInfo:
    label: str  # the path given on the command line
    commit: str
    started: str
    complete: bool
    cases: int


@dataclass(frozen=True)
class CaseChange:
    case_id: str
    kind: Kind
    old_status: str | None  # None: the case is not in that report
    new_status: str | None
    old_first_failure: str | None = None
    new_first_failure: str | None = None
    old_first_divergence: str | None = None
    new_first_divergence: str | None = None
    new_detail: str = ""  # the new first failure's check, or the new error's reason
    moved: int = 0  # gating metrics whose value or verdict changed


@dataclass(frozen=True)
class MetricMove:
    """One gating check of a case in both reports whose value or verdict changed (or that
    only one report has)."""

    case_id: str
    stage: str
    check: str
    metric: str
    old: float | None
    new: float | None
    old_passed: bool | None
    new_passed: bool | None
    threshold: float | None

    @property
    def delta(self) -> float | None:
        if self.old is None or self.new is None or not _finite(self.old, self.new):
            return None
        return self.new - self.old


@dataclass(frozen=True)
class VersionChange:
    name: str  # "commit", "mlx-lm", "checkpoint_hash", ...
    old: str | None
    new: str | None
    cases: tuple[str, ...] = ()  # () for the run as a whole


@dataclass(frozen=True)
class ReportDiff:
    old: RunInfo
    new: RunInfo
    cases: tuple[CaseChange, ...]  # every case of either report, most important first
    moves: tuple[MetricMove, ...]
    versions: tuple[VersionChange, ...]

    def of_kind(self, *kinds: Kind) -> tuple[CaseChange, ...]:
        return tuple(c for c in self.cases if c.kind in kinds)

    @property
    def regressed(self) -> tuple[CaseChange, ...]:
        return self.of_kind("regressed")

    @property
    def changed(self) -> bool:
        """Any case whose status, first failure or divergence, or gating metrics changed."""
        return any(c.kind != "same" for c in self.cases)

    @property
    def exit_code(self) -> int:
        """1 when a case went from pass to fail or error, else 0."""
        return EXIT_REGRESSED if self.regressed else EXIT_SAME


def read_report(path: Path) -> pd.DataFrame:
    """A report directory's parity.parquet (or the file itself), checked to be one."""
    path = Path(path)
    file = path / REPORT_FILE if path.is_dir() else path
    if not file.is_file():
        what = "no " + REPORT_FILE if path.is_dir() else "no such report file"
        raise ReportError(f"{path}: {what} (give a report directory or its {REPORT_FILE})")
    try:
        frame = pd.read_parquet(file)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise ReportError(f"{file}: not a readable parquet file ({type(exc).__name__})") from None
    for column in ("case_id", "status"):
        if column not in frame.columns:
            raise ReportError(f"{file}: column '{column}' missing: not an mlx-parity report")
    return frame


def diff_reports(old: Path, new: Path) -> ReportDiff:
    return diff_frames(read_report(old), read_report(new), str(old), str(new))


def diff_frames(
    old: pd.DataFrame, new: pd.DataFrame, old_label: str = "old", new_label: str = "new"
) -> ReportDiff:
    old_cases, new_cases = _case_rows(old), _case_rows(new)
    moves = _moves(old, new, sorted(old_cases.keys() & new_cases.keys()))
    moved: dict[str, int] = {}
    for move in moves:
        moved[move.case_id] = moved.get(move.case_id, 0) + 1
    changes = [
        _case_change(case_id, old_cases.get(case_id), new_cases.get(case_id), moved)
        for case_id in sorted(old_cases.keys() | new_cases.keys())
    ]
    changes.sort(key=lambda c: KINDS.index(c.kind))  # stable: ids stay sorted within a kind
    return ReportDiff(
        _run_info(old, old_label, len(old_cases)),
        _run_info(new, new_label, len(new_cases)),
        tuple(changes),
        moves,
        _versions(old, new, old_cases, new_cases),
    )


def _text(value: object) -> str | None:
    """A cell as text; None for missing values (None, NaN, pd.NA)."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return None
    return str(value)


def _finite(*values: float) -> bool:
    return all(math.isfinite(v) for v in values)


def _case_rows(frame: pd.DataFrame) -> dict[str, Row]:
    """The first row of each case: its case-level columns (status, first failure, ...)."""
    firsts = frame.drop_duplicates("case_id", keep="first")
    return {str(row["case_id"]): row for row in firsts.to_dict("records")}


def _case_change(
    case_id: str, old: Row | None, new: Row | None, moved: dict[str, int]
) -> CaseChange:
    old_status = None if old is None else _text(old.get("status"))
    new_status = None if new is None else _text(new.get("status"))
    fields = {
        f"{side}_{name}": None if row is None else _text(row.get(name))
        for side, row in (("old", old), ("new", new))
        for name in ("first_failure", "first_divergence")
    }
    detail = "" if new is None else _text(new.get("first_failure_detail")) or ""
    if new_status == "error":
        detail = _text(new.get("reason")) or detail
    kind = _kind(old_status, new_status)
    if kind == "same" and (
        moved.get(case_id)
        or fields["old_first_failure"] != fields["new_first_failure"]
        or fields["old_first_divergence"] != fields["new_first_divergence"]
    ):
        kind = "moved"
    return CaseChange(
        case_id,
        kind,
        old_status,
        new_status,
        **fields,
        new_detail=detail,
        moved=moved.get(case_id, 0),
    )


def _kind(old: str | None, new: str | None) -> Kind:
    if old is None:
        return "new"
    if new is None:
        return "removed"
    if old == new:
        return "same"
    if old == "pass" and new in BAD:
        return "regressed"
    if old in BAD and new == "pass":
        return "fixed"
    return "errored" if new == "error" else "changed"


def _checks(frame: pd.DataFrame, case_ids: Iterable[str]) -> pd.DataFrame:
    """Check rows of `case_ids`, keyed by (case, stage, check, metric, occurrence)."""
    rows = frame[frame.case_id.isin(list(case_ids)) & frame["stage"].notna()]
    out = pd.DataFrame({column: rows[column].astype(str) for column in ("case_id", "stage")})
    for column in ("check", "metric"):
        out[column] = rows[column].fillna("").astype(str) if column in rows else ""
    for column in ("value", "threshold"):
        out[column] = pd.to_numeric(rows[column], errors="coerce") if column in rows else math.nan
    out["passed"] = rows["passed"].astype("boolean") if "passed" in rows else pd.NA
    out["gating"] = rows["gating"].fillna(True).astype(bool) if "gating" in rows else True
    out["occurrence"] = out.groupby(_KEY[:-1]).cumcount()
    return out


_KEY = ["case_id", "stage", "check", "metric", "occurrence"]


def _number(value: object) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def _flag(value: object) -> bool | None:
    return None if value is None or pd.isna(value) else bool(value)


def _moves(old: pd.DataFrame, new: pd.DataFrame, common: list[str]) -> tuple[MetricMove, ...]:
    """Gating checks (gating in either report) of the cases both reports hold whose value
    changed at all (NaN equals NaN: runs are deterministic, any change is news), whose
    verdict changed, or that only one report has."""
    merged = _checks(old, common).merge(
        _checks(new, common), on=_KEY, how="outer", suffixes=("_old", "_new"), indicator="side"
    )
    gating = merged.gating_old.fillna(False).astype(bool) | merged.gating_new.fillna(False).astype(
        bool
    )
    both_nan = merged.value_old.isna() & merged.value_new.isna()
    same_value = (merged.value_old == merged.value_new) | both_nan
    same_verdict = merged.passed_old.fillna(False).eq(merged.passed_new.fillna(False)) & (
        merged.passed_old.isna() == merged.passed_new.isna()
    )
    moved = merged[gating & ~((merged.side == "both") & same_value & same_verdict)]
    moves = [
        MetricMove(
            row.case_id,
            row.stage,
            row.check,
            row.metric,
            None if row.side == "right_only" else float(row.value_old),  # NaN stays NaN
            None if row.side == "left_only" else float(row.value_new),
            _flag(row.passed_old),
            _flag(row.passed_new),
            _number(row.threshold_new if row.side != "left_only" else row.threshold_old),
        )
        for row in moved.itertuples(index=False)
    ]
    moves.sort(key=lambda m: (m.case_id, stage_rank(m.stage), m.stage, m.check, m.metric))
    return tuple(moves)


def _first(frame: pd.DataFrame, column: str) -> str | None:
    if column not in frame.columns:
        return None
    values = frame[column].dropna()
    return _text(values.iloc[0]) if len(values) else None


def _run_info(frame: pd.DataFrame, label: str, cases: int) -> RunInfo:
    complete = frame["run_complete"].dropna() if "run_complete" in frame.columns else ()
    return RunInfo(
        label,
        _first(frame, "run_commit") or "?",
        _first(frame, "run_started") or "?",
        bool(all(complete)) and cases > 0,
        cases,
    )


def _version_name(column: str) -> str:
    return column.removeprefix("run_").removeprefix("version_")


def _versions(
    old: pd.DataFrame,
    new: pd.DataFrame,
    old_cases: dict[str, Row],
    new_cases: dict[str, Row],
) -> tuple[VersionChange, ...]:
    """Run-wide provenance (`run_*`) that changed, then per-case provenance (`version_*`,
    checkpoint hash, paths) that changed in cases both reports hold; a per-case version
    change equal to the run-wide one is not repeated."""
    changes = []
    columns = sorted((set(old.columns) | set(new.columns)) - set(_RUN_NOT_VERSIONS))
    for column in (c for c in columns if c.startswith("run_")):
        was, now = _first(old, column), _first(new, column)
        if was != now:
            changes.append(VersionChange(_version_name(column), was, now))
    run_wide = {(c.name, c.old, c.new) for c in changes}
    per_case: dict[tuple[str, str | None, str | None], list[str]] = {}
    case_columns = [c for c in columns if c.startswith("version_") or c in _CASE_COLUMNS]
    for case_id in sorted(old_cases.keys() & new_cases.keys()):
        for column in case_columns:
            was, now = _text(old_cases[case_id].get(column)), _text(new_cases[case_id].get(column))
            key = (_version_name(column), was, now)
            if was != now and key not in run_wide:
                per_case.setdefault(key, []).append(case_id)
    changes += [VersionChange(*key, tuple(ids)) for key, ids in per_case.items()]
    return tuple(changes)
