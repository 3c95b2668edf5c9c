"""Figures for the report: per-layer divergence and per-image-token embedding error.
Drawn from the report table and the verdict records; nothing is computed here beyond
selecting rows. Figures are built without pyplot (no global state, no backend switch), so
the notebook can display them and concurrent reports can draw them."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from .records import LAYER_PREFIX, Verdict

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LAYER_METRICS = ("max_abs_diff", "nmse")
LAST_POSITION = "last_position_"
# Above this many cases, one legend column is not enough.
LEGEND_ROWS = 20


def layer_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (case, layer, metric): the decoder output's value, and whether it was compared
    at the last prompt position only."""
    rows = frame[frame.stage.fillna("").str.startswith(LAYER_PREFIX)].copy()
    rows = rows[~rows.metric.str.startswith("per_layer_input_")]
    rows["layer"] = rows.stage.str.removeprefix(LAYER_PREFIX).astype(int)
    rows["last_position"] = rows.metric.str.startswith(LAST_POSITION)
    rows["metric"] = rows.metric.str.removeprefix(LAST_POSITION)
    rows["pair"] = rows.case_id + " (" + rows.reference + " vs " + rows.candidate + ")"
    rows = rows[rows.metric.isin(LAYER_METRICS)]
    return rows.groupby(["pair", "layer", "metric"], as_index=False).agg(
        value=("value", "max"), last_position=("last_position", "any")
    )


def layer_thresholds(frame: pd.DataFrame, metric: str) -> list[float]:
    """The finite thresholds of the gating checks of `metric` on decoder layers."""
    rows = frame[frame.stage.fillna("").str.startswith(LAYER_PREFIX)]
    rows = rows[rows.metric.fillna("").str.removeprefix(LAST_POSITION) == metric]
    rows = rows[rows.gating.fillna(False).astype(bool)]
    return sorted({float(t) for t in rows.threshold if math.isfinite(t)})


def _label(text: str, limit: int = 70) -> str:
    """Literal text for matplotlib: `$` would start mathtext (and bad mathtext raises)."""
    text = " ".join(str(text).split())
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def _floor(values: np.ndarray, thresholds: list[float]) -> float:
    """The decade below the smallest positive value: where zeros are drawn on a log axis."""
    positive = [v for v in (*values.tolist(), *thresholds) if v > 0 and math.isfinite(v)]
    if not positive:
        return 1e-9
    return 10.0 ** (math.floor(math.log10(min(positive))) - 1)


def layer_figure(frame: pd.DataFrame) -> Figure | None:
    """Per-layer divergence, one log-scale panel per metric: zeros (bit-exact) clipped to
    a floor line, gating thresholds as dashed lines, last-position layers hollow, and the
    legend outside the axes."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    table = layer_table(frame)
    if table.empty:
        return None
    pairs = sorted(table.pair.unique())
    # Ten colours, then the next marker shape: every case stays distinguishable.
    styles = [(f"C{i % 10}", "osD^v"[i // 10 % 5]) for i in range(len(pairs))]
    fig = Figure(figsize=(12, 4.5))
    axes = fig.subplots(1, len(LAYER_METRICS), squeeze=False)[0]
    notes: dict[str, Line2D] = {}
    for ax, metric in zip(axes, LAYER_METRICS, strict=True):
        rows = table[table.metric == metric]
        thresholds = layer_thresholds(frame, metric)
        floor = _floor(rows.value.to_numpy(dtype=float), thresholds)
        for pair, (color, marker) in zip(pairs, styles, strict=True):
            mine = rows[rows.pair == pair].sort_values("layer")
            y = np.maximum(mine.value.to_numpy(dtype=float), floor)
            last = mine.last_position.to_numpy(dtype=bool)
            ax.plot(mine.layer, y, "-", color=color, linewidth=1.2)
            ax.plot(mine.layer[~last], y[~last], marker, color=color)
            ax.plot(mine.layer[last], y[last], marker, color=color, markerfacecolor="none")
        ax.axhline(floor, color="0.5", linestyle=":", linewidth=1)
        notes["floor"] = Line2D(
            [], [], color="0.5", linestyle=":", label="0 (bit-exact), drawn at the floor"
        )
        for threshold in thresholds:
            ax.axhline(
                max(threshold, floor),
                color="red",
                linestyle="--",
                linewidth=1,
                label=f"gate: {metric} <= {threshold:g}",
            )
            notes["gate"] = Line2D(
                [], [], color="red", linestyle="--", label="gating threshold (fails above)"
            )
        if (rows.last_position).any():
            notes["last"] = Line2D(
                [],
                [],
                color="0.3",
                marker="o",
                markerfacecolor="none",
                linestyle="",
                label="hollow: last position only",
            )
        # Limits before the log scale: an all-bit-exact panel has one y value, which
        # matplotlib cannot autoscale on a log axis (a warning on every bit-exact run).
        values = rows.value.to_numpy(dtype=float)
        top = max([floor, *values[np.isfinite(values)], *thresholds]) * 10
        ax.set_ylim(floor / 2, top)
        ax.set_yscale("log")
        ax.set_xlabel("decoder layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(f"{metric} (log scale)")
        ax.set_title(f"per-layer {metric}")
    handles = [
        Line2D([], [], color=color, marker=marker, label=_label(pair))
        for pair, (color, marker) in zip(pairs, styles, strict=True)
    ]
    handles += list(notes.values())
    fig.legend(
        handles=handles,
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
        ncol=1 + (len(handles) - 1) // LEGEND_ROWS,
        frameon=False,
    )
    fig.tight_layout()
    return fig


def plot_layers(frame: pd.DataFrame, path: Path) -> bool:
    fig = layer_figure(frame)
    if fig is None:
        return False
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return True


def stage_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (metric, case, stage) outside the decoder layers: the largest value."""
    rows = frame.dropna(subset=["metric"])
    rows = rows[~rows.stage.fillna("").str.startswith(LAYER_PREFIX)]
    return rows.groupby(["metric", "case_id", "stage"], as_index=False, sort=False)["value"].max()


