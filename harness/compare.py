"""Captures of one case -> CheckResults -> Verdict. Pure functions of the records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .cases import CaseSpec
from .checks import CheckSpec
from .records import Capture, CheckResult, Status, Verdict, stage_rank


def check_stage(
    case_id: str, stage: str, specs: Sequence[CheckSpec], reference: Capture, candidate: Capture
) -> list[CheckResult]:
    ref, test = reference.arrays.get(stage), candidate.arrays.get(stage)
    if ref is None or test is None:
        absent = [c.path for c, a in ((reference, ref), (candidate, test)) if a is None]
        both = len(absent) == 2
        detail = (
            "neither path produces this stage for this model"
            if both
            else f"not captured by {absent[0]}"
        )
        return [
            CheckResult(
                case_id,
                stage,
                "presence",
                "captured",
                float(not both),
                0.0,
                both,
                0.0 if both else float("nan"),
                detail,
            )
        ]
    results = []
    for spec in specs:
        for m in spec.build()(ref, test, reference.dtypes.get(stage, "float32")):
            results.append(
                CheckResult(
                    case_id,
                    stage,
                    spec.check,
                    m.metric,
                    m.value,
                    m.threshold,
                    m.passed,
                    m.required,
                    m.detail,
                )
            )
    return results


def compare(case: CaseSpec, reference: Capture, candidate: Capture) -> list[CheckResult]:
    profile: Mapping[str, Sequence[CheckSpec]] = case.checks()
    results: list[CheckResult] = []
    for stage in sorted(profile, key=stage_rank):
        results.extend(check_stage(case.id, stage, profile[stage], reference, candidate))
    return results


def verdict(case: CaseSpec, reference: Capture, candidate: Capture) -> Verdict:
    results = compare(case, reference, candidate)
    failed = [r for r in results if not r.passed]
    first = min(failed, key=lambda r: stage_rank(r.stage)).stage if failed else None
    return Verdict(
        case_id=case.id,
        source=case.source,
        status=Status.FAIL if failed else Status.PASS,
        checks=tuple(results),
        first_divergence=first,
        reference=reference.path,
        candidate=candidate.path,
        provenance={
            **candidate.provenance,
            "reference_prefill_chunks": ",".join(map(str, reference.prefill_chunks)),
            "candidate_prefill_chunks": ",".join(map(str, candidate.prefill_chunks)),
        },
    )
