"""Format a RunResult: one long-form table (a row per case, stage and metric), written as
parquet, CSV, a Markdown summary for pull-request comments (report_md), and JUnit XML
(report_junit), into a staged directory swapped in whole (report_files). Formats only;
every number comes from the records."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import pandas as pd

from . import plots, plots_steps, three_way
from .explain import explain
from .records import Verdict
from .report_files import atomic_write, check_report_dir, staged_dir
from .report_junit import junit_xml
from .report_md import markdown, md_code, md_text
from .runner import RunResult

__all__ = [
    "COLUMNS",
    "check_report_dir",
    "junit_xml",
    "markdown",
    "md_code",
    "md_text",
    "to_frame",
    "write_reports",
]

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
        "first_difference": verdict.first_difference,
        "first_difference_detail": verdict.first_difference_detail,
        "first_failure": verdict.first_failure,
        "first_failure_detail": verdict.first_failure_detail,
        "explanation": explain(verdict),
        "reason": verdict.reason,
        "reference_prompt": verdict.prompt_texts[0] if verdict.prompt_texts else None,
        "candidate_prompt": verdict.prompt_texts[1] if verdict.prompt_texts else None,
        "reference": verdict.reference,
        "candidate": verdict.candidate,
        **{f"run_{k}": v for k, v in run.provenance.items()},
        "run_complete": run.complete,
        **dict(verdict.provenance),
        "run_started": run.started,
        "architecture": verdict.architecture,
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


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _storable(value: object) -> object:
    """Text as UTF-8 can store it: a lone surrogate (an undecodable byte in an add-on's
    error message) becomes U+FFFD instead of failing the whole report."""
    return _SURROGATE.sub("\ufffd", value) if isinstance(value, str) else value


def to_frame(run: RunResult) -> pd.DataFrame:
    rows = [
        {key: _storable(value) for key, value in row.items()}
        for v in run.verdicts
        for row in _rows(v, run)
    ]
    frame = pd.DataFrame(rows)
    for column in frame.columns:  # a value from a checkpoint may be any JSON type
        if frame[column].dtype == object:
            frame[column] = frame[column].map(
                lambda v: v if v is None or isinstance(v, (str, bool)) else str(v)
            )
    if frame.empty:
        return pd.DataFrame(columns=COLUMNS)
    extra = sorted(c for c in frame.columns if c not in COLUMNS)
    frame = frame[COLUMNS + extra]
    for column in ("value", "threshold", "margin", "required"):
        frame[column] = frame[column].astype("float64")
    frame["passed"] = frame["passed"].astype("boolean")
    frame["gating"] = frame["gating"].astype("boolean")
    return frame


def _inside(path: Path, directory: Path) -> Path | None:
    """`path` relative to `directory` when it lies inside it, else None."""
    try:
        return path.absolute().relative_to(directory.absolute())
    except ValueError:
        return None


def _write_figures(
    run: RunResult, frame: pd.DataFrame, figure_dir: Path, figures: str
) -> dict[str, Path]:
    """Figures of the diverging cases ("auto"; a plot of all-zero differences says nothing
    the table does not, and costs ~1 s) or of every case ("always")."""
    chosen = [v for v in run.verdicts if figures == "always" or v.first_divergence]
    if figures == "never" or not chosen:
        return {}
    drawn = {}
    ids = {v.case_id for v in chosen}
    if plots.plot_layers(frame[frame.case_id.isin(ids)], figure_dir / "layers.png"):
        drawn["layers_figure"] = Path("figures") / "layers.png"
    if plots_steps.plot_steps(frame[frame.case_id.isin(ids)], figure_dir / "steps.png"):
        drawn["steps_figure"] = Path("figures") / "steps.png"
    for v in chosen:
        plots.plot_image_tokens(v, figure_dir / plots.figure_name(v.case_id))
    return drawn


def write_reports(
    run: RunResult,
    out_dir: Path,
    junit: Path | None = None,
    figures: Literal["auto", "always", "never"] = "auto",
) -> dict[str, Path]:
    """Write every format into a staging directory beside `out_dir` and swap it in whole
    (tensors kept during this run under `out_dir/captures` are carried over). A `junit`
    path outside `out_dir` is written after the swap, atomically."""
    out_dir = Path(out_dir)
    frame = to_frame(run)
    names = {
        "parquet": Path("parity.parquet"),
        "csv": Path("parity.csv"),
        "markdown": Path("parity.md"),
        "junit": Path("parity.junit.xml"),
        "image_tokens": Path("image_tokens.parquet"),
    }
    outside_junit = None
    if junit is not None:
        inside = _inside(Path(junit), out_dir)
        if inside is None:
            outside_junit = Path(junit)
        else:
            names["junit"] = inside
    with staged_dir(out_dir, run.started) as staging:
        frame.to_parquet(staging / names["parquet"], index=False)
        plots.image_token_table(run.verdicts).to_parquet(
            staging / names["image_tokens"], index=False
        )
        frame.to_csv(staging / names["csv"], index=False)
        (staging / names["markdown"]).write_text(markdown(run), encoding="utf-8")
        three_way_md = three_way.markdown(run.verdicts)
        if three_way_md:  # cases with a third path: the per-stage picture of every pair
            names["three_way"] = Path("three_way.md")
            (staging / names["three_way"]).write_text(three_way_md, encoding="utf-8")
        if outside_junit is None:
            (staging / names["junit"]).parent.mkdir(parents=True, exist_ok=True)
            (staging / names["junit"]).write_text(junit_xml(run), encoding="utf-8")
        (staging / "figures").mkdir()
        names.update(_write_figures(run, frame, staging / "figures", figures))
    outputs = {key: out_dir / name for key, name in names.items()}
    if outside_junit is not None:
        text = junit_xml(run)
        atomic_write(outside_junit, lambda p: p.write_text(text, encoding="utf-8"))
        outputs["junit"] = outside_junit
    return outputs
