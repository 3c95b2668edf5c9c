"""Three paths, three pairs: a third opinion (e.g. transformers) next to the reference and
the candidate, and deviations between paths that a case declares as known.

A case with `paths.third` gets, besides its reference-vs-candidate checks, the checks of
(reference, third) and (candidate, third) under `third_profile` (default `cross`: float32
MLX vs PyTorch), their metrics named `<a>~<b>:<metric>`, and one `three_way` row per stage
and pair holding the max |diff| (a measurement, never gating): together the three-way
picture per stage.

`known_deviations: [{stage, reason, paths}]` says two paths differ from `stage` on for a
known reason (mlx-vlm vs transformers on Gemma 4's bidirectional mask, say). That pair's
failed checks from the stage on stop gating and say why; one `known_deviation` row at the
stage says whether the captured arrays really differ there, as declared (non-gating), or
not (gating: a declaration the arrays do not bear out is stale). A deviation nobody
declared, or one at an earlier stage than declared, still fails. Non-finite values always
fail.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

import numpy as np

from .cases import CaseSpec, KnownDeviation
from .records import Capture, CheckResult, Verdict, stage_rank

TABLE_CHECK = "three_way"
DEVIATION_CHECK = "known_deviation"
# Registry names cannot contain "~": it marks a metric of a pair other than the main one.
PAIR_SEP = "~"
_INDEXED = {"layers": "layer.", "decode": "decode.", "deepstack": "deepstack."}


def label(a: str, b: str) -> str:
    return f"{a}{PAIR_SEP}{b}"


def pair_of(check: CheckResult, main: str) -> str:
    """The pair a row belongs to: its metric's prefix, else the main pair's label."""
    return check.metric.rsplit(":", 1)[0] if PAIR_SEP in check.metric else main


def _in_stage(stage: str, declared: str) -> bool:
    prefix = _INDEXED.get(declared)
    return stage == declared or (prefix is not None and stage.startswith(prefix))


def _max_abs(ref: np.ndarray, test: np.ndarray) -> float:
    if ref.shape != test.shape:
        return float("nan")
    if ref.size == 0:
        return 0.0
    return float(np.abs(ref.astype(np.float64) - test.astype(np.float64)).max())


def table_rows(case_id: str, pair: str, a: Capture, b: Capture) -> list[CheckResult]:
    """One `three_way` row per stage both captured: the max |diff| of the pair (NaN, and
    not passed, when the shapes differ or a value is not finite)."""
    from .compare import compared_arrays

    rows = []
    for stage, (ref, test, _) in compared_arrays(a, b).items():
        value = _max_abs(ref, test)
        detail = ""
        if stage == "attention_mask" and ref.shape == test.shape and ref.ndim == 3:
            types = a.provenance.get("attention_mask_types", "").split(",")
            counts = (ref != test).sum(axis=(0, 2))
            detail = "; ".join(f"{t}: {int(n)} differ" for t, n in zip(types, counts, strict=False))
        rows.append(
            CheckResult(
                case_id, stage, TABLE_CHECK, f"{pair}:three_way_max_abs_diff", value, float("nan"),
                math.isfinite(value), value, detail, gating=False,
            )
        )  # fmt: skip
    return rows


def _pair_case(case: CaseSpec) -> CaseSpec:
    return case.model_copy(update={"profile": case.third_profile, "tolerances": {}})


def third_rows(case: CaseSpec, a: Capture, b: Capture) -> list[CheckResult]:
    """The checks of one pair with the third path, under the case's `third_profile`."""
    from .compare import compare

    pair = label(a.path, b.path)
    return [replace(r, metric=f"{pair}:{r.metric}") for r in compare(_pair_case(case), a, b)]


def deviations_for(case: CaseSpec, a: str, b: str) -> list[KnownDeviation]:
    """The declared deviations that apply to the pair (a, b)."""
    chosen = []
    for deviation in case.known_deviations:
        if deviation.paths is not None:
            if set(deviation.paths) == {a, b}:
                chosen.append(deviation)
        elif case.authority_path in (a, b):
            chosen.append(deviation)
    return chosen


def _explains(check: CheckResult, since: tuple[int, int]) -> bool:
    """A failed gating check a known deviation accounts for (never a non-finite one)."""
    return (
        check.gating
        and not check.passed
        and stage_rank(check.stage) >= since
        and check.metric.rsplit(":", 1)[-1] != "non_finite"
        and check.check not in ("presence", DEVIATION_CHECK)
    )


def _sentence(case: CaseSpec, a: str, b: str, deviation: KnownDeviation) -> str:
    authority = case.authority_path
    if authority in (a, b):
        other = b if authority == a else a
        return f"{other} deviates from {authority} (authoritative): {deviation.reason}"
    return f"{a} and {b} differ: {deviation.reason}"


