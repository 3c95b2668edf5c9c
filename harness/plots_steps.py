"""Per-step figure: the logit error of the first token and of every decode step, per case,
with each path's prefill schedule in the table beside it. Reads the report table only."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .records import DECODE_PREFIX

if TYPE_CHECKING:
    from matplotlib.figure import Figure

STEP_METRIC = "max_abs_diff"
SCHEDULES = ["reference_prefill_chunks", "candidate_prefill_chunks"]


def step_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (case, step): the logits' max |diff| (step 0 = the first token), and both
    paths' prefill schedules."""
    stage = frame.stage.fillna("")
    rows = frame[(stage.eq("logits") | stage.str.startswith(DECODE_PREFIX))]
    rows = rows[rows.metric.eq(STEP_METRIC)].copy()
    if rows.empty:
        return pd.DataFrame(columns=["case_id", "step", "value", *SCHEDULES])
    rows["step"] = [
        0 if s == "logits" else int(s.removeprefix(DECODE_PREFIX)) for s in rows.stage
    ]
    columns = [c for c in SCHEDULES if c in rows.columns]
    return rows[["case_id", "step", "value", *columns]].sort_values(["case_id", "step"])


def step_figure(frame: pd.DataFrame) -> Figure | None:
    """One line per case: logit max |diff| per step, log scale; exact steps sit on the
    dotted floor line."""
    from matplotlib.figure import Figure

    table = step_table(frame)
    if table.empty or table.step.max() == 0:
        return None
    values = table.value.to_numpy(dtype=float)
    positive = values[values > 0]
    floor = positive.min() / 10 if positive.size else 1e-8
    fig = Figure(figsize=(6.5, 3.5))
    ax = fig.subplots()
    for case_id, rows in table.groupby("case_id", sort=True):
        y = np.maximum(rows.value.to_numpy(dtype=float), floor)
        ax.plot(rows.step, y, marker="o", label=str(case_id)[:40])
    ax.axhline(floor, linestyle=":", color="grey", linewidth=1)
    ax.set_yscale("log")
    ax.set_xticks(sorted(table.step.unique()))
    ax.set_xlabel("step (0 = first token, k = decode step k)")
    ax.set_ylabel("logits max |diff| (floor = 0)")
    ax.legend(fontsize=6, ncol=1 + len(table.case_id.unique()) // 20)
    fig.tight_layout()
    return fig


def plot_steps(frame: pd.DataFrame, path: Path) -> bool:
    fig = step_figure(frame)
    if fig is None:
        return False
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return True
