"""The Markdown summary posted as a pull-request comment. Every text that comes from a case
file, a checkpoint or an add-on's error goes through `md_text` (or `md_code`), so an
untrusted pull request cannot inject HTML, links, images or @mentions, or break the table.
It fits one comment (under 65,000 characters, or $MLX_PARITY_MD_LIMIT) whatever the number
of cases: passing rows are cut first, failing cases are always named."""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .case_yaml import CONTROL, INVISIBLE
from .explain import explain, schedule_note
from .records import CheckResult, Status, Verdict
from .report_junit import ANSI
from .runner import EXIT_NOTHING_COMPARED, RunResult

# A note longer than this is cut in the comment (the full text stays in parity.parquet).
MAX_TEXT = 400
ZWSP = "\u200b"  # zero-width space: breaks mentions, references and autolinks; invisible

# Punctuation that can open or close Markdown/GFM inline syntax anywhere in a line:
# emphasis, strikethrough, code spans, links and images, table cells, escapes, GitHub
# math ($) and references (#). (Line-start syntax such as `-` or `1.` cannot occur: every
# text is placed after a table pipe or a list marker.)
_PUNCTUATION = re.compile(r"([\\`*\[\]()|~!#$])")
# GFM autolinks: scheme://..., www.host
_SCHEME = re.compile(r"://")
_WWW = re.compile(r"(?i)\b(www)\.")
_SAFE_CODE = re.compile(r"[A-Za-z0-9_.\-]+")


def md_text(value: object, limit: int = MAX_TEXT) -> str:
    """`value` as literal text on one Markdown line, safe inside a table cell.

    HTML-escape & < >, backslash-escape Markdown punctuation and backticks, escape `_`
    where it could start or end emphasis (intraword underscores stay readable: GFM ignores
    them), break @mentions, #references and autolinks with a zero-width space, turn
    newlines and other control characters into spaces, and invisible or reordering
    characters (bidi controls, zero-width characters, lone surrogates) into U+FFFD: a
    comment shows what the text holds. That runs first, so the zero-width spaces inserted
    here are the only ones left."""
    text = "" if value is None else str(value)
    # Cleaning never lengthens a text: clean only what can be shown (a 1 MB error message
    # costs what a short one does).
    shown = text[: 2 * limit + 256]
    text, cut = shown, len(shown) < len(text)
    text = INVISIBLE.sub("\ufffd", CONTROL.sub(" ", ANSI.sub("", text))).strip()
    if cut or len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _PUNCTUATION.sub(r"\\\1", text)
    text = _escape_underscores(text)
    text = text.replace("@", "@" + ZWSP).replace("#", "#" + ZWSP)  # mentions, #123 links
    text = _SCHEME.sub(":" + ZWSP + "//", text)
    return _WWW.sub(lambda m: m.group(1) + ZWSP + ".", text)


# An underscore not between two letters or digits (`[^\W_]` is str.isalnum in `re`).
_EDGE_UNDERSCORE = re.compile(r"(?<![^\W_])_|_(?![^\W_])")


def _escape_underscores(text: str) -> str:
    return _EDGE_UNDERSCORE.sub(r"\\_", text) if "_" in text else text


def md_code(value: object) -> str:
    """A code span for names made of letters, digits, `_`, `.` and `-` (stage and metric
    names); anything else is escaped as plain text (no code span can be broken out of)."""
    text = "" if value is None else str(value)
    return f"`{text}`" if _SAFE_CODE.fullmatch(text) else md_text(text)


def _fmt(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.3g}"


# GitHub refuses a comment over 65,536 characters; the summary stays below this.
MD_LIMIT = 65_000
# A CI job posting several reports in one comment gives each a share of it.
LIMIT_VARIABLE = "MLX_PARITY_MD_LIMIT"
_SMALLEST = 2_000


def md_limit() -> int:
    """$MLX_PARITY_MD_LIMIT clamped to [2000, 65000], or 65000 when unset or not a number
    (the run has finished when the summary is written: a typo must not lose the report)."""
    try:
        return min(max(int(os.environ.get(LIMIT_VARIABLE, MD_LIMIT)), _SMALLEST), MD_LIMIT)
    except ValueError:
        return MD_LIMIT