def apply_deviations(
    case: CaseSpec, rows: Sequence[CheckResult], a: str, b: str, pair: str
) -> list[CheckResult]:
    """`rows` of the pair (a, b) with its declared deviations applied, and one
    `known_deviation` row per declaration."""
    declared = deviations_for(case, a, b)
    if not declared:
        return list(rows)
    mine = [r for r in rows if r.check != TABLE_CHECK and pair_of(r, pair) == pair]
    ids = {id(r) for r in mine}
    since = min(stage_rank(d.stage) for d in declared)
    out = [
        replace(r, gating=False, detail=f"known deviation; {r.detail}".rstrip("; "))
        if id(r) in ids and _explains(r, since)
        else r
        for r in rows
    ]
    for deviation in declared:
        at = [r for r in mine if _in_stage(r.stage, deviation.stage)]
        failed = [r for r in at if not r.passed and r.check != "presence"]
        sizes = [
            r.value
            for r in rows
            if r.check == TABLE_CHECK
            and pair_of(r, pair) == pair
            and _in_stage(r.stage, deviation.stage)
        ]
        size = f"max |diff| {max(sizes):.3g}" if sizes else "max |diff| not measured"
        sentence = _sentence(case, a, b, deviation)
        # The row's value counts the failed checks: always finite, > 0 when found.
        value = float(len(failed))
        if failed:
            detail = f"found: {len(failed)} check(s) fail at {deviation.stage}, {size}; {sentence}"
        else:
            detail = (
                f"declared but not found: {a} and {b} agree at {deviation.stage} within "
                f"tolerance; remove the declaration or fix the case ({deviation.reason})"
            )
        out.append(
            CheckResult(
                case.id, deviation.stage, DEVIATION_CHECK, f"{pair}:deviation", value,
                0.0, bool(failed), value, detail, gating=not failed,
            )
        )  # fmt: skip
    return out


def extend(
    case: CaseSpec,
    results: Sequence[CheckResult],
    reference: Capture,
    candidate: Capture,
    third: Capture | None,
) -> list[CheckResult]:
    """The main pair's `results` with the third path's pairs, the per-stage table and the
    declared deviations applied to every pair."""
    from .compare import unique_metrics

    main = label(reference.path, candidate.path)
    pairs = [(reference, candidate, main, False)]
    if third is not None:
        pairs += [
            (side, third, label(side.path, third.path), True) for side in (reference, candidate)
        ]
    out: list[CheckResult] = []
    for a, b, pair, extra in pairs:
        rows = third_rows(case, a, b) if extra else list(results)
        if third is not None or case.known_deviations:
            rows += table_rows(case.id, pair, a, b)
        out += apply_deviations(case, rows, a.path, b.path, pair)
    return unique_metrics(out)


def table(verdicts: Iterable[Verdict]) -> list[dict[str, object]]:
    """The three-way picture: one record per case, stage and pair (max |diff|, and
    `fail` / `known` / `skipped` / `ok` from the pair's checks at that stage)."""
    records = []
    for v in verdicts:
        main = label(v.reference, v.candidate)
        cells = [c for c in v.checks if c.check == TABLE_CHECK]
        for cell in cells:
            pair = pair_of(cell, main)
            checks = [
                c
                for c in v.checks
                if c.stage == cell.stage and c.check != TABLE_CHECK and pair_of(c, main) == pair
            ]
            failed = any(c.gating and not c.passed for c in checks)
            known = any(c.detail.startswith("known deviation") for c in checks)
            # Decode steps after the paths chose different tokens are not compared.
            metrics = {c.metric.rsplit(":", 1)[-1] for c in checks}
            skipped = metrics == {"compared"}
            status = "fail" if failed else "known" if known else "skipped" if skipped else "ok"
            records.append(
                {"case_id": v.case_id, "stage": cell.stage, "pair": pair,
                 "max_abs_diff": cell.value, "status": status}
            )  # fmt: skip
    return records


def markdown(verdicts: Iterable[Verdict]) -> str:
    """One table per three-way case: stages down, pairs across (escaped for a PR comment)."""
    from .report_md import md_code, md_text

    records = table(verdicts)
    if not records:
        return ""
    lines = ["## mlx-parity: three-way comparison", ""]
    cases = list(dict.fromkeys(r["case_id"] for r in records))
    for case_id in cases:
        mine = [r for r in records if r["case_id"] == case_id]
        pairs = list(dict.fromkeys(r["pair"] for r in mine))
        stages = list(dict.fromkeys(r["stage"] for r in mine))
        cell = {(r["stage"], r["pair"]): r for r in mine}
        lines += [f"### {md_text(case_id)}", ""]
        lines.append("| stage | " + " | ".join(md_text(p) for p in pairs) + " |")
        lines.append("|---" * (len(pairs) + 1) + "|")
        for stage in sorted(stages, key=stage_rank):
            values = []
            for pair in pairs:
                record = cell.get((stage, pair))
                if record is None:
                    values.append("")
                    continue
                text = f"{record['max_abs_diff']:.3g}"
                suffix = {"fail": " **FAIL**", "known": " (known)", "ok": ""}.get(
                    str(record["status"]), " (not compared)"
                )
                values.append(text + suffix)
            lines.append(f"| {md_code(stage)} | " + " | ".join(values) + " |")
        lines.append("")
    return "\n".join(lines)
