"""The per-step figure and table read decode steps off the report table: step 0 is the
first token; the schedules of both paths ride along; no decode steps, no figure."""

from __future__ import annotations

import pandas as pd

from harness.plots_steps import plot_steps, step_figure, step_table


def _frame(decode: bool = True) -> pd.DataFrame:
    rows = []
    for case, values in (("exact", [0.0, 0.0, 0.0]), ("drifts", [0.0, 0.25, 1.5])):
        stages = ["logits", "decode.1", "decode.2"] if decode else ["logits"]
        for stage, value in zip(stages, values, strict=False):
            for metric in ("max_abs_diff", "kl_ref_test"):
                rows.append(
                    {
                        "case_id": case,
                        "stage": stage,
                        "metric": metric,
                        "value": value if metric == "max_abs_diff" else 0.5,
                        "reference_prefill_chunks": "16,5,1",
                        "candidate_prefill_chunks": "22" if case == "drifts" else "16,5,1",
                    }
                )
    rows.append({"case_id": "exact", "stage": "layer.0", "metric": "max_abs_diff", "value": 9.0})
    return pd.DataFrame(rows)


def test_step_table_has_one_row_per_case_and_step_with_schedules():
    table = step_table(_frame())
    assert table.shape[0] == 6 and set(table.step) == {0, 1, 2}
    drifts = table[table.case_id == "drifts"]
    assert drifts.value.tolist() == [0.0, 0.25, 1.5]
    assert drifts.candidate_prefill_chunks.iloc[0] == "22"


def test_figure_drawn_with_decode_steps_and_not_without(tmp_path):
    assert step_figure(_frame()) is not None
    assert plot_steps(_frame(), tmp_path / "steps.png") and (tmp_path / "steps.png").stat().st_size
    assert step_figure(_frame(decode=False)) is None
    empty = pd.DataFrame(columns=["case_id", "stage", "metric", "value"])
    assert not plot_steps(empty, tmp_path / "x.png")
