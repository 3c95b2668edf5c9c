"""What `mlx-parity run` prints while it works. Off a terminal (a CI log): one plain line per
case, pytest-like, never wrapped, with progress and elapsed time; errors as soon as they
happen. At a terminal wide enough: a live status line and the summary table at the end."""

from __future__ import annotations

import shutil
import sys
import time
from typing import Any, TextIO

from .explain import explain
from .records import Status, Verdict

STATUS_STYLE = {"pass": "green", "fail": "bold red", "error": "red", "skip": "yellow"}
TABLE_MIN_COLUMNS = 100


def _clean(text: str) -> str:
    """One line, no terminal escape sequences (reasons can come from add-ons), and no
    invisible or reordering characters (bidi controls, zero-width characters): `?`."""
    from .case_yaml import CONTROL, INVISIBLE

    text = text.replace("\n", " ").replace("\r", " ").replace("\t", " ")
    return INVISIBLE.sub("?", CONTROL.sub("?", text))


def _number(value: float) -> str:
    return f"{value:.3g}"


def check_summary(verdict: Verdict) -> str:
    """The check that decided the verdict: the first gating failure, else the check
    closest to failing."""
    worst = verdict.worst_check()
    if worst is None:
        return ""
    text = f"{worst.stage} {worst.metric}={_number(worst.value)}"
    if worst.passed and worst.value > worst.threshold:  # forgiven by the noise envelope
        text += f" (> {_number(worst.threshold)}, within the noise envelope)"
    elif worst.threshold != 0 or not worst.passed:
        text += f" ({'<=' if worst.passed else '>'} {_number(worst.threshold)})"
    return text


def verdict_line(verdict: Verdict) -> str:
    """`PASS gemma4_text  logits max_abs_diff=0`; where the paths differ, the first
    difference and the first failure follow (see `explain`)."""
    parts = [verdict.status.value.upper(), verdict.case_id]
    summary = check_summary(verdict)
    if verdict.status is Status.PASS and summary:
        parts.append(f" {summary}")
    line = " ".join(parts)
    story = explain(verdict)
    if story and (verdict.status is Status.FAIL or verdict.first_difference):
        line += f"  {story}" if verdict.status is Status.FAIL else f"; {story}"
    if verdict.reason:
        line += f"  {verdict.reason}"
    return _clean(line)


class Progress:
    """Observer of a run: prints one line per case (plain) or updates a live status."""

    def __init__(self, stream: TextIO | None = None, interactive: bool | None = None) -> None:
        self.stream = stream or sys.stdout
        is_tty = self.stream.isatty() if interactive is None else interactive
        self.interactive = is_tty and shutil.get_terminal_size().columns >= TABLE_MIN_COLUMNS
        self.started = time.monotonic()
        self.total = 0
        self.done: set[str] = set()
        self.status: Any = None

    def _prefix(self) -> str:
        return f"[{len(self.done)}/{self.total} {time.monotonic() - self.started:.1f}s]"

    def _print(self, line: str) -> None:
        if self.status is not None:
            self.status.console.print(line, markup=False, highlight=False, soft_wrap=True)
        else:
            print(line, file=self.stream, flush=True)

    def __call__(self, event: str, payload: Any) -> None:
        if event == "planned":
            self.total = int(payload)
        elif event == "verdict":
            if payload.case_id in self.done:
                return  # its error was printed when it happened
            self.done.add(payload.case_id)
            self._print(f"{self._prefix()} {verdict_line(payload)}")
        elif event == "error":
            case_id, _, reason = str(payload).partition(": ")
            if case_id not in self.done:
                self.done.add(case_id)
                self._print(f"{self._prefix()} ERROR {_clean(case_id)} {_clean(reason)}")
        elif event == "interrupted":
            self._print(f"{self._prefix()} interrupted: {_clean(str(payload))}")
        elif self.status is not None:
            self.status.update(_clean(f"{self._prefix()} {event}: {payload}"))


def print_table(verdicts: tuple[Verdict, ...]) -> None:
    """The summary table, for a terminal (callers check that it is wide enough)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"mlx-parity: {len(verdicts)} case(s)")
    table.add_column("case", no_wrap=True)
    for column in ("status", "first difference", "first failure", "reason"):
        table.add_column(column, overflow="fold")
    for v in verdicts:
        status = f"[{STATUS_STYLE[v.status.value]}]{v.status.value}[/]"
        table.add_row(
            escape(_clean(v.case_id)),
            status,
            escape(f"{v.first_difference or ''} {v.first_difference_detail}".strip()),
            escape(f"{v.first_failure or ''} {v.first_failure_detail}".strip()),
            escape(_clean(v.reason)),
        )
    Console().print(table)
