"""`mlx-parity diff` as text (a terminal, a CI log) or Markdown (a pull-request comment).
Formats only: every number comes from the ReportDiff records. Texts from a report (case
ids, details, version strings) are cleaned of control characters in text and escaped in
Markdown, as parity.md escapes them."""

from __future__ import annotations

import math
from collections import Counter

from .case_yaml import CONTROL, INVISIBLE
from .report_diff import KINDS, CaseChange, MetricMove, ReportDiff, RunInfo, VersionChange
from .report_md import md_code, md_limit, md_text

DEFAULT_MAX_ROWS = 50  # stage moves shown; the rest are counted
_CELL = 60  # widest text cell in the plain table


def headline(diff: ReportDiff) -> str:
    if diff.regressed:
        return f"REGRESSION: {len(diff.regressed)} case(s) went from pass to fail or error"
    if diff.changed:
        return "changed (no case went from pass to fail or error)"
    return "no change"


def _counts(diff: ReportDiff) -> str:
    counts = Counter(c.kind for c in diff.cases)
    return ", ".join(f"{counts[k]} {k}" for k in KINDS if counts[k]) or "no cases"


def _number(value: float | None) -> str:
    if value is None:
        return "-"
    return str(value) if not math.isfinite(value) else f"{value:.4g}"


def _delta(move: MetricMove) -> str:
    return "" if move.delta is None else f"{move.delta:+.3g}"


def _verdict(move: MetricMove) -> str:
    def word(passed: bool | None) -> str:
        return "-" if passed is None else ("pass" if passed else "FAIL")

    old, new = word(move.old_passed), word(move.new_passed)
    return old if old == new else f"{old} → {new}"


def _status(change: CaseChange) -> tuple[str, str]:
    return change.old_status or "-", change.new_status or "-"


def _arrow(old: str | None, new: str | None) -> str:
    return (old or "-") if old == new else f"{old or '-'} → {new or '-'}"


def _run_line(tag: str, run: RunInfo) -> tuple[str, ...]:
    state = "" if run.complete else "INCOMPLETE"
    return (tag, run.label, run.commit, run.started, f"{run.cases} cases", state)


def _version_rows(diff: ReportDiff) -> list[tuple[str, ...]]:
    def where(change: VersionChange) -> str:
        if not change.cases:
            return "run"
        shown = ", ".join(change.cases[:3])
        return shown + (f" (+{len(change.cases) - 3} more)" if len(change.cases) > 3 else "")

    return [(v.name, v.old or "-", v.new or "-", where(v)) for v in diff.versions]


def _case_rows(diff: ReportDiff) -> list[tuple[str, ...]]:
    return [
        (
            c.case_id,
            c.kind,
            *_status(c),
            _arrow(c.old_first_failure, c.new_first_failure),
            _arrow(c.old_first_divergence, c.new_first_divergence),
            str(c.moved or ""),
            c.new_detail,
        )
        for c in diff.cases
        if c.kind != "same"
    ]


def _move_rows(moves: tuple[MetricMove, ...]) -> list[tuple[str, ...]]:
    return [
        (m.case_id, m.stage, m.check, m.metric, _number(m.old), _number(m.new), _delta(m),
         _number(m.threshold), _verdict(m))
        for m in moves
    ]  # fmt: skip


_VERSION_HEAD = ("what", "old", "new", "where")
_CASE_HEAD = (
    "case", "change", "old", "new", "first failure", "first divergence", "moved", "detail"
)  # fmt: skip
_MOVE_HEAD = ("case", "stage", "check", "metric", "old", "new", "change", "threshold", "verdict")


# Plain text ----------------------------------------------------------------------------


def _plain(text: str, width: int = _CELL) -> str:
    text = INVISIBLE.sub("?", CONTROL.sub(" ", text)).strip()
    return text if len(text) <= width else text[: width - 1] + "…"


