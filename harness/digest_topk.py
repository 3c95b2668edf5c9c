"""Logits recorded as their top-K ids and values plus the log-sum-exp (a real checkpoint's
vocabulary is too large to keep per step). Against a live array, each check of the stage
is computed from what the recording holds:

- `exact`: the sha256 of the full vocabulary (any difference fails);
- `allclose`, `ulp`, `stats`: on the K recorded logits and the live logits at those ids;
- `topk` (k <= K), `top1`, `jaccard` (k <= K): ids and probabilities exp(logit - lse);
- `kl`: the KL of the coarse-grained distributions (the K tokens and the rest as one),
  a lower bound of the full KL: a failure is certain, a pass is not a proof;
- `max_delta_p`: over the K tokens (a lower bound too).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .check_specs import (
    CheckSpec,
    DeltaPSpec,
    ExactSpec,
    JaccardSpec,
    KlSpec,
    Top1Spec,
    TopkSpec,
)
from .records import CheckResult, Digest

CHECK_NOTE = "from the recorded top-{K} and log-sum-exp"


def is_topk(value: object) -> bool:
    return isinstance(value, Digest) and bool(value.topk_ids)


def _row(case_id, stage, spec, metric, value, threshold, passed, detail, gating=None):
    gate = spec.gate if gating is None else gating
    required = value if passed or value == value else float("nan")
    return CheckResult(
        case_id, stage, spec.check, metric, float(value), float(threshold), bool(passed),
        float(required), detail, gating=gate,
    )  # fmt: skip


def topk_rows(
    case_id: str,
    stage: str,
    specs: Sequence[CheckSpec],
    reference: np.ndarray | Digest,
    candidate: np.ndarray | Digest,
    prefix: str = "",
) -> list[CheckResult]:
    from .digests import DIGEST_CHECK, as_digest, drift_text, log_sum_exp

    recorded, live = (reference, candidate) if is_topk(reference) else (candidate, reference)
    gating = any(spec.gate for spec in specs)
    if not isinstance(live, np.ndarray):  # two recordings: only their fingerprints compare
        a, b = as_digest(reference), as_digest(candidate)
        differs = a.sha256 != b.sha256
        detail = drift_text(a, b) if differs else "equal bit for bit"
        return [
            CheckResult(case_id, stage, DIGEST_CHECK, prefix + "sha256_differs", float(differs),
                        0.0, not differs, 0.0 if not differs else float("nan"), detail,
                        gating=gating)
        ]  # fmt: skip
    logits = live.astype(np.float64).ravel()
    if recorded.shape != tuple(live.shape) or not np.isfinite(logits).all():
        what = (
            f"shape {tuple(live.shape)} vs recorded {recorded.shape}"
            if recorded.shape != tuple(live.shape)
            else f"non-finite values in the live logits: {int((~np.isfinite(logits)).sum())}"
        )
        return [
            CheckResult(case_id, stage, DIGEST_CHECK, prefix + "guard", 1.0, 0.0, False,
                        float("nan"), what, gating=gating)
        ]  # fmt: skip
    big_k = len(recorded.topk_ids)
    ids = np.array(recorded.topk_ids)
    note = CHECK_NOTE.format(K=big_k)
    ref_values = np.array(recorded.topk_values, dtype=np.float64)
    p_ref = np.exp(ref_values - recorded.lse)
    lse = log_sum_exp(logits)
    p_test = np.exp(logits[ids] - lse)
    live_order = np.argsort(-logits, kind="stable")
    rows: list[CheckResult] = []
    for spec in specs:
        if isinstance(spec, ExactSpec):
            differs = as_digest(live).sha256 != recorded.sha256
            detail = f"sha256 of the full vocabulary {'differs' if differs else 'equal'}"
            rows.append(_row(case_id, stage, spec, prefix + "sha256_differs", float(differs),
                             0.0, not differs, detail))  # fmt: skip
        elif isinstance(spec, TopkSpec | Top1Spec | JaccardSpec):
            rows += _ranking(case_id, stage, spec, prefix, ids, p_ref, p_test, live_order, note)
        elif isinstance(spec, KlSpec):
            tail_ref = max(1.0 - p_ref.sum(), 0.0)
            tail_test = max(1.0 - p_test.sum(), 0.0)
            p = np.append(p_ref, tail_ref)
            q = np.maximum(np.append(p_test, tail_test), np.finfo(np.float64).tiny)
            kl = max(float(np.sum(np.where(p > 0, p * (np.log(np.where(p > 0, p, 1)) -
                                                      np.log(q)), 0.0))), 0.0)  # fmt: skip
            detail = f"lower bound: top-{big_k} tokens and the rest as one ({note})"
            rows.append(_row(case_id, stage, spec, prefix + "kl_ref_test_lower_bound", kl,
                             spec.max, kl <= spec.max, detail))  # fmt: skip
        elif isinstance(spec, DeltaPSpec):
            delta = np.abs(p_ref - p_test)
            value = float(delta.max())
            worst = int(ids[delta.argmax()])
            detail = f"over the top-{big_k} tokens (a lower bound); token {worst}"
            rows.append(_row(case_id, stage, spec, prefix + "max_delta_p", value, spec.max,
                             value <= spec.max, detail))  # fmt: skip
        else:  # elementwise checks: on the recorded logits and the live ones at those ids
            for m in spec.build()(ref_values.astype(np.float32), logits[ids].astype(np.float32),
                                  "float32"):  # fmt: skip
                rows.append(_row(case_id, stage, spec, f"{prefix}top{big_k}_{m.metric}",
                                 m.value, m.threshold, m.passed, f"{m.detail}; {note}".lstrip("; "),
                                 spec.gate and m.gating))  # fmt: skip
    delta_lse = abs(lse - recorded.lse)
    rows.append(
        CheckResult(case_id, stage, DIGEST_CHECK, prefix + "lse_drift", delta_lse, 0.0,
                    delta_lse == 0.0, delta_lse, f"log-sum-exp {recorded.lse:.6g} -> {lse:.6g}",
                    gating=False)
    )  # fmt: skip
    return rows


def _ranking(case_id, stage, spec, prefix, ids, p_ref, p_test, live_order, note):
    big_k = len(ids)
    if isinstance(spec, Top1Spec):
        a, b = int(ids[0]), int(live_order[0])
        return [_row(case_id, stage, spec, prefix + "top1_disagreement", float(a != b), 0.0,
                     a == b, f"reference {a} test {b} ({note})")]  # fmt: skip
    k = spec.k
    if k > big_k:
        detail = f"top-{k} needs more than the {big_k} recorded ids: record with --full"
        return [_row(case_id, stage, spec, f"{prefix}top{k}_not_recorded", 1.0, 0.0, False,
                     detail)]  # fmt: skip
    ref_ids, test_ids = ids[:k], live_order[:k]
    if isinstance(spec, JaccardSpec):
        a, b = set(ref_ids.tolist()), set(test_ids.tolist())
        distance = 1.0 - len(a & b) / len(a | b)
        limit = 1.0 - spec.min
        return [_row(case_id, stage, spec, f"{prefix}top{k}_jaccard_distance", distance,
                     limit, distance <= limit, note)]  # fmt: skip
    if spec.order:
        mismatch = int((ref_ids != test_ids).sum())
    else:
        mismatch = len(set(ref_ids.tolist()) - set(test_ids.tolist()))
    kind = "order" if spec.order else "set"
    ids_detail = f"reference {ref_ids.tolist()} test {test_ids.tolist()} ({note}; no near-tie test)"
    rel = np.abs(p_test[:k] - p_ref[:k]) / np.maximum(p_ref[:k], spec.ref_floor)
    worst = int(rel.argmax())
    prob_detail = (
        f"worst token {int(ref_ids[worst])}: p_ref {p_ref[worst]:.4g} p_test {p_test[worst]:.4g}"
    )
    return [
        _row(case_id, stage, spec, f"{prefix}top{k}_ids_{kind}_mismatch", float(mismatch), 0.0,
             mismatch == 0, ids_detail),
        _row(case_id, stage, spec, f"{prefix}top{k}_prob_rel_diff", float(rel.max()),
             spec.prob_rtol, float(rel.max()) <= spec.prob_rtol, prob_detail),
    ]  # fmt: skip