def stage_figure(frame: pd.DataFrame, columns: int = 3) -> Figure | None:
    """Value per case and stage, one panel per metric: a panel never mixes units (ulps,
    |diff|, token counts, nats)."""
    from matplotlib.figure import Figure

    table = stage_table(frame)
    if table.empty:
        return None
    metrics = list(dict.fromkeys(table.metric))
    cases = sorted(table.case_id.unique())
    columns = min(columns, len(metrics))
    rows_ = math.ceil(len(metrics) / columns)
    height = max(2.0, 0.3 * len(cases) + 1.2)
    fig = Figure(figsize=(5.0 * columns, height * rows_))
    axes = fig.subplots(rows_, columns, squeeze=False).ravel()
    for ax, metric in zip(axes, metrics, strict=False):
        pivot = table[table.metric == metric].pivot_table(
            index="case_id", columns="stage", values="value", aggfunc="max"
        )
        pivot = pivot.reindex(cases)
        for offset, stage in enumerate(pivot.columns):
            y = np.arange(len(cases)) + offset / (len(pivot.columns) + 1)
            ax.barh(
                y,
                pivot[stage].to_numpy(dtype=float),
                height=0.8 / len(pivot.columns),
                label=_label(stage),
            )
        ax.set_yticks(np.arange(len(cases)), [_label(c, 40) for c in cases], fontsize=7)
        ax.set_xlim(left=0.0)
        ax.set_title(_label(metric), fontsize=9)
        ax.set_xlabel(f"{_label(metric)} (0 = identical)", fontsize=8)
        ax.legend(fontsize=6, title="stage", title_fontsize=6)
    for ax in axes[len(metrics) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return fig


def _image_name(verdict: Verdict, index: int) -> str:
    names = verdict.image_names
    if index < len(names) and names[index]:
        return re.sub(r"[\ud800-\udfff]", "\ufffd", Path(names[index]).name)
    return f"image {index}"


def image_token_table(verdicts: tuple[Verdict, ...]) -> pd.DataFrame:
    rows = [
        {
            "case_id": v.case_id,
            "image": image,
            "image_name": _image_name(v, image),
            "row": r,
            "col": c,
            "error": float(grid[r, c]),
        }
        for v in verdicts
        for image, grid in enumerate(v.image_token_errors)
        for r, c in np.ndindex(grid.shape)
    ]
    return pd.DataFrame(rows, columns=["case_id", "image", "image_name", "row", "col", "error"])


def image_token_figure(verdict: Verdict) -> Figure | None:
    """One heatmap per image, titled by the image's file name, on the token grid the
    comparison laid out (the image as displayed, EXIF orientation applied)."""
    from matplotlib.figure import Figure

    grids = verdict.image_token_errors
    if not grids:
        return None
    fig = Figure(figsize=(max(6.0, 4.5 * len(grids)), 4.0))
    axes = fig.subplots(1, len(grids), squeeze=False)[0]
    for index, (ax, grid) in enumerate(zip(axes, grids, strict=True)):
        image = ax.imshow(grid, cmap="magma", vmin=0.0, vmax=max(float(grid.max()), 1e-12))
        ax.set_title(_label(_image_name(verdict, index), 40), fontsize=9)
        ax.set_xlabel("max |diff| per image token", fontsize=8)
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"{_label(verdict.case_id)}: embedding error per image token", fontsize=10)
    fig.tight_layout()
    return fig


def figure_name(case_id: str) -> str:
    """A file name for a case's heatmap that stays inside the figures directory."""
    return "image_tokens." + re.sub(r"[^A-Za-z0-9_.\-]", "_", case_id).strip(".") + ".png"


def plot_image_tokens(verdict: Verdict, path: Path) -> bool:
    fig = image_token_figure(verdict)
    if fig is None:
        return False
    fig.savefig(path, dpi=110)
    return True
