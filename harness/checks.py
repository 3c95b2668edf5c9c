"""Compare functions: small factories, each returning `comparator(reference, test, dtype)`.

A case names a check by its `check:` key; the pydantic spec classes (check_specs.py)
validate parameters and `.build()` the comparator. Every metric carries the tolerance that
*would* have passed.
Shape mismatches and non-finite values are caught once, in `guard`, for every check.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Metric:
    metric: str
    value: float
    threshold: float
    passed: bool
    required: float
    detail: str = ""
    gating: bool = True

    def __post_init__(self) -> None:
        # A NaN metric never passes, whatever the comparison said (NaN <= x is False, but
        # `passed=True` diagnostics and hand-built metrics must obey the same rule).
        if math.isnan(self.value):
            object.__setattr__(self, "passed", False)


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


def guard(reference: np.ndarray, test: np.ndarray) -> Metric | None:
    """What every check would report instead of comparing: a shape mismatch or any NaN/Inf
    (failed), or empty arrays (trivially equal). None when the arrays can be compared.
    compare.py reports it once per stage, whatever the number of checks there."""
    if reference.shape != test.shape:
        detail = f"shape {tuple(test.shape)} vs reference {tuple(reference.shape)}"
        return Metric("shape", 1.0, 0.0, False, float("nan"), detail)
    bad = _count_nonfinite(reference) + _count_nonfinite(test)
    if bad:
        detail = (
            f"non-finite values: reference {_count_nonfinite(reference)}, "
            f"test {_count_nonfinite(test)}"
        )
        return Metric("non_finite", float(bad), 0.0, False, float("nan"), detail)
    if reference.size == 0:
        return Metric("size", 0.0, 0.0, True, 0.0, "empty arrays")
    return None


def _guarded(comparator: Comparator) -> Comparator:
    """Fail on shape mismatch or any NaN/Inf before the comparator sees the arrays."""

    @functools.wraps(comparator)
    def guarded(reference: np.ndarray, test: np.ndarray, dtype: str) -> list[Metric]:
        stop = guard(reference, test)
        return [stop] if stop is not None else comparator(reference, test, dtype)

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


def _tie_bound(
    logits: np.ndarray, a: int, b: int, dtype: str, tie_ulps: float, tie_margin: float
) -> float:
    """Noise bound for a pair of logits: ulps of the captured dtype at their magnitude,
    or an explicit margin, whichever is larger."""
    magnitude = np.array([max(abs(logits[a]), abs(logits[b]))])
    return max(tie_margin, tie_ulps * float(ulp(magnitude, dtype)[0]))


def topk(
    k: int,
    order: bool,
    prob_rtol: float,
    ref_floor: float,
    tie_ulps: float = 1.0,
    tie_margin: float = 0.0,
) -> Comparator:
    """Top-k ids and probabilities. Two tokens whose logits differ by no more than the
    noise bound in both paths are a near-tie: swapping them is reported, not failed."""

    @_guarded
    def compare(reference: np.ndarray, test: np.ndarray, dtype: str) -> list[Metric]:
        ref_logits, test_logits = reference.ravel(), test.ravel()
        ref_p, test_p = _softmax(ref_logits), _softmax(test_logits)
        # Stable sort: ties resolve to the lower token id, as argmax does.
        ref_ids = np.argsort(-ref_p, kind="stable")[:k]
        test_ids = np.argsort(-test_p, kind="stable")[:k]

        def near_tie(a: int, b: int) -> bool:
            return all(
                abs(float(x[a]) - float(x[b]))
                <= _tie_bound(ref_logits, a, b, dtype, tie_ulps, tie_margin)
                for x in (ref_logits, test_logits)
            )

        if order:
            pairs = [(int(r), int(t)) for r, t in zip(ref_ids, test_ids, strict=True) if r != t]
        else:
            missing = sorted(set(ref_ids.tolist()) - set(test_ids.tolist()))
            extra = sorted(set(test_ids.tolist()) - set(ref_ids.tolist()))
            pairs = list(zip(missing, extra, strict=True))
        ties = [(a, b) for a, b in pairs if near_tie(a, b)]
        mismatch = len(pairs) - len(ties)
        ids_detail = f"reference {ref_ids.tolist()} test {test_ids.tolist()}"
        rel = np.abs(test_p[ref_ids] - ref_p[ref_ids]) / np.maximum(ref_p[ref_ids], ref_floor)
        worst = int(ref_ids[rel.argmax()])
        prob_detail = f"worst token {worst}: p_ref {ref_p[worst]:.4g} p_test {test_p[worst]:.4g}"
        tie_detail = (
            ", ".join(
                f"{a}<->{b} (ref logits {ref_logits[a]:.6g} vs {ref_logits[b]:.6g})"
                for a, b in ties
            )
            or "none"
        )
        return [
            Metric(
                f"top{k}_ids_{'order' if order else 'set'}_mismatch",
                float(mismatch),
                0.0,
                mismatch == 0,
                float(mismatch),
                ids_detail,
            ),
            Metric(
                f"top{k}_near_tie_swaps",
                float(len(ties)),
                float("inf"),
                True,
                float(len(ties)),
                f"near-tie: {tie_detail}",
                gating=False,
            ),
            Metric(
                f"top{k}_prob_rel_diff",
                float(rel.max()),
                prob_rtol,
                float(rel.max()) <= prob_rtol,
                float(rel.max()),
                prob_detail,
            ),
        ]

    return compare


def layer_stats(max_abs: float, max_nmse: float, max_cosine_distance: float) -> Comparator:
    """Per-layer statistics, computed in MLX: max |diff|, max relative diff, cosine distance
    and NMSE = mse(test, ref) / mse(ref, 0)."""

    @_guarded
    def compare(reference: np.ndarray, test: np.ndarray, dtype: str) -> list[Metric]:
        import mlx.core as mx

        with np.errstate(over="ignore"):
            ref32, test32 = reference.astype(np.float32), test.astype(np.float32)
        if not (np.isfinite(ref32).all() and np.isfinite(test32).all()):
            return [
                Metric(
                    "non_finite",
                    float("inf"),
                    0.0,
                    False,
                    float("nan"),
                    "values beyond the float32 range of the statistics",
                )
            ]
        ref = mx.array(ref32).reshape(-1)
        tst = mx.array(test32).reshape(-1)
        diff = mx.abs(tst - ref)
        power = mx.mean(ref * ref)
        nmse = mx.where(power > 0, mx.mean(diff * diff) / power, mx.mean(diff * diff))
        norms = mx.linalg.norm(ref) * mx.linalg.norm(tst)
        cosine = mx.where(norms > 0, mx.sum(ref * tst) / norms, 1.0)
        rel = mx.max(diff / mx.maximum(mx.abs(ref), 1e-6))
        values = [float(v) for v in (mx.max(diff), rel, 1.0 - cosine, nmse)]
        max_diff, max_rel, cos_dist, nmse_value = values
        # float32 rounding puts 1 - cos(a, a) at +-1e-7; identical arrays are distance 0.
        cos_dist = 0.0 if max_diff == 0.0 else max(cos_dist, 0.0)
        return [
            Metric("max_abs_diff", max_diff, max_abs, max_diff <= max_abs, max_diff),
            Metric("max_rel_diff", max_rel, float("inf"), True, max_rel, gating=False),
            Metric(
                "cosine_distance",
                cos_dist,
                max_cosine_distance,
                cos_dist <= max_cosine_distance,
                cos_dist,
            ),
            Metric("nmse", nmse_value, max_nmse, nmse_value <= max_nmse, nmse_value),
        ]

    return compare


def kl_divergence(max_kl: float) -> Comparator:
    @_guarded
    def compare(reference: np.ndarray, test: np.ndarray, dtype: str) -> list[Metric]:
        ref_p, test_p = _softmax(reference.ravel()), _softmax(test.ravel())
        support = ref_p > 0
        kl = float(
            np.sum(
                ref_p[support]
                * (
                    np.log(ref_p[support])
                    - np.log(np.maximum(test_p[support], np.finfo(np.float64).tiny))
                )
            )
        )
        kl = max(kl, 0.0)  # rounding can make an exact match slightly negative
        return [Metric("kl_ref_test", kl, max_kl, kl <= max_kl, kl, "full vocabulary, nats")]

    return compare


def top1_agreement() -> Comparator:
    @_guarded
    def compare(reference: np.ndarray, test: np.ndarray, dtype: str) -> list[Metric]:
        a, b = int(np.argmax(reference)), int(np.argmax(test))
        return [
            Metric(
                "top1_disagreement",
                float(a != b),
                0.0,
                a == b,
                float(a != b),
                f"reference {a} test {b}",
            )
        ]

    return compare


def jaccard(k: int, min_jaccard: float) -> Comparator:
    @_guarded
    def compare(reference: np.ndarray, test: np.ndarray, dtype: str) -> list[Metric]:
        ref_ids = set(np.argsort(-reference.ravel(), kind="stable")[:k].tolist())
        test_ids = set(np.argsort(-test.ravel(), kind="stable")[:k].tolist())
        distance = 1.0 - len(ref_ids & test_ids) / len(ref_ids | test_ids)
        limit = 1.0 - min_jaccard
        return [Metric(f"top{k}_jaccard_distance", distance, limit, distance <= limit, distance)]

    return compare


def max_delta_p(max_delta: float) -> Comparator:
    @_guarded
    def compare(reference: np.ndarray, test: np.ndarray, dtype: str) -> list[Metric]:
        delta = np.abs(_softmax(reference.ravel()) - _softmax(test.ravel()))
        value = float(delta.max())
        return [
            Metric(
                "max_delta_p",
                value,
                max_delta,
                value <= max_delta,
                value,
                f"token {int(delta.argmax())}",
            )
        ]

    return compare
