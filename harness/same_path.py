"""Checks that hold a path to itself: the candidate captured a second time under other
conditions (after serving other prompts; through a restored prompt cache) must equal its
own ordinary capture. Each is a role of the candidate's session, run right after the
ordinary capture, with no model reload; each yields one gating row named after it."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from . import batching, prompt_cache, session_state
from .cases import CaseError, CaseSpec
from .records import Capture, CheckResult

ERROR = "same_path_error"


@dataclasses.dataclass(frozen=True)
class SamePathCheck:
    wanted: Callable[[CaseSpec], bool]
    capture: Callable[[Any, CaseSpec], Capture]
    # (case, first capture, second capture) -> the one row
    check: Callable[[CaseSpec, Capture, Capture], CheckResult]


CHECKS: dict[str, SamePathCheck] = {
    session_state.STAGE: SamePathCheck(
        lambda case: case.session_state,
        session_state.serve_then_capture,
        lambda case, first, second: session_state.check(case.id, first, second),
    ),
    prompt_cache.STAGE: SamePathCheck(
        lambda case: case.prompt_cache is not None,
        prompt_cache.restored_capture,
        lambda case, first, second: prompt_cache.check(case.id, first, second),
    ),
    batching.STAGE: SamePathCheck(
        lambda case: case.batch is not None,
        batching.batched_capture,
        lambda case, first, second: batching.check(
            case.id, first, second, case.batch.logprob_tolerance
        ),
    ),
}


def roles(case: CaseSpec) -> list[str]:
    return [role for role, spec in CHECKS.items() if spec.wanted(case)]


def capture(role: str, session: Any, case: CaseSpec, path: str) -> Capture:
    """The second capture; a failure of it (not a case-file error) is its check's failure,
    not the case's."""
    from .execute import one_line

    try:
        return CHECKS[role].capture(session, case)
    except CaseError:
        raise
    except Exception as exc:
        return Capture(path, case.id, {}, {}, (), provenance={ERROR: one_line(exc)})


def rows(case: CaseSpec, candidate: Capture, extra: Mapping[str, Capture]) -> list[CheckResult]:
    case_id, results = case.id, []
    for role, second in extra.items():
        error = second.provenance.get(ERROR)
        if error is not None:
            results.append(
                CheckResult(
                    case_id, role, "exact", "captured", 1.0, 0.0, False, float("nan"),
                    f"the second capture failed: {error}",
                )  # fmt: skip
            )
        else:
            results.append(CHECKS[role].check(case, candidate, second))
    return results
