"""Figures for the report: per-layer divergence and per-image-token embedding error.
Drawn from the report table and the verdict records; nothing is computed here beyond
selecting rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .records import LAYER_PREFIX, Verdict

LAYER_METRICS = ("max_abs_diff", "nmse")


def layer_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (case, layer, metric): the decoder output's value (full rows or last position)."""
    rows = frame[frame.stage.fillna("").str.startswith(LAYER_PREFIX)].copy()
    rows = rows[~rows.metric.str.startswith("per_layer_input_")]
    rows["layer"] = rows.stage.str.removeprefix(LAYER_PREFIX).astype(int)
    rows["metric"] = rows.metric.str.removeprefix("last_position_")
    rows["pair"] = rows.case_id + " (" + rows.reference + " vs " + rows.candidate + ")"
    rows = rows[rows.metric.isin(LAYER_METRICS)]
    return rows.groupby(["pair", "layer", "metric"], as_index=False)["value"].max()


def plot_layers(frame: pd.DataFrame, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    table = layer_table(frame)
    if table.empty:
        return False
    fig, axes = plt.subplots(1, len(LAYER_METRICS), figsize=(12, 4.5), squeeze=False)
    for ax, metric in zip(axes[0], LAYER_METRICS, strict=True):
        for pair, rows in table[table.metric == metric].groupby("pair"):
            ax.plot(rows.layer, rows.value, marker="o", label=pair)
        ax.set_yscale("symlog", linthresh=1e-6)
        ax.set_xlabel("decoder layer")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(f"per-layer {metric} (0 = bit-exact)")
    axes[0][0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def image_token_table(verdicts: tuple[Verdict, ...]) -> pd.DataFrame:
    rows = [
        {"case_id": v.case_id, "image": image, "row": r, "col": c, "error": float(grid[r, c])}
        for v in verdicts
        for image, grid in enumerate(v.image_token_errors)
        for r, c in np.ndindex(grid.shape)
    ]
    return pd.DataFrame(rows, columns=["case_id", "image", "row", "col", "error"])


def plot_image_tokens(verdict: Verdict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = verdict.image_token_errors
    if not grids:
        return False
    fig, axes = plt.subplots(
        1, len(grids), figsize=(max(6.0, 4.5 * len(grids)), 4.0), squeeze=False
    )
    for index, (ax, grid) in enumerate(zip(axes[0], grids, strict=True)):
        image = ax.imshow(grid, cmap="magma", vmin=0.0, vmax=max(float(grid.max()), 1e-12))
        ax.set_title(f"image {index}: max |diff| per token")
        fig.colorbar(image, ax=ax, shrink=0.8)
    fig.suptitle(f"{verdict.case_id}: embedding error per image token", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