def _table(head: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    cells = [head, *([_plain(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
    return [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in cells
    ]


def format_text(diff: ReportDiff, max_rows: int = DEFAULT_MAX_ROWS) -> str:
    lines = [f"mlx-parity diff: {headline(diff)}"]
    lines += _table(("", "report", "commit", "started", "cases", ""), [
        _run_line("old", diff.old), _run_line("new", diff.new)
    ])[1:]  # fmt: skip
    lines.append(f"cases: {_counts(diff)}")
    if diff.versions:
        lines += ["", "versions, commit and checkpoints that changed"]
        lines += _table(_VERSION_HEAD, _version_rows(diff))
    rows = _case_rows(diff)
    if rows:
        lines += ["", "cases that changed"] + _table(_CASE_HEAD, rows)
    if diff.moves:
        shown = diff.moves[:max_rows] if max_rows > 0 else diff.moves
        lines += ["", f"stage moves: {len(diff.moves)} gating check(s) changed (old → new)"]
        lines += _table(_MOVE_HEAD, _move_rows(shown))
        if len(shown) < len(diff.moves):
            lines.append(f"  … {len(diff.moves) - len(shown)} more (--max-rows 0 shows all)")
    return "\n".join(lines) + "\n"


# Markdown ------------------------------------------------------------------------------


def _md_table(head: tuple[str, ...], rows: list[tuple[str, ...]], code: set[int]) -> list[str]:
    """Rows escaped; the columns in `code` (stage, check, metric names) as code spans."""

    def cell(index: int, text: str) -> str:
        return md_code(text) if index in code and text else md_text(text, 200)

    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell(i, c) for i, c in enumerate(row)) + " |" for row in rows]
    return lines


def _fit_rows(lines: list[str], budget: int) -> tuple[list[str], int]:
    """Header and separator, then as many rows as fit in `budget` characters."""
    kept, size = lines[:2], sum(len(line) + 1 for line in lines[:2])
    for line in lines[2:]:
        if size + len(line) + 1 > budget:
            break
        kept.append(line)
        size += len(line) + 1
    return kept, len(lines) - len(kept)


def format_markdown(
    diff: ReportDiff, max_rows: int = DEFAULT_MAX_ROWS, limit: int | None = None
) -> str:
    """The diff as a pull-request comment, in fewer than `limit` characters: cases that
    changed first (regressions at the top), then versions, then the stage moves in a
    collapsed table; rows that do not fit are counted. `limit` defaults to parity.md's
    (65,000, or $MLX_PARITY_MD_LIMIT)."""
    limit = md_limit() if limit is None else limit
    old, new = diff.old, diff.new
    parts = [
        "## mlx-parity diff",
        "",
        f"**{headline(diff)}**: {_counts(diff)}  ",
        f"old: {md_text(old.label, 200)} (commit {md_text(old.commit)}, {old.cases} cases"
        f"{', INCOMPLETE' if not old.complete else ''}) · new: {md_text(new.label, 200)} "
        f"(commit {md_text(new.commit)}, {new.cases} cases"
        f"{', INCOMPLETE' if not new.complete else ''})",
    ]
    budget = limit - sum(len(p) + 1 for p in parts) - 600  # room for the section lines
    sections = [
        ("Cases that changed", _md_table(_CASE_HEAD, _case_rows(diff), set()), False),
        ("Versions, commit and checkpoints that changed",
         _md_table(_VERSION_HEAD, _version_rows(diff), set()), False),
    ]  # fmt: skip
    shown = diff.moves[:max_rows] if max_rows > 0 else diff.moves
    sections.append(
        (f"Stage moves: {len(diff.moves)} gating check(s) changed",
         _md_table(_MOVE_HEAD, _move_rows(shown), {1, 2, 3}), True)
    )  # fmt: skip
    for title, lines, collapsed in sections:
        if len(lines) == 2:  # header only: nothing changed there
            continue
        kept, dropped = _fit_rows(lines, budget)
        budget -= sum(len(line) + 1 for line in kept)
        dropped += len(diff.moves) - len(shown) if collapsed else 0
        if collapsed:  # a summary line of our own words only, no report text
            parts += ["", f"<details><summary>{title}</summary>", "", *kept]
        else:
            parts += ["", f"### {title}", "", *kept]
        if dropped:
            parts += ["", f"_{dropped} more row(s) left out; the reports hold every value._"]
        if collapsed:
            parts += ["", "</details>"]
    return "\n".join(parts) + "\n"
