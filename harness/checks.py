"""Compare functions: small factories, each returning `comparator(reference, test, dtype)`.

A case names a check by its `check:` key; the pydantic spec classes validate parameters
and `.build()` the comparator. Every metric carries the tolerance that *would* have passed.
Shape mismatches and non-finite values are caught once, in `_guarded`, for every check.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field


@dataclass(frozen=True)
class Metric:
    metric: str
    value: float
    threshold: float
    passed: bool
    required: float
    detail: str = ""


Comparator = Callable[[np.ndarray, np.ndarray, str], list[Metric]]

# Explicit mantissa bits and minimum normal exponent per floating dtype.
_FLOAT_FORMATS = {
    "bfloat16": (7, -126),
    "float16": (10, -14),
    "float32": (23, -126),
    "float64": (52, -1022),
}


def ulp(values: np.ndarray, dtype: str) -> np.ndarray:
    """Spacing of `dtype` at each |value| (subnormal spacing near zero)."""
    mantissa, min_exp = _FLOAT_FORMATS.get(dtype, _FLOAT_FORMATS["float32"])
    magnitude = np.abs(values.astype(np.float64))
    with np.errstate(divide="ignore"):
        exponent = np.floor(np.log2(np.where(magnitude > 0, magnitude, 1.0)))
    exponent = np.where(magnitude > 0, np.maximum(exponent, min_exp), min_exp)
    return np.exp2(exponent - mantissa)


def _guarded(comparator: Comparator) -> Comparator:
    """Fail on shape mismatch or any NaN/Inf before the comparator sees the arrays."""

    @functools.wraps(comparator)
    def guarded(reference: np.ndarray, test: np.ndarray, dtype: str) -> list[Metric]:
        if reference.shape != test.shape:
            detail = f"shape {tuple(test.shape)} vs reference {tuple(reference.shape)}"
            return [Metric("shape", 1.0, 0.0, False, float("nan"), detail)]
        bad = sum(
            int(np.size(a) - np.isfinite(a).sum())
            for a in (reference, test)
            if np.issubdtype(a.dtype, np.floating)
        )
        if bad:
            detail = (
                f"non-finite values: reference {_count_nonfinite(reference)}, "
                f"test {_count_nonfinite(test)}"
            )
            return [Metric("non_finite", float(bad), 0.0, False, float("nan"), detail)]
        if reference.size == 0:
            return [Metric("size", 0.0, 0.0, True, 0.0, "empty arrays")]
        return comparator(reference, test, dtype)

    return guarded


def _count_nonfinite(array: np.ndarray) -> int:
    if not np.issubdtype(array.dtype, np.floating):
        return 0
    return int(array.size - np.isfinite(array).sum())


def _first_mismatch(diff: np.ndarray) -> str:
    where = np.argwhere(diff)
    return f"first mismatch at {tuple(int(i) for i in where[0])}" if len(where) else ""


def exact() -> Comparator:
    @_guarded
    def compare(reference: np.ndarray, test: np.ndarray, dtype: str) -> list[Metric]:
        diff = np.abs(reference.astype(np.float64) - test.astype(np.float64))
        value = float(diff.max())
        mismatched = int((diff > 0).sum())
        detail = f"{mismatched} of {diff.size} elements differ; {_first_mismatch(diff > 0)}"
        return [Metric("max_abs_diff", value, 0.0, value == 0.0, value, detail.rstrip("; "))]

    return compare


def allclose(atol: float, rtol: float) -> Comparator:
    @_guarded
    def compare(reference: np.ndarray, test: np.ndarray, dtype: str) -> list[Metric]:
        ref = reference.astype(np.float64)
        diff = np.abs(ref - test.astype(np.float64))
        # The atol that would pass with this rtol.
        required = float(np.maximum(diff - rtol * np.abs(ref), 0.0).max())
        name = "max_abs_diff" if rtol == 0 else f"max_abs_diff_beyond_rtol_{rtol:g}"
        detail = f"max |diff| {diff.max():.3g}; {_first_mismatch(diff > atol + rtol * np.abs(ref))}"
        return [Metric(name, required, atol, required <= atol, required, detail.rstrip("; "))]

    return compare


def within_ulps(ulps: float) -> Comparator:
    @_guarded
    def compare(reference: np.ndarray, test: np.ndarray, dtype: str) -> list[Metric]:
        ref, tst = reference.astype(np.float64), test.astype(np.float64)
        spacing = ulp(np.maximum(np.abs(ref), np.abs(tst)), dtype)
        in_ulps = np.abs(ref - tst) / spacing
        value = float(in_ulps.max())
        detail = f"{dtype} ulps; {int((in_ulps > 0).sum())} of {in_ulps.size} elements differ"
        return [Metric("max_ulp_diff", value, ulps, value <= ulps, value, detail)]

    return compare


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max()
    exp = np.exp(shifted)
    return exp / exp.sum()


def topk(k: int, order: bool, prob_rtol: float, ref_floor: float) -> Comparator:
    @_guarded
    def compare(reference: np.ndarray, test: np.ndarray, dtype: str) -> list[Metric]:
        ref_p, test_p = _softmax(reference.ravel()), _softmax(test.ravel())
        # Stable sort: ties resolve to the lower token id, as argmax does.
        ref_ids = np.argsort(-ref_p, kind="stable")[:k]
        test_ids = np.argsort(-test_p, kind="stable")[:k]
        if order:
            id_mismatch = int((ref_ids != test_ids).sum())
        else:
            id_mismatch = len(set(ref_ids.tolist()) - set(test_ids.tolist()))
        ids_detail = f"reference {ref_ids.tolist()} test {test_ids.tolist()}"
        rel = np.abs(test_p[ref_ids] - ref_p[ref_ids]) / np.maximum(ref_p[ref_ids], ref_floor)
        rel_max = float(rel.max())
        prob_detail = (
            f"worst token {int(ref_ids[rel.argmax()])}: p_ref "
            f"{ref_p[ref_ids[rel.argmax()]]:.4g} p_test {test_p[ref_ids[rel.argmax()]]:.4g}"
        )
        ids_metric = f"top{k}_ids_{'order' if order else 'set'}_mismatch"
        return [
            Metric(
                ids_metric,
                float(id_mismatch),
                0.0,
                id_mismatch == 0,
                float(id_mismatch),
                ids_detail,
            ),
            Metric(
                f"top{k}_prob_rel_diff",
                rel_max,
                prob_rtol,
                rel_max <= prob_rtol,
                rel_max,
                prob_detail,
            ),
        ]

    return compare


class _CheckSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExactSpec(_CheckSpec):
    check: Literal["exact"] = "exact"

    def build(self) -> Comparator:
        return exact()


class AllcloseSpec(_CheckSpec):
    check: Literal["allclose"] = "allclose"
    atol: float = Field(ge=0)
    rtol: float = Field(0.0, ge=0)

    def build(self) -> Comparator:
        return allclose(self.atol, self.rtol)


class UlpSpec(_CheckSpec):
    check: Literal["ulp"] = "ulp"
    ulps: float = Field(1.0, ge=0)

    def build(self) -> Comparator:
        return within_ulps(self.ulps)


class TopkSpec(_CheckSpec):
    check: Literal["topk"] = "topk"
    k: int = Field(5, ge=1)
    order: bool = True
    prob_rtol: float = Field(0.25, ge=0)
    ref_floor: float = Field(1e-3, gt=0)

    def build(self) -> Comparator:
        return topk(self.k, self.order, self.prob_rtol, self.ref_floor)


CheckSpec = Annotated[ExactSpec | AllcloseSpec | UlpSpec | TopkSpec, Field(discriminator="check")]
