"""The sentence a developer needs, in plain text, from a verdict's fields: where the paths
first differ (even within tolerance), where the first gating check fails, and the
conditions that qualify both (prefill schedules, the noise envelope). The console, the
Markdown and JUnit print it; escaping is theirs."""

from __future__ import annotations

from .records import Status, Verdict


def schedules(verdict: Verdict) -> tuple[str, str]:
    return (
        verdict.provenance.get("reference_prefill_chunks", ""),
        verdict.provenance.get("candidate_prefill_chunks", ""),
    )


def schedule_note(verdict: Verdict) -> str:
    reference, candidate = schedules(verdict)
    if not reference or not candidate or reference == candidate:
        return ""
    return (
        f"prefill schedules differ ({verdict.reference or 'reference'} {reference} vs "
        f"{verdict.candidate or 'candidate'} {candidate}): exact parity holds only for "
        "equal schedules"
    )


def explain(verdict: Verdict) -> str:
    """'embeddings differ first: 1 ulp (bfloat16) on 63 image row(s) of 91 (within
    tolerance); first failure: logits topk ...'. Empty for skips and errors."""
    if verdict.status not in (Status.PASS, Status.FAIL):
        return ""
    if verdict.first_difference is None:
        failed = verdict.status is Status.FAIL
        parts = [] if failed else ["identical on every compared stage"]
    else:
        within = "" if verdict.first_failure == verdict.first_difference else " (within tolerance)"
        parts = [
            f"{verdict.first_difference} differs first: {verdict.first_difference_detail}{within}"
        ]
    if verdict.first_failure:
        parts.append(f"first failure: {verdict.first_failure} {verdict.first_failure_detail}")
    if verdict.envelope_note:
        parts.append(verdict.envelope_note)
    note = schedule_note(verdict)
    if note:
        parts.append(note)
    recording = verdict.provenance.get("reference_recording")
    if recording:  # the reference was a recording (path `golden`), not a live path
        parts.append(f"reference replayed from {recording}")
    return "; ".join(parts)
