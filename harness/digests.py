"""Stages held as fingerprints: a compact recording (harness.golden) keeps some stages as
the sha256 of their exact values plus statistics instead of the values. Comparing such a
stage with the other side's array (or digest) fails on any difference, since a hash cannot
say how far apart two arrays are, and reports how far the statistics moved.

The hash is taken over a canonical form, so that it means what the `exact` check means:
values as float64 (floats) or int64 (integers), -0.0 as 0.0, C order, little-endian, with
the shape. Equal hashes <=> every element equal (the exact check's |a - b| == 0).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from .check_specs import CheckSpec
from .records import Capture, CheckResult, Digest

DIGEST_CHECK = "digest"
# Statistics kept with every digest, in the order they are reported.
STATS = ("mean", "std", "min", "max", "abs_max", "non_finite")


def canonical(array: np.ndarray) -> np.ndarray:
    """The values an exact comparison sees, in one byte layout."""
    if array.dtype.kind == "f":
        array = array.astype("<f8") + 0.0  # float32 -> float64 is exact; -0.0 + 0.0 is 0.0
    elif array.dtype.kind in "iu":
        array = array.astype("<i8")
    elif array.dtype.kind == "b":
        array = array.astype("u1")
    return np.ascontiguousarray(array)


def sha256_of(array: np.ndarray) -> str:
    values = canonical(array)
    digest = hashlib.sha256(f"{values.dtype.str}|{tuple(values.shape)}|".encode())
    digest.update(values.tobytes())
    return digest.hexdigest()


def stats_of(array: np.ndarray) -> dict[str, float]:
    """Statistics of the finite values (float64), and how many are not finite."""
    values = np.asarray(array, dtype=np.float64).ravel()
    finite = values[np.isfinite(values)]
    stats = dict.fromkeys(STATS, 0.0)
    stats["non_finite"] = float(values.size - finite.size)
    if finite.size:
        stats |= {
            "mean": float(finite.mean()),
            "std": float(finite.std()),
            "min": float(finite.min()),
            "max": float(finite.max()),
            "abs_max": float(np.abs(finite).max()),
        }
    return stats


def digest_of(array: np.ndarray, topk: int = 0) -> Digest:
    """The digest of a captured array; `topk` > 0 (1-D logits) also keeps the top-k ids and
    values (stable order: ties go to the lower id, as argmax) and the log-sum-exp."""
    last = array[-1:] if array.ndim >= 2 else None
    ids: tuple[int, ...] = ()
    values: tuple[float, ...] = ()
    lse = float("nan")
    if topk and array.ndim == 1 and array.size:
        order = np.argsort(-array.astype(np.float64), kind="stable")[:topk]
        ids = tuple(int(i) for i in order)
        values = tuple(float(array[i]) for i in order)
        lse = log_sum_exp(array)
    return Digest(
        sha256=sha256_of(array),
        shape=tuple(int(n) for n in array.shape),
        dtype=str(array.dtype),
        stats=stats_of(array),
        last_sha256=sha256_of(last) if last is not None else "",
        last_stats=stats_of(last) if last is not None else {},
        topk_ids=ids,
        topk_values=values,
        lse=lse,
    )


def digest_json(digest: Digest) -> dict:
    """A digest as JSON (recordings, kept captures); `digest_from_json` reads it back."""
    out: dict = {
        "sha256": digest.sha256,
        "shape": list(digest.shape),
        "dtype": digest.dtype,
        "stats": dict(digest.stats),
    }
    if digest.last_sha256:
        out |= {"last_sha256": digest.last_sha256, "last_stats": dict(digest.last_stats)}
    if digest.topk_ids:
        out |= {
            "topk_ids": list(digest.topk_ids),
            "topk_values": list(digest.topk_values),
            "lse": digest.lse,
        }
    return out


def digest_from_json(entry: dict) -> Digest:
    return Digest(
        sha256=entry["sha256"],
        shape=tuple(entry["shape"]),
        dtype=entry["dtype"],
        stats=entry["stats"],
        last_sha256=entry.get("last_sha256") or "",
        last_stats=entry.get("last_stats") or {},
        topk_ids=tuple(entry.get("topk_ids") or ()),
        topk_values=tuple(entry.get("topk_values") or ()),
        lse=float(entry["lse"]) if entry.get("lse") is not None else float("nan"),
    )


def log_sum_exp(logits: np.ndarray) -> float:
    values = logits.astype(np.float64).ravel()
    top = values.max()
    return float(top + np.log(np.exp(values - top).sum()))


def side(capture: Capture, key: str) -> np.ndarray | Digest | None:
    """A stage as a capture holds it: its array, else its digest, else None."""
    found = capture.arrays.get(key)
    return found if found is not None else capture.digests.get(key)


def as_digest(value: np.ndarray | Digest, topk: int = 0) -> Digest:
    return value if isinstance(value, Digest) else digest_of(value, topk)


def last_row(digest: Digest) -> Digest:
    shape = (1, *digest.shape[1:]) if digest.shape else digest.shape
    return Digest(digest.last_sha256, shape, digest.dtype, digest.last_stats)


def _last_position(a: Digest, b: Digest, prompt_len: int) -> bool:
    """Compare at the last prompt position where either side kept only that row (as
    compare's `_align_rows` does for arrays)."""
    if a.shape == b.shape or prompt_len <= 1 or len(a.shape) < 2 or len(b.shape) < 2:
        return False
    one_row = 1 in (a.shape[0], b.shape[0]) and a.shape[1:] == b.shape[1:]
    return one_row and bool(a.last_sha256 and b.last_sha256)


def drift_text(before: Digest, after: Digest) -> str:
    """'mean 0.0123 -> 0.0125, abs_max 3.1 -> 3.3' for the statistics that moved."""
    moved = [
        f"{name} {before.stats.get(name, float('nan')):.4g} -> "
        f"{after.stats.get(name, float('nan')):.4g}"
        for name in STATS
        if before.stats.get(name) != after.stats.get(name)
    ]
    return ", ".join(moved) if moved else "no statistic moved (same values, other positions)"


def max_drift(before: Digest, after: Digest) -> float:
    deltas = [
        abs(before.stats.get(name, np.nan) - after.stats.get(name, np.nan)) for name in STATS
    ]
    return float(max(deltas)) if deltas else 0.0


def _row(case_id: str, stage: str, metric: str, value: float, passed: bool, detail: str,
         gating: bool) -> CheckResult:  # fmt: skip
    """A digest row: threshold 0; no tolerance makes a differing hash pass."""
    required = value if passed or not gating else float("nan")
    return CheckResult(
        case_id, stage, DIGEST_CHECK, metric, value, 0.0, passed, required, detail,
        gating=gating,
    )  # fmt: skip


def _recorded_side(reference: Capture, ref: object) -> str:
    return "reference" if isinstance(ref, Digest) else "candidate"


def digest_rows(
    case_id: str,
    stage: str,
    specs: Sequence[CheckSpec],
    reference: Capture,
    candidate: Capture,
    key: str | None = None,
    prefix: str = "",
    prompt_len: int = 0,
) -> list[CheckResult] | None:
    """Rows of a stage that one side (or both) holds as a digest; None when both hold
    arrays or either holds nothing (the caller's ordinary paths). One gating row (gating
    when any of the stage's checks gates): the sha256 must be equal, whatever tolerance the
    checks allow; one diagnostic row: how far the statistics moved."""
    key = key or stage
    ref, test = side(reference, key), side(candidate, key)
    if ref is None or test is None:
        return None
    if not isinstance(ref, Digest) and not isinstance(test, Digest):
        return None
    if not specs:
        return []
    from .digest_topk import is_topk, topk_rows

    if is_topk(ref) or is_topk(test):
        return topk_rows(case_id, stage, specs, ref, test, prefix)
    gating = any(spec.gate for spec in specs)
    a, b = as_digest(ref), as_digest(test)
    where = ""
    if _last_position(a, b, prompt_len):
        a, b, where = last_row(a), last_row(b), "last_position_"
    metric = prefix + where
    if a.shape != b.shape:
        detail = f"shape {b.shape} vs reference {a.shape} ({_recorded_side(reference, ref)} "
        detail += "held as a digest)"
        return [_row(case_id, stage, metric + "shape", 1.0, False, detail, gating)]
    bad = a.stats.get("non_finite", 0.0) + b.stats.get("non_finite", 0.0)
    if bad:
        detail = (
            f"non-finite values: reference {a.stats.get('non_finite', 0):g}, "
            f"test {b.stats.get('non_finite', 0):g}"
        )
        return [_row(case_id, stage, metric + "non_finite", float(bad), False, detail, gating)]
    differs = a.sha256 != b.sha256
    held = f"{_recorded_side(reference, ref)} held as sha256 + statistics"
    tolerant = sorted({s.check for s in specs if s.check not in ("exact", "stats")})
    if differs:
        detail = f"values differ ({held}: any difference fails"
        if tolerant:
            detail += f", the stage's {'/'.join(tolerant)} tolerance cannot apply"
        detail += "; record with --full to keep the values)"
    else:
        detail = f"equal bit for bit ({held})"
    drift = max_drift(a, b)
    return [
        _row(case_id, stage, metric + "sha256_differs", float(differs), not differs, detail,
             gating),
        _row(case_id, stage, metric + "stats_drift", drift, drift == 0.0,
             drift_text(a, b) if differs else "statistics equal", False),
    ]  # fmt: skip


def first_digest_difference(
    stages: Sequence[tuple[str, str]], reference: Capture, candidate: Capture, prompt_len: int
) -> tuple[str, str] | None:
    """The first (stage, key) of `stages` held as a digest on either side whose values
    differ, as (stage, detail)."""
    for stage, key in stages:
        ref, test = side(reference, key), side(candidate, key)
        if ref is None or test is None:
            continue
        if not isinstance(ref, Digest) and not isinstance(test, Digest):
            continue
        a, b = as_digest(ref), as_digest(test)
        if _last_position(a, b, prompt_len):
            a, b = last_row(a), last_row(b)
        if a.shape != b.shape:
            return stage, f"shape {b.shape} vs reference {a.shape}"
        if a.sha256 != b.sha256:
            return stage, f"sha256 differs from the recording; {drift_text(a, b)}"
    return None


def _stage_of(key: str) -> str | None:
    """The stage a captured key belongs to (layer outputs and their per-layer inputs are
    `layer.N`); None for helper arrays that are no stage."""
    from .probes import LAYER_OUT, LAYER_PLI
    from .records import DEEPSTACK_SCALE, layer_stage

    for prefix in (LAYER_OUT, LAYER_PLI):
        if key.startswith(prefix + "."):
            return layer_stage(int(key.removeprefix(prefix + ".")))
    return None if key.startswith(DEEPSTACK_SCALE + ".") else key


def digest_difference(
    found: object, reference: Capture, candidate: Capture
) -> tuple[str, str] | None:
    """The first stage held as a digest whose values differ, as (stage, detail), when it
    comes before `found` (the first differing stage among the arrays, or None)."""
    from .records import stage_rank

    keys = {k for c in (reference, candidate) for k in c.digests}
    stages = sorted(
        ((stage, key) for key in keys if (stage := _stage_of(key)) is not None),
        key=lambda item: (stage_rank(item[0]), item[1]),
    )
    if found is not None:
        stages = [s for s in stages if stage_rank(s[0]) < stage_rank(found.stage)]
    prompt_len = len(reference.arrays.get("input_ids", ()))
    return first_digest_difference(stages, reference, candidate, prompt_len)


def environment_rows(case_id: str, reference: Capture, candidate: Capture) -> list[CheckResult]:
    """One diagnostic `environment` row per difference between where a replayed capture
    was recorded and where it is compared (library versions, platform, MLX backend,
    checkpoint): a warning; `--strict` turns it into an error of the case
    (harness.paths.golden)."""
    rows = []
    for capture in (reference, candidate):
        for name, detail in sorted(capture.environment.items()):
            rows.append(
                CheckResult(
                    case_id, "environment", "environment", f"{name}_differs", 1.0, 0.0, False,
                    float("nan"), f"{detail} (recording {capture.recording})", gating=False,
                )
            )  # fmt: skip
    return rows


def recording_provenance(reference: Capture, candidate: Capture) -> dict[str, str]:
    """Which recording a verdict used, for the report."""
    return {
        f"{role}_recording": capture.recording
        for role, capture in (("reference", reference), ("candidate", candidate))
        if capture.recording
    }
