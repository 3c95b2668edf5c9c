"""The Markdown summary posted as a pull-request comment. Every text that comes from a case
file, a checkpoint or an add-on's error goes through `md_text` (or `md_code`), so an
untrusted pull request cannot inject HTML, links, images or @mentions, or break the table."""

from __future__ import annotations

import math
import re
from collections import Counter

from .case_yaml import CONTROL, INVISIBLE
from .explain import explain, schedule_note
from .records import Verdict
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
    text = INVISIBLE.sub("\ufffd", CONTROL.sub(" ", ANSI.sub("", text))).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = _PUNCTUATION.sub(r"\\\1", text)
    text = _escape_underscores(text)
    text = text.replace("@", "@" + ZWSP).replace("#", "#" + ZWSP)  # mentions, #123 links
    text = _SCHEME.sub(":" + ZWSP + "//", text)
    return _WWW.sub(lambda m: m.group(1) + ZWSP + ".", text)


def _escape_underscores(text: str) -> str:
    out = []
    for index, char in enumerate(text):
        if char == "_":
            before = text[index - 1] if index else " "
            after = text[index + 1] if index + 1 < len(text) else " "
            if not (before.isalnum() and after.isalnum()):
                out.append("\\")
        out.append(char)
    return "".join(out)


def md_code(value: object) -> str:
    """A code span for names made of letters, digits, `_`, `.` and `-` (stage and metric
    names); anything else is escaped as plain text (no code span can be broken out of)."""
    text = "" if value is None else str(value)
    return f"`{text}`" if _SAFE_CODE.fullmatch(text) else md_text(text)


def _fmt(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.3g}"


def markdown(run: RunResult) -> str:
    counts = Counter(v.status.value for v in run.verdicts)
    summary = ", ".join(f"{n} {s}" for s, n in counts.most_common()) or "no cases"
    versions = " · ".join(
        f"{name} {md_text(run.provenance.get('version_' + name, '?'))}"
        for name in ("mlx", "mlx-lm", "mlx-vlm")
    )
    lines = [
        "## mlx-parity",
        "",
        f"**{_headline(run)}**: {summary}  ",
        f"{versions} · commit {md_text(run.provenance.get('commit', '?'))}",
        "",
        "| case | status | first difference (even within tolerance) | first failure | note |",
        "|---|---|---|---|---|",
    ]
    for v in run.verdicts:
        difference = f"{v.first_difference or ''} {v.first_difference_detail}".strip()
        failure = f"{v.first_failure or ''} {v.first_failure_detail}".strip()
        note = "; ".join(t for t in (v.reason, schedule_note(v)) if t)
        lines.append(
            f"| {md_text(v.case_id)} | {v.status.value} | {md_text(difference, 160)} "
            f"| {md_text(failure, 160)} | {md_text(note)} |"
        )
    lines += _divergence_section(run)
    return "\n".join(lines) + "\n"


def _headline(run: RunResult) -> str:
    if not run.complete:
        return "INCOMPLETE (interrupted, or not finished yet; only finished cases are listed)"
    if run.exit_code == EXIT_NOTHING_COMPARED:
        return "NOTHING COMPARED (every case skipped or deselected)"
    return "PASS" if run.exit_code == 0 else "FAIL"


def _check_line(check) -> str:
    kind = "gating" if check.gating else "diagnostic"
    detail = f": {md_text(check.detail)}" if check.detail else ""
    return (
        f"  - {md_text(check.check)} {md_code(check.metric)} = {_fmt(check.value)} "
        f"(threshold {_fmt(check.threshold)}, {kind}){detail}"
    )


def _divergence_section(run: RunResult) -> list[str]:
    """For each case whose paths differ: the sentence (first difference, first failure),
    the checks that failed at the first failing (or diverging) stage, and both rendered
    prompts when the ids differ."""
    diverged: list[Verdict] = [
        v for v in run.verdicts if v.first_difference or v.first_divergence
    ]
    if not diverged:
        return []
    lines = ["", "### Where parity breaks", ""]
    for v in diverged:
        stage = v.first_failure or v.first_divergence
        failed = [c for c in v.checks if c.stage == stage and not c.passed]
        lines.append(f"- **{md_text(v.case_id)}** ({v.status.value}): {md_text(explain(v), 600)}")
        lines += [_check_line(c) for c in failed]
        if v.prompt_texts:
            lines.append("  <details><summary>rendered prompts</summary>")
            lines.append("")
            for label, text in zip((v.reference, v.candidate), v.prompt_texts, strict=False):
                lines.append(f"  - {md_text(label)}: {md_text(text, 1200)}")
            lines.append("  </details>")
    return lines