def markdown(run: RunResult, limit: int | None = None) -> str:
    """The pull-request comment: the status line, where parity breaks (failing cases
    first in importance), and every case in a collapsed table, in fewer than `limit`
    characters. What does not fit goes in this order: passing rows, passing cases'
    within-tolerance differences, then the failing cases' details (shortened step by step,
    down to their names); each cut says how many were left out. parity.parquet and
    parity.csv always hold everything. `limit` defaults to `md_limit()`."""
    limit = md_limit() if limit is None else limit
    head = _head(run)
    for detail in _LEVELS:
        text = _fit(run, head, detail, limit)
        if text is not None:
            return text
    return _names_only(run, head, limit)


@dataclass(frozen=True)
class _Detail:
    """How much of one case the comment shows (numbers are characters, before escaping)."""

    explain: int  # the sentence; 0: name and status only
    checks: int  # failed checks listed under a case
    check_text: int
    prompts: int  # each rendered prompt; 0: left out
    cell: int  # the table's first difference / first failure cells
    note: int
    table: bool = True


_LEVELS = (
    _Detail(600, 1_000, MAX_TEXT, 1200, 160, MAX_TEXT),
    _Detail(300, 3, 160, 300, 80, 160),
    _Detail(120, 1, 80, 0, 40, 80),
    _Detail(0, 0, 0, 0, 0, 0, table=False),
)
# Room kept for the lines that say what was left out.
_NOTES = 600
_SOURCES = "every case, check and value is in parity.parquet and parity.csv"


def _failing(v: Verdict, run: RunResult) -> bool:
    return v.status in (Status.FAIL, Status.ERROR) or (run.strict and v.status is Status.SKIP)


def _differs(v: Verdict) -> bool:
    return bool(v.first_difference or v.first_divergence)


def _head(run: RunResult) -> str:
    counts = Counter(v.status.value for v in run.verdicts)
    summary = ", ".join(f"{n} {s}" for s, n in counts.most_common()) or "no cases"
    versions = " · ".join(
        f"{name} {md_text(run.provenance.get('version_' + name, '?'))}"
        for name in ("mlx", "mlx-lm", "mlx-vlm")
    )
    commit = md_text(run.provenance.get("commit", "?"))
    return f"## mlx-parity\n\n**{_headline(run)}**: {summary}  \n{versions} · commit {commit}\n"


def _headline(run: RunResult) -> str:
    if not run.complete:
        return "INCOMPLETE (interrupted, or not finished yet; only finished cases are listed)"
    if run.exit_code == EXIT_NOTHING_COMPARED:
        return "NOTHING COMPARED (every case skipped or deselected)"
    return "PASS" if run.exit_code == 0 else "FAIL"


_TABLE_HEAD = (
    "| case | status | first difference (even within tolerance) | first failure | note |\n"
    "|---|---|---|---|---|\n"
)


def _row(v: Verdict, d: _Detail) -> str:
    difference = f"{v.first_difference or ''} {v.first_difference_detail}".strip()
    failure = f"{v.first_failure or ''} {v.first_failure_detail}".strip()
    note = "; ".join(t for t in (v.reason, schedule_note(v)) if t)
    return (
        f"| {md_text(v.case_id)} | {v.status.value} | {md_text(difference, d.cell)} "
        f"| {md_text(failure, d.cell)} | {md_text(note, d.note)} |\n"
    )


def _check_line(check: CheckResult, limit: int) -> str:
    kind = "gating" if check.gating else "diagnostic"
    detail = f": {md_text(check.detail, limit)}" if check.detail else ""
    return (
        f"  - {md_text(check.check)} {md_code(check.metric)} = {_fmt(check.value)} "
        f"(threshold {_fmt(check.threshold)}, {kind}){detail}\n"
    )


