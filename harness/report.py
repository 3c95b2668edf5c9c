"""Format a RunResult: one long-form table (a row per case, stage and metric), written as
parquet, CSV, a Markdown summary for pull-request comments, and JUnit XML. Formats only;
every number comes from the records."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Literal
from xml.etree import ElementTree as ET

import pandas as pd

from . import plots
from .records import Verdict
from .runner import RunResult

COLUMNS = [
    "case_id",
    "source",
    "status",
    "first_divergence",
    "reason",
    "reference",
    "candidate",
    "stage",
    "check",
    "metric",
    "value",
    "threshold",
    "margin",
    "required",
    "passed",
    "gating",
    "detail",
]


def _rows(verdict: Verdict, run: RunResult) -> list[dict[str, object]]:
    base = {
        "case_id": verdict.case_id,
        "source": verdict.source,
        "status": verdict.status.value,
        "first_divergence": verdict.first_divergence,
        "reason": verdict.reason,
        "reference": verdict.reference,
        "candidate": verdict.candidate,
        **{f"run_{k}": v for k, v in run.provenance.items()},
        "run_complete": run.complete,
        **dict(verdict.provenance),
        "run_started": run.started,
    }
    if not verdict.checks:
        return [
            {
                **base,
                "stage": None,
                "check": None,
                "metric": None,
                "value": None,
                "threshold": None,
                "margin": None,
                "required": None,
                "passed": None,
                "gating": None,
                "detail": "",
            }
        ]
    return [
        {
            **base,
            "stage": c.stage,
            "check": c.check,
            "metric": c.metric,
            "value": c.value,
            "threshold": c.threshold,
            "margin": c.margin,
            "required": c.required,
            "passed": c.passed,
            "gating": c.gating,
            "detail": c.detail,
        }
        for c in verdict.checks
    ]


def to_frame(run: RunResult) -> pd.DataFrame:
    rows = [row for v in run.verdicts for row in _rows(v, run)]
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    extra = sorted(c for c in frame.columns if c not in COLUMNS)
    frame = frame[COLUMNS + extra]
    for column in ("value", "threshold", "margin", "required"):
        frame[column] = frame[column].astype("float64")
    frame["passed"] = frame["passed"].astype("boolean")
    frame["gating"] = frame["gating"].astype("boolean")
    return frame


def _fmt(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.3g}"


def markdown(run: RunResult) -> str:
    counts = pd.Series([v.status.value for v in run.verdicts]).value_counts()
    summary = ", ".join(f"{n} {s}" for s, n in counts.items()) or "no cases"
    versions = " · ".join(
        f"{name} {run.provenance.get('version_' + name)}" for name in ("mlx", "mlx-lm", "mlx-vlm")
    )
    lines = [
        "## mlx-parity",
        "",
        f"**{_headline(run)}**: {summary}  ",
        f"{versions} · commit {run.provenance.get('commit')}",
        "",
        "| case | status | first divergence | worst check (value / threshold) | note |",
        "|---|---|---|---|---|",
    ]
    for v in run.verdicts:
        worst = v.worst_check()
        worst_text = (
            f"{worst.stage} {worst.metric} {_fmt(worst.value)} / {_fmt(worst.threshold)}"
            if worst
            else ""
        )
        note = v.reason.replace("|", "\\|")
        lines.append(
            f"| {v.case_id} | {v.status.value} | {v.first_divergence or ''} | "
            f"{worst_text} | {note} |"
        )
    lines += _divergence_section(run)
    return "\n".join(lines) + "\n"


def _headline(run: RunResult) -> str:
    if not run.complete:
        return "INCOMPLETE (interrupted; only finished cases are listed)"
    return "PASS" if run.exit_code == 0 else "FAIL"


def _divergence_section(run: RunResult) -> list[str]:
    """For each case with a divergence: the first stage and the checks that failed there."""
    diverged = [v for v in run.verdicts if v.first_divergence]
    if not diverged:
        return []
    lines = ["", "### Where parity breaks", ""]
    for v in diverged:
        first = [c for c in v.checks if c.stage == v.first_divergence and not c.passed]
        lines.append(
            f"- **{v.case_id}** ({v.status.value}): first divergence at `{v.first_divergence}`"
        )
        lines += [
            f"  - {c.check} `{c.metric}` = {_fmt(c.value)} (threshold "
            f"{_fmt(c.threshold)}){': ' + c.detail if c.detail else ''}"
            for c in first
        ]
    return lines


def junit_xml(run: RunResult) -> str:
    suite = ET.Element(
        "testsuite", name="mlx-parity", tests=str(len(run.verdicts)), timestamp=run.started
    )
    for v in run.verdicts:
        case = ET.SubElement(
            suite, "testcase", classname="mlx-parity", name=v.case_id, file=v.source
        )
        failed = [c for c in v.checks if not c.passed]
        if v.status.value == "fail":
            text = "\n".join(
                f"{c.stage} {c.metric}={c.value:g} > {c.threshold:g} {c.detail}" for c in failed
            )
            ET.SubElement(
                case, "failure", message=f"first divergence: {v.first_divergence}"
            ).text = text
        elif v.status.value == "error":
            ET.SubElement(case, "error", message=v.reason)
        elif v.status.value == "skip":
            ET.SubElement(case, "skipped", message=v.reason)
    for status in ("failure", "error", "skipped"):
        suite.set(
            status + "s" if status != "skipped" else "skipped",
            str(len(suite.findall(f"./testcase/{status}"))),
        )
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write beside the target, then rename: readers never see a partial report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_reports(
    run: RunResult,
    out_dir: Path,
    junit: Path | None = None,
    figures: Literal["auto", "always", "never"] = "auto",
) -> dict[str, Path]:
    """Write every format. Figures are drawn for runs where something diverged ("auto"):
    a plot of all-zero differences says nothing the table does not, and costs ~1 s."""
    frame = to_frame(run)
    outputs = {
        "parquet": out_dir / "parity.parquet",
        "csv": out_dir / "parity.csv",
        "markdown": out_dir / "parity.md",
        "junit": junit or out_dir / "parity.junit.xml",
        "image_tokens": out_dir / "image_tokens.parquet",
    }
    tokens = plots.image_token_table(run.verdicts)
    _atomic_write(outputs["parquet"], lambda p: frame.to_parquet(p, index=False))
    _atomic_write(outputs["image_tokens"], lambda p: tokens.to_parquet(p, index=False))
    figure_dir = out_dir / "figures"
    figure_dir.mkdir(parents=True, exist_ok=True)
    for stale in figure_dir.glob("*.png"):
        stale.unlink()
    diverged = any(v.first_divergence for v in run.verdicts)
    if figures == "always" or (figures == "auto" and diverged):
        if plots.plot_layers(frame, figure_dir / "layers.png"):
            outputs["layers_figure"] = figure_dir / "layers.png"
        for v in run.verdicts:
            plots.plot_image_tokens(v, figure_dir / f"image_tokens.{v.case_id}.png")
    _atomic_write(outputs["csv"], lambda p: frame.to_csv(p, index=False))
    _atomic_write(outputs["markdown"], lambda p: p.write_text(markdown(run)))
    _atomic_write(outputs["junit"], lambda p: p.write_text(junit_xml(run)))
    return outputs
