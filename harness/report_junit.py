"""JUnit XML for CI test reporting: one testcase per case, its duration, its architecture
as the class name, and a failure that lists only the gating checks that failed."""

from __future__ import annotations

import math
import re
from xml.etree import ElementTree as ET

from .case_yaml import INVISIBLE
from .explain import explain
from .records import CheckResult, Status, Verdict, stage_rank
from .runner import RunResult

# ANSI escape sequences (colours, cursor moves) in an error message: dropped whole.
ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b[@-Z\\-_]")
# Characters XML 1.0 does not allow (tab, newline and carriage return are allowed).
_XML_ILLEGAL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


# Allowed by XML but invisible or reordering in a CI page (Trojan source): shown as U+FFFD.
_HIDDEN = re.compile(f"{INVISIBLE.pattern}|[\x7f-\x9f\u2028\u2029]")


def xml_text(value: object) -> str:
    """`value` as text an XML 1.0 parser accepts: ANSI sequences and characters XML
    forbids (NUL, ESC, other controls, lone surrogates) removed; invisible or reordering
    characters (bidi controls, zero-width characters, C1 controls) replaced by U+FFFD."""
    text = "" if value is None else str(value)
    return _HIDDEN.sub("\ufffd", _XML_ILLEGAL.sub("", ANSI.sub("", text)))


def _num(value: float) -> str:
    return "nan" if math.isnan(value) else f"{value:.6g}"


def failure_line(check: CheckResult) -> str:
    """One failed gating check, marked as gating so a CI log reader knows it failed the case."""
    detail = f" ({check.detail})" if check.detail else ""
    return (
        f"[gating] {check.stage} {check.check} {check.metric} = {_num(check.value)} "
        f"> threshold {_num(check.threshold)}{detail}"
    )


def _failure_message(verdict: Verdict, failed: list[CheckResult]) -> str:
    if not failed:
        return f"failed, no gating check recorded (first divergence: {verdict.first_divergence})"
    first = min((c.stage for c in failed), key=stage_rank)
    story = explain(verdict)
    return f"{len(failed)} gating check(s) failed, first at {first}" + (
        f"; {story}" if story else ""
    )


def _seconds(value: float) -> float:
    return value if math.isfinite(value) and value > 0 else 0.0


def _testcase(suite: ET.Element, verdict: Verdict) -> None:
    architecture = xml_text(verdict.architecture)
    case = ET.SubElement(
        suite,
        "testcase",
        classname=f"mlx-parity.{architecture}" if architecture else "mlx-parity",
        name=xml_text(verdict.case_id),
        file=xml_text(verdict.source),
        time=f"{_seconds(verdict.duration):.3f}",
    )
    if verdict.status is Status.FAIL:
        failed = [c for c in verdict.checks if c.gating and not c.passed]
        element = ET.SubElement(
            case, "failure", message=xml_text(_failure_message(verdict, failed))
        )
        element.text = xml_text("\n".join(failure_line(c) for c in failed))
    elif verdict.status is Status.ERROR:
        ET.SubElement(case, "error", message=xml_text(verdict.reason)).text = xml_text(
            verdict.reason
        )
    elif verdict.status is Status.SKIP:
        ET.SubElement(case, "skipped", message=xml_text(verdict.reason))


def junit_xml(run: RunResult) -> str:
    suite = ET.Element(
        "testsuite",
        name="mlx-parity",
        tests=str(len(run.verdicts)),
        timestamp=xml_text(run.started),
        time=f"{sum(_seconds(v.duration) for v in run.verdicts):.3f}",
    )
    for verdict in run.verdicts:
        _testcase(suite, verdict)
    if not run.complete:
        # CI must not read a cut-short run as green: it gets an error of its own.
        unfinished = ET.SubElement(suite, "testcase", classname="mlx-parity", name="run")
        ET.SubElement(
            unfinished,
            "error",
            message="the run was interrupted or has not finished; cases missing from this "
            "report did not run",
        )
        suite.set("tests", str(len(run.verdicts) + 1))
    for status, attribute in (("failure", "failures"), ("error", "errors"), ("skipped", "skipped")):
        suite.set(attribute, str(len(suite.findall(f"./testcase/{status}"))))
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)