def _entry(v: Verdict, d: _Detail) -> str:
    """One case under "Where parity breaks": the sentence (first difference, first
    failure) or the error, the checks that failed at the first failing (or diverging)
    stage, and both rendered prompts when the ids differ."""
    line = f"- **{md_text(v.case_id)}** ({v.status.value})"
    if not d.explain:
        return line + "\n"
    sentence = explain(v) or v.reason
    lines = [f"{line}: {md_text(sentence, d.explain)}\n" if sentence else line + "\n"]
    stage = v.first_failure or v.first_divergence
    failed = [c for c in v.checks if c.stage == stage and not c.passed]
    lines += [_check_line(c, d.check_text) for c in failed[: d.checks]]
    if len(failed) > d.checks:
        lines.append(f"  - … {len(failed) - d.checks} more failed check(s) at this stage\n")
    if v.prompt_texts and d.prompts:
        lines.append("  <details><summary>rendered prompts</summary>\n\n")
        for label, text in zip((v.reference, v.candidate), v.prompt_texts, strict=False):
            lines.append(f"  - {md_text(label)}: {md_text(text, d.prompts)}\n")
        lines.append("  </details>\n")
    return "".join(lines)


def _fit(run: RunResult, head: str, d: _Detail, limit: int) -> str | None:
    """The comment at detail `d` with as many passing entries and rows as fit, or None
    when the failing cases alone do not fit at this detail."""
    failing = [v for v in run.verdicts if _failing(v, run)]
    # Failing cases first, then passing cases whose paths differ within tolerance.
    listed = failing + [v for v in run.verdicts if _differs(v) and not _failing(v, run)]
    entries: dict[int, str] = {}
    rows: dict[int, str] = {}
    size = len(head) + len(_TABLE_HEAD) + _NOTES
    renders = [(entries, _entry)] + ([(rows, _row)] if d.table else [])
    for into, render in renders:
        for v in failing:
            into[id(v)] = text = render(v, d)
            size += len(text)
            if size >= limit:  # stop rendering as soon as this detail cannot fit
                return None
    # Passing cases' differences first, then passing rows, in run order, while they fit.
    budget = _fill(listed, run, lambda v: _entry(v, d), entries, limit - size)
    if d.table:
        _fill(run.verdicts, run, lambda v: _row(v, d), rows, budget)
    parts = [head]
    if listed:
        parts.append("\n### Where parity breaks\n\n")
        parts += [entries[id(v)] for v in listed if id(v) in entries]
        _left_out(parts, len(listed) - len(entries), "passing case(s) with differences")
    if not d.table:
        parts.append(f"\n_The table of all cases is left out to fit one comment; {_SOURCES}._\n")
        return "".join(parts)
    parts.append(f"\n<details><summary>all {len(run.verdicts)} cases</summary>\n\n")
    parts += [_TABLE_HEAD, *(rows[id(v)] for v in run.verdicts if id(v) in rows)]
    _left_out(parts, len(run.verdicts) - len(rows), "passing or skipped row(s)")
    parts.append("\n</details>\n")
    return "".join(parts)


def _fill(
    verdicts: Iterable[Verdict],
    run: RunResult,
    render: Callable[[Verdict], str],
    into: dict[int, str],
    budget: int,
) -> int:
    """Render the passing `verdicts` into `into` while they fit in `budget`; what is left."""
    for v in verdicts:
        if _failing(v, run):
            continue
        text = render(v)
        if len(text) > budget:
            break
        into[id(v)] = text
        budget -= len(text)
    return budget


def _left_out(parts: list[str], count: int, what: str) -> None:
    if count:
        parts.append(f"\n_{count} {what} left out to fit one comment; {_SOURCES}._\n")


def _names_only(run: RunResult, head: str, limit: int) -> str:
    """Last resort (thousands of failing cases): the failing cases' names while they fit."""
    failing = [v for v in run.verdicts if _failing(v, run)]
    parts, size = [head, "\n### Failing cases\n\n"], len(head) + 40 + _NOTES
    shown = 0
    for v in failing:
        line = f"- **{md_text(v.case_id, 200)}** ({v.status.value})\n"
        if size + len(line) >= limit:
            break
        parts.append(line)
        size += len(line)
        shown += 1
    if shown < len(failing):
        parts.append(f"\n_… and {len(failing) - shown} more failing case(s); {_SOURCES}._\n")
    return "".join(parts)
