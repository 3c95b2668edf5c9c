"""`mlx-parity record` (write each case's reference capture as a recording), and the two
ways of running against recordings: `run --replay` (the recording stands in for the
reference, the candidate runs live: a fraction of the time) and `drift` (today's reference
path runs live against its own recording: what moved since it was recorded, and under
which library versions)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .cases import CaseError, CaseSpec, PathPair
from .golden import LogitsMode, write_recording
from .records import Status, Verdict

GOLDEN = "golden"
Mode = Literal["replay", "drift"]


@dataclass(frozen=True)
class Recorded:
    case_id: str
    source: str
    directory: Path | None = None
    size: int = 0  # bytes of the recording's files
    error: str = ""
    skipped: bool = False
    config_error: bool = False


def record_cases(
    cases: Iterable[CaseSpec],
    out: Path,
    options: object,
    *,
    full: bool = False,
    logits: LogitsMode = "auto",
    observe: Callable[[str, object], None] = lambda event, message: None,
) -> list[Recorded]:
    """Run each case's reference path (one session per model group, as `run` does) and
    write its capture under `out/<architecture>/<case_id>/`. `options`: a RunOptions."""
    from .runner import RunOptions

    assert isinstance(options, RunOptions)
    groups: dict[str, list[CaseSpec]] = {}
    for case in cases:
        groups.setdefault(case.model_key(), []).append(case)
    results: list[Recorded] = []
    try:
        for index, group in enumerate(groups.values()):
            more = index + 1 < len(groups)  # keep a worker warm for the next group
            results += _record_group(group, out, options, full, logits, observe, more)
    finally:
        from .worker import release_spare

        release_spare()
    return results


def _record_group(group, out, options, full, logits, observe, more) -> list[Recorded]:
    from .execute import one_line
    from .models import ModelUnavailable, resolve_model
    from .paths import PathError
    from .runner import _execute

    try:
        model_dir = resolve_model(group[0], options.timeout)
    except ModelUnavailable as exc:
        return [Recorded(c.id, c.source, error=str(exc), skipped=True) for c in group]
    except (CaseError, PathError) as exc:
        return [Recorded(c.id, c.source, error=one_line(exc), config_error=True) for c in group]
    done: list[Recorded] = []
    plan: dict = {}
    for case in group:
        try:
            key = _reference_key(case, model_dir, options)
        except CaseError as exc:
            done.append(Recorded(case.id, case.source, error=str(exc), config_error=True))
            continue
        plan.setdefault(key, []).append((case, "reference"))
    outcome = _execute(list(plan.items()), model_dir, observe, options, more)
    for key, members in plan.items():
        for case, _ in members:
            capture = outcome.captures.get((case.id, "reference"))
            if capture is None:
                reason = outcome.failures.get(case.id, "no capture")
                config = case.id in outcome.config_failures
                done.append(Recorded(case.id, case.source, error=reason, config_error=config))
                continue
            directory = write_recording(
                capture, case, model_dir, out, full=full, logits=logits,
                with_addon=key.options.addon is not None,
            )  # fmt: skip
            size = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())
            done.append(Recorded(case.id, case.source, directory, size))
    return done


def _reference_key(case: CaseSpec, model_dir: Path, options):
    """The session that captures `case`'s reference path, checked as `run` checks it."""
    from .execute import SessionKey
    from .paths import PathError, SessionOptions, resolve_session_class
    from .policy import custom_code_in
    from .runner import _check_trust

    if case.paths.reference == GOLDEN:
        raise CaseError(case.source, "the reference is a recording already", case.id, "paths")
    case.check_images(max_pixels=options.max_image_pixels)
    _check_trust(case, custom_code_in(model_dir), options)
    try:
        session_class = resolve_session_class(case.paths.reference, options.imports)
    except PathError as exc:
        raise CaseError(case.source, str(exc), case.id, "paths.reference") from None
    takes_addon = getattr(session_class, "takes_addon", True)
    session_options = SessionOptions(
        addon=case.addon if takes_addon else None,
        trust_remote_code=case.trust_remote_code and options.trust_remote_code,
        imports=options.imports,
    )
    return SessionKey(case.paths.reference, session_options)


def against_recordings(
    cases: Iterable[CaseSpec], mode: Mode
) -> tuple[list[CaseSpec], list[CaseError]]:
    """Cases rewritten to run against their recordings. `replay`: the recording replaces
    the reference, the candidate runs live. `drift`: the recorded reference path runs live
    as the candidate, without what concerns the candidate (session state, prompt cache,
    batching) or declared deviations between paths. Neither has a third opinion (held to
    the live reference under cross-framework tolerances, which digests cannot apply) or a
    noise envelope (a recording cannot be perturbed)."""
    out: list[CaseSpec] = []
    errors: list[CaseError] = []
    for case in cases:
        live = case.paths.candidate if mode == "replay" else case.paths.reference
        if live == GOLDEN or (mode == "replay" and case.paths.reference == GOLDEN):
            if mode == "replay":
                out.append(case.model_copy(update={"noise_envelope": 0}))
                continue
            errors.append(CaseError(case.source, "nothing live to drift", case.id, "paths"))
            continue
        # No third opinion: it is held to the reference under cross-framework tolerances,
        # which a recording's digests cannot apply (run the case live for it).
        update: dict[str, object] = {
            "paths": PathPair(reference=GOLDEN, candidate=live),
            "noise_envelope": 0,
        }
        if mode == "drift":
            update |= {
                "session_state": False, "prompt_cache": None, "batch": None,
                "known_deviations": [],
            }  # fmt: skip
        out.append(case.model_copy(update=update))
    return out, errors


def drift_lines(verdicts: Iterable[Verdict]) -> list[str]:
    """Per case: what moved (each stage with failed checks, and their numbers) and which
    parts of the environment differ from the recording's."""
    lines = []
    for v in verdicts:
        if v.status not in (Status.PASS, Status.FAIL):
            lines.append(f"{v.case_id}: {v.status.value} {v.reason}")
            continue
        moved: dict[str, list[str]] = {}
        env = []
        for c in v.checks:
            if c.stage == "environment":
                name = c.metric.removesuffix("_differs")
                env.append(f"{name}: {c.detail.split(' (recording')[0]}")
            elif not c.passed:
                moved.setdefault(c.stage, []).append(f"{c.metric}={c.value:.3g}")
        where = v.provenance.get("reference_recording", "")
        what = "; ".join(f"{s} {', '.join(m[:3])}" for s, m in moved.items()) or "nothing moved"
        lines.append(f"{v.case_id} [{where}]: {what}")
        if env:
            lines.append(f"  environment: {'; '.join(env)}")
    return lines
