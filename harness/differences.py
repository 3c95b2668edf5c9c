"""Where two captures differ at all, tolerated or not: per stage, the largest difference,
in ulps of the captured dtype, and which prompt rows (image or text tokens) it touches.
The verdict names the first stage that differs and the first that fails; a developer needs
both ("embeddings differ by 1 ulp on 63 image rows (within tolerance); first failure:
logits top-5 order")."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .checks import ulp
from .records import Capture


@dataclass(frozen=True)
class StageDifference:
    stage: str
    max_abs: float  # nan when shapes differ
    max_ulps: float  # in the reference dtype's ulps at the reference value
    rows_differing: int
    rows: int
    image_rows_differing: int
    detail: str


def _row_kinds(ids: np.ndarray | None, image_token_id: int | None, rows: int) -> np.ndarray:
    if ids is None or image_token_id is None or ids.shape[0] != rows:
        return np.zeros(rows, dtype=bool)
    return ids.reshape(-1) == image_token_id


def _where(rows_differing: int, rows: int, image_rows: int, per_row: bool) -> str:
    if not per_row:
        return ""
    text_rows = rows_differing - image_rows
    kinds = []
    if image_rows:
        kinds.append(f"{image_rows} image")
    if text_rows:
        kinds.append(f"{text_rows} text")
    return f" on {' and '.join(kinds)} row(s) of {rows}"


def difference(
    stage: str,
    reference: np.ndarray,
    candidate: np.ndarray,
    dtype: str,
    ids: np.ndarray | None = None,
    image_token_id: int | None = None,
) -> StageDifference | None:
    """None when the two arrays are identical (bit for bit, NaN equal to NaN)."""
    if reference.shape != candidate.shape:
        detail = f"shape {tuple(candidate.shape)} vs reference {tuple(reference.shape)}"
        return StageDifference(stage, float("nan"), float("nan"), 0, 0, 0, detail)
    if reference.dtype.kind in "biu" and candidate.dtype.kind in "biu":
        # Ids and masks compare as they are (a 4k-token mask widened to float64 would take
        # ~0.8 GB); only the differing elements are widened below.
        unequal = reference != candidate
    else:
        unequal = ~((reference == candidate) | (np.isnan(reference) & np.isnan(candidate)))
    if not unequal.any():
        return None
    ref_values = reference[unequal].astype(np.float64)
    diff = np.abs(ref_values - candidate[unequal].astype(np.float64))
    finite = np.isfinite(diff)
    max_abs = float(diff[finite].max()) if finite.any() else float("inf")
    if dtype in ("bfloat16", "float16", "float32") and reference.dtype.kind == "f":
        with np.errstate(divide="ignore", invalid="ignore"):  # NaN/Inf rows: inf ulps
            ratio = np.where(finite, diff / ulp(ref_values, dtype), np.inf)
        max_ulps = float(np.max(ratio))
    else:
        max_ulps = float("nan")
    per_row = reference.ndim >= 2 and reference.shape[0] > 1
    row_unequal = (
        unequal.reshape(reference.shape[0], -1).any(axis=1)
        if per_row
        else unequal.any(keepdims=True)
    )
    rows = int(row_unequal.size)
    kinds = _row_kinds(ids, image_token_id, rows) if per_row else np.zeros(rows, dtype=bool)
    image_rows = int((row_unequal & kinds).sum())
    magnitude = (
        f"{max_ulps:.3g} ulp ({dtype}), max |diff| {max_abs:.3g}"
        if np.isfinite(max_ulps)
        else f"max |diff| {max_abs:.3g}"
    )
    detail = magnitude + _where(int(row_unequal.sum()), rows, image_rows, per_row)
    return StageDifference(
        stage, max_abs, max_ulps, int(row_unequal.sum()), rows, image_rows, detail
    )


def _image_runs(ids: np.ndarray, image_token_id: int | None) -> list[int]:
    """Token count of each contiguous run of image tokens (one run per image)."""
    if image_token_id is None:
        return []
    positions = np.flatnonzero(ids == image_token_id)
    if positions.size == 0:
        return []
    return [len(r) for r in np.split(positions, np.flatnonzero(np.diff(positions) != 1) + 1)]


def _token(capture: Capture, index: int, ids: np.ndarray) -> str:
    text = capture.tokens[index] if index < len(capture.tokens) else ""
    shown = repr(text) if text else "?"
    value = ids[index]
    number = int(value) if np.isfinite(value) else value  # ids can hold NaN in a bad capture
    return f"{shown} (id {number})"


def ids_difference(reference: Capture, candidate: Capture, image_token_id: int | None) -> str:
    """For input_ids that differ: each side's length and tokens per image, and the first
    differing position with both tokens decoded. Empty when the ids are equal."""
    ref = reference.arrays.get("input_ids")
    test = candidate.arrays.get("input_ids")
    if ref is None or test is None:
        return ""
    ref, test = ref.reshape(-1), test.reshape(-1)
    if ref.shape == test.shape and np.array_equal(ref, test):
        return ""
    common = min(ref.size, test.size)
    mismatch = np.flatnonzero(ref[:common] != test[:common])
    first = int(mismatch[0]) if mismatch.size else common
    parts = [
        f"{reference.path} {ref.size} tokens (per image: {_image_runs(ref, image_token_id)}), "
        f"{candidate.path} {test.size} tokens (per image: {_image_runs(test, image_token_id)})"
    ]
    if first < common:
        parts.append(
            f"first difference at position {first}: {reference.path} "
            f"{_token(reference, first, ref)} vs {candidate.path} {_token(candidate, first, test)}"
        )
    else:
        longer, capture, ids = (
            (reference.path, reference, ref)
            if ref.size > test.size
            else (candidate.path, candidate, test)
        )
        parts.append(
            f"equal up to position {first}; {longer} continues with {_token(capture, first, ids)}"
        )
    return "; ".join(parts)


def first_difference(
    stages: Sequence[str],
    reference: Capture,
    candidate: Capture,
    image_token_id: int | None,
    arrays: dict[str, tuple[np.ndarray, np.ndarray, str]],
) -> StageDifference | None:
    """The first of `stages` (in data-flow order) whose arrays differ at all; `arrays`
    maps stage -> (reference, candidate, dtype) as compared (rows aligned)."""
    ids = reference.arrays.get("input_ids")
    for stage in stages:
        if stage not in arrays:
            continue
        ref, test, dtype = arrays[stage]
        found = difference(stage, ref, test, dtype, ids, image_token_id)
        if found is not None:
            if stage == "input_ids":
                detail = ids_difference(reference, candidate, image_token_id)
                found = StageDifference(
                    stage,
                    found.max_abs,
                    found.max_ulps,
                    found.rows_differing,
                    found.rows,
                    0,
                    detail or found.detail,
                )
            return found
    return None
