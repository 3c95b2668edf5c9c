"""Orchestration: group cases by model, run each path session once per group (one model in
memory at a time), pair captures and compute verdicts. Never formats anything."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import provenance, worker
from .cases import CaseError, CaseSpec, load_cases
from .compare import verdict as compute_verdict
from .execute import Plan, SessionKey, one_line, run_in_process, run_in_workers
from .models import ModelUnavailable, resolve_model
from .paths import PathError, SessionOptions, resolve_session_class
from .records import Status, Verdict

Observer = Callable[[str, str], None]  # (event, message) for progress displays


@dataclass(frozen=True)
class RunResult:
    verdicts: tuple[Verdict, ...]
    started: str
    finished: str
    provenance: dict[str, str] = field(default_factory=dict)
    config_errors: int = 0
    # False when the run was interrupted: the verdicts are those of the cases that finished.
    complete: bool = True

    @property
    def exit_code(self) -> int:
        if not self.complete:
            return 130
        if self.config_errors:
            return 2
        return 1 if any(v.status in (Status.FAIL, Status.ERROR) for v in self.verdicts) else 0


@dataclass(frozen=True)
class RunOptions:
    layer_probes: bool = True
    # Write every capture's full tensors here (safetensors); None keeps only statistics.
    keep_tensors: Path | None = None
    # "process": path sessions run in worker processes, so a crash or a hang fails only
    # the case in flight; "none": in this process (faster start, no crash isolation).
    isolation: Literal["process", "none"] = "process"
    timeout: float = 600.0  # seconds per case capture (and per model load) in a worker


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_provenance() -> dict[str, str]:
    return {
        "commit": provenance.git_commit(),
        **provenance.machine(),
        **{f"version_{k}": v for k, v in provenance.library_versions().items()},
    }


def _error_verdict(case: CaseSpec, status: Status, reason: str, config: bool = False) -> Verdict:
    return Verdict(
        case_id=case.id, source=case.source, status=status, reason=reason, config_error=config
    )


def _session_keys(
    case: CaseSpec, model_type: str, options: RunOptions
) -> list[tuple[SessionKey, str]]:
    """The (session, role) pairs a case needs; unknown names raise a CaseError naming the
    field."""
    from .addons import check_addon_name

    keys = []
    for role, path in (("reference", case.paths.reference), ("candidate", case.paths.candidate)):
        try:
            takes_addon = getattr(resolve_session_class(path), "takes_addon", True)
        except PathError as exc:
            raise CaseError(case.source, str(exc), case.id, f"paths.{role}") from None
        if takes_addon:
            try:
                check_addon_name(case.addon, model_type)
            except PathError as exc:
                raise CaseError(case.source, str(exc), case.id, "addon") from None
        session_options = SessionOptions(
            addon=case.addon if takes_addon else None,
            trust_remote_code=case.trust_remote_code,
            layer_probes=options.layer_probes,
        )
        keys.append((SessionKey(path, session_options), role))
    return keys


def _plan(
    group: list[CaseSpec], model_dir: Path, done: dict[str, Verdict], options: RunOptions
) -> Plan:
    """Sessions for the group's cases. Sessions without an add-on come first: an engine
    add-on may patch library classes when imported, which must not reach them."""
    from .paths.loading import model_type_of

    model_type = model_type_of(model_dir)
    plan: dict[SessionKey, list[tuple[CaseSpec, str]]] = {}
    for case in group:
        try:
            case.check_images()
            keys = _session_keys(case, model_type, options)
        except CaseError as exc:
            done[case.id] = _error_verdict(case, Status.ERROR, str(exc), True)
            continue
        for key, role in keys:
            plan.setdefault(key, []).append((case, role))
    return sorted(plan.items(), key=lambda item: item[0].options.addon is not None)


def _run_group(
    group: list[CaseSpec], observe: Observer, options: RunOptions, more: bool = False
) -> list[Verdict]:
    """Verdicts of one model group; `more`: other groups follow (warm a worker for them)."""
    done: dict[str, Verdict] = {}
    try:
        model_dir = resolve_model(group[0])
        plan = _plan(group, model_dir, done, options)
    except ModelUnavailable as exc:
        return [_error_verdict(c, Status.SKIP, str(exc)) for c in group]
    except (CaseError, PathError) as exc:
        return [_error_verdict(c, Status.ERROR, one_line(exc), True) for c in group]
    except Exception as exc:
        return [_error_verdict(c, Status.ERROR, one_line(exc)) for c in group]

    from .paths.loading import image_token_id_of

    if options.isolation == "process":
        outcome = run_in_workers(
            plan, model_dir, options.keep_tensors, observe, options.timeout, prestart_next=more
        )
    else:
        outcome = run_in_process(plan, model_dir, options.keep_tensors, observe)
    captures, failures = outcome.captures, outcome.failures
    image_token_id = image_token_id_of(model_dir)
    for case in group:
        if case.id in done:
            continue
        if case.id in failures:
            reason = failures[case.id]
            if not reason.startswith(case.source):
                reason = f"{case.source}: {reason}"
            config = case.id in outcome.config_failures
            done[case.id] = _error_verdict(case, Status.ERROR, reason, config)
        else:
            done[case.id] = compute_verdict(
                case,
                captures[(case.id, "reference")],
                captures[(case.id, "candidate")],
                image_token_id,
            )
    return [done[c.id] for c in group]


def run_cases(
    cases: Iterable[CaseSpec],
    load_errors: Iterable[CaseError] = (),
    observe: Observer = lambda event, message: None,
    options: RunOptions = RunOptions(),
) -> RunResult:
    """Run every case; on KeyboardInterrupt (SIGINT, or SIGTERM turned into it by the CLI)
    stop and return the verdicts so far, marked incomplete."""
    started = _now()
    verdicts = [
        Verdict(
            case_id=e.case_id,
            source=e.source,
            status=Status.ERROR,
            reason=str(e),
            config_error=True,
        )
        for e in load_errors
    ]
    groups: dict[str, list[CaseSpec]] = {}
    for case in cases:
        groups.setdefault(case.model_key(), []).append(case)
    complete = True
    try:
        for index, group in enumerate(groups.values()):
            more = index + 1 < len(groups)
            for v in _run_group(group, observe, options, more):
                observe("verdict", f"{v.case_id}: {v.status.value}")
                verdicts.append(v)
    except KeyboardInterrupt:
        complete = False
        observe("interrupted", f"{len(verdicts)} verdict(s) kept")
    finally:
        worker.release_spare()
    config_errors = sum(v.config_error for v in verdicts)
    return RunResult(tuple(verdicts), started, _now(), run_provenance(), config_errors, complete)


def run(
    targets: Iterable[Path],
    observe: Observer = lambda event, message: None,
    options: RunOptions = RunOptions(),
) -> RunResult:
    cases, errors = load_cases(targets)
    return run_cases(cases, errors, observe, options)
