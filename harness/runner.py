"""Orchestration: group cases by model, run each path session once per group (one model in
memory at a time), pair captures and compute verdicts. Never formats anything."""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from . import provenance, same_path, worker
from .cases import MAX_IMAGE_PIXELS, CaseError, CaseSpec, load_cases
from .compare import needs_envelope
from .compare import verdict as compute_verdict
from .envelope import delta_of
from .execute import Outcome, Plan, SessionKey, one_line, run_in_process, run_in_workers
from .models import ModelUnavailable, resolve_model
from .paths import (
    BUILTIN,
    PathError,
    PathUnavailable,
    SessionOptions,
    check_requirements,
    resolve_session_class,
)
from .paths.loading import image_token_id_of, model_type_of
from .policy import ImportPolicy, custom_code_in
from .records import Status, Verdict

# (event, payload) for progress displays: "verdict" carries a Verdict, "planned" the number
# of cases, other events ("load", "capture", "error", "interrupted") a message.
Observer = Callable[[str, Any], None]

EXIT_PASSED, EXIT_FAILED, EXIT_CONFIG, EXIT_NOTHING_COMPARED, EXIT_INTERRUPTED = 0, 1, 2, 5, 130


@dataclass(frozen=True)
class RunResult:
    verdicts: tuple[Verdict, ...]
    started: str
    finished: str
    provenance: dict[str, str] = field(default_factory=dict)
    config_errors: int = 0
    # False when the run was interrupted: the verdicts are those of the cases that finished.
    complete: bool = True

    # --strict: a skipped case fails the run.
    strict: bool = False

    @property
    def compared(self) -> int:
        """Cases whose two captures were compared (passed or failed)."""
        return sum(v.status in (Status.PASS, Status.FAIL) for v in self.verdicts)

    @property
    def exit_code(self) -> int:
        """130 interrupted, 2 a bad case file or argument, 1 a failure or run-time error (or
        a skip under --strict), 5 nothing was compared (like pytest's "no tests ran"),
        0 every compared case passed."""
        if not self.complete:
            return EXIT_INTERRUPTED
        if self.config_errors:
            return EXIT_CONFIG
        bad = {Status.FAIL, Status.ERROR} | ({Status.SKIP} if self.strict else set())
        if any(v.status in bad for v in self.verdicts):
            return EXIT_FAILED
        return EXIT_PASSED if self.compared else EXIT_NOTHING_COMPARED


@dataclass(frozen=True)
class RunOptions:
    layer_probes: bool = True
    # Write every capture's full tensors here (safetensors); None keeps only statistics.
    keep_tensors: Path | None = None
    # "process": path sessions run in worker processes, so a crash or a hang fails only
    # the case in flight; "none": in this process (faster start, no crash isolation).
    isolation: Literal["process", "none"] = "process"
    timeout: float = 600.0  # seconds per case capture (and per model load) in a worker
    # What case files may make the harness do: given on the command line, never by a case.
    imports: ImportPolicy = ImportPolicy()
    trust_remote_code: bool = False  # --trust-remote-code: cases MAY then ask for it
    strict: bool = False
    max_image_pixels: int = MAX_IMAGE_PIXELS
    # Where the `golden` path reads recordings (--golden-dir); under `strict` a recording
    # made under other library versions, platform or checkpoint is an error of the case.
    golden_dir: Path = Path("reference")


def utc_now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def run_provenance() -> dict[str, str]:
    return {
        "commit": provenance.git_commit(),
        **provenance.machine(),
        **{f"version_{k}": v for k, v in provenance.library_versions().items()},
    }


def load_error_verdict(error: CaseError) -> Verdict:
    """The verdict of a case file that did not load: an error of the case's own making."""
    return Verdict(
        case_id=error.case_id,
        source=error.source,
        status=Status.ERROR,
        reason=str(error),
        config_error=True,
    )


def _error_verdict(case: CaseSpec, status: Status, reason: str, config: bool = False) -> Verdict:
    return Verdict(
        case_id=case.id, source=case.source, status=status, reason=reason, config_error=config
    )


def _check_trust(case: CaseSpec, code: list[str], options: RunOptions) -> None:
    """A checkpoint's own code (`code`: where it asks for it) runs only when the case asks
    AND the command line allows."""
    if case.trust_remote_code and not options.trust_remote_code:
        raise CaseError(
            case.source,
            "the case asks to run the checkpoint's code; pass --trust-remote-code to allow it",
            case.id,
            "trust_remote_code",
        )
    if code and not case.trust_remote_code:
        raise CaseError(
            case.source,
            f"the checkpoint carries its own code or files that cannot be checked "
            f"({', '.join(code[:4])}); its code runs only with trust_remote_code: true in "
            "the case and --trust-remote-code",
            case.id,
            "model",
        )


def _session_keys(
    case: CaseSpec, model_type: str, options: RunOptions
) -> list[tuple[SessionKey, str]]:
    """The (session, role) pairs a case needs; unknown or disallowed names raise a
    CaseError naming the field."""
    from .addons import check_addon_name

    keys = []
    roles = [("reference", case.paths.reference), ("candidate", case.paths.candidate)]
    if case.paths.third is not None:
        roles.append(("third", case.paths.third))
    for role, path in roles:
        try:
            session_class = resolve_session_class(path, options.imports)
            takes_addon = getattr(session_class, "takes_addon", True)
        except PathError as exc:
            raise CaseError(case.source, str(exc), case.id, f"paths.{role}") from None
        try:
            check_requirements(path, session_class)
        except PathUnavailable as exc:
            raise PathUnavailable(f"{case.source}: paths.{role}: {exc}") from None
        if takes_addon:
            try:
                check_addon_name(case.addon, model_type, options.imports)
            except PathError as exc:
                raise CaseError(case.source, str(exc), case.id, "addon") from None
        session_options = SessionOptions(
            addon=case.addon if takes_addon else None,
            trust_remote_code=case.trust_remote_code and options.trust_remote_code,
            layer_probes=options.layer_probes,
            imports=options.imports,
            golden_dir=options.golden_dir.absolute(),
            golden_strict=options.strict,
        )
        keys.append((SessionKey(path, session_options), role))
    return keys


def _plan(
    group: list[CaseSpec], model_dir: Path, done: dict[str, Verdict], options: RunOptions
) -> Plan:
    """Sessions for the group's cases. Sessions without an add-on come first: an engine
    add-on may patch library classes when imported, which must not reach them."""
    model_type = model_type_of(model_dir)
    code = custom_code_in(model_dir)  # read once per checkpoint, not per case
    plan: dict[SessionKey, list[tuple[CaseSpec, str]]] = {}
    again: list[tuple[SessionKey, CaseSpec]] = []
    for case in group:
        try:
            case.check_images(max_pixels=options.max_image_pixels)
            _check_trust(case, code, options)
            keys = _session_keys(case, model_type, options)
        except CaseError as exc:
            done[case.id] = _error_verdict(case, Status.ERROR, str(exc), True)
            continue
        except PathUnavailable as exc:
            done[case.id] = _error_verdict(case, Status.SKIP, str(exc))
            continue
        for key, role in keys:
            plan.setdefault(key, []).append((case, role))
        if same_path.roles(case):
            again.append((next(k for k, role in keys if role == "candidate"), case))
    # A case with same-path checks is among the candidate session's first prompts (its
    # capture as fresh as the session can give), each second capture right after it.
    for key, case in reversed(again):
        members = [m for m in plan[key] if m[0] is not case]
        seconds = [(case, role) for role in same_path.roles(case)]
        plan[key] = [(case, "candidate"), *seconds, *members]
    return sorted(plan.items(), key=lambda item: item[0].options.addon is not None)


def _run_group(
    group: list[CaseSpec], observe: Observer, options: RunOptions, more: bool = False
) -> list[Verdict]:
    """Verdicts of one model group, with what the report needs besides the comparison:
    the checkpoint's architecture, the capture time, the image file names."""
    started = time.perf_counter()
    verdicts, model_dir, seconds = _compare_group(group, observe, options, more)
    architecture = ""
    if model_dir is not None:
        with contextlib.suppress(PathError):
            architecture = model_type_of(model_dir)
    share = (time.perf_counter() - started) / max(len(group), 1)
    by_id = {c.id: c for c in group}
    return [
        dataclasses.replace(
            v,
            architecture=architecture,
            duration=seconds.get(v.case_id, share),
            image_names=tuple(p.name for p in _image_files(by_id[v.case_id])),
        )
        for v in verdicts
    ]


def _image_files(case: CaseSpec) -> list[Path]:
    try:
        return case.image_files
    except CaseError:
        return []


def _compare_group(
    group: list[CaseSpec], observe: Observer, options: RunOptions, more: bool
) -> tuple[list[Verdict], Path | None, dict[str, float]]:
    """Verdicts of one model group; `more`: other groups follow (warm a worker for them)."""
    done: dict[str, Verdict] = {}
    try:
        model_dir = resolve_model(group[0], options.timeout)
        plan = _plan(group, model_dir, done, options)
        image_token_id = image_token_id_of(model_dir)
    except ModelUnavailable as exc:
        return [_error_verdict(c, Status.SKIP, str(exc)) for c in group], None, {}
    except (CaseError, PathError) as exc:
        return [_error_verdict(c, Status.ERROR, one_line(exc), True) for c in group], None, {}
    except Exception as exc:
        return [_error_verdict(c, Status.ERROR, one_line(exc)) for c in group], None, {}

    outcome = _execute(plan, model_dir, observe, options, more, options.keep_tensors)
    captures, failures = outcome.captures, outcome.failures
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
                same_path=_second_captures(captures, case),
                third=captures.get((case.id, "third")),
            )
    _add_envelopes(group, plan, done, captures, model_dir, image_token_id, observe, options, more)
    return [done[c.id] for c in group], model_dir, outcome.seconds


def _execute(
    plan: Plan,
    model_dir: Path,
    observe: Observer,
    options: RunOptions,
    more: bool,
    keep_tensors: Path | None = None,
    perturbations: dict | None = None,
) -> Outcome:
    if options.isolation == "process":
        return run_in_workers(
            plan,
            model_dir,
            keep_tensors,
            observe,
            options.timeout,
            more,
            perturbations,
            reuse=_harness_code_only(plan, model_type_of(model_dir)),
        )
    return run_in_process(plan, model_dir, keep_tensors, observe, perturbations)


def _harness_code_only(plan: Plan, model_type: str) -> bool:
    """Whether the plan runs only the harness's own paths and add-ons on the libraries (no
    code allowed from the command line, no checkpoint code): its worker may then serve the
    next model group. Code from elsewhere always gets a fresh process per group."""
    from .addons import is_builtin

    return all(
        key.path in BUILTIN
        and (
            key.options.addon is None
            or is_builtin(key.options.addon, model_type, key.options.imports)
        )
        and not key.options.trust_remote_code
        for key, _ in plan
    )


def _add_envelopes(
    group: list[CaseSpec],
    plan: Plan,
    done: dict[str, Verdict],
    captures: dict,
    model_dir: Path,
    image_token_id: int | None,
    observe: Observer,
    options: RunOptions,
    more: bool = False,
) -> None:
    """Cases whose first difference was tolerated at the embeddings: run the reference
    again with that difference pattern as noise (`noise_envelope` draws, one extra session
    of the reference path per group) and recompute their verdicts with the envelope."""
    wanted = {
        c.id: c
        for c in group
        if c.noise_envelope
        and done[c.id].status in (Status.PASS, Status.FAIL)
        and needs_envelope(done[c.id])
    }
    envelope_plan: dict[SessionKey, list[tuple[CaseSpec, str]]] = {}
    perturbations = {}
    for key, members in plan:
        for case, role in members:
            delta = envelope_delta(captures, case.id)
            if case.id in wanted and role == "reference" and delta is not None:
                for draw in range(case.noise_envelope):
                    envelope_plan.setdefault(key, []).append((case, f"envelope.{draw}"))
                    perturbations[(case.id, f"envelope.{draw}")] = (delta, draw)
    if not envelope_plan:
        return
    # `more`: the next group's worker starts while the envelope runs.
    outcome = _execute(
        list(envelope_plan.items()), model_dir, observe, options, more, None, perturbations
    )
    for case_id, case in wanted.items():
        draws = [
            outcome.captures[(case_id, f"envelope.{d}")]
            for d in range(case.noise_envelope)
            if (case_id, f"envelope.{d}") in outcome.captures
        ]
        if case_id in outcome.failures or not draws:
            note = f"noise envelope unavailable: {outcome.failures.get(case_id, 'no draws')}"
            done[case_id] = dataclasses.replace(done[case_id], envelope_note=note)
            continue
        done[case_id] = compute_verdict(
            case,
            captures[(case_id, "reference")],
            captures[(case_id, "candidate")],
            image_token_id,
            envelope=draws,
            same_path=_second_captures(captures, case),
            third=captures.get((case_id, "third")),
        )


def _second_captures(captures: dict, case: CaseSpec) -> dict[str, Any]:
    return {r: captures[(case.id, r)] for r in same_path.roles(case) if (case.id, r) in captures}


def envelope_delta(captures: dict, case_id: str):
    reference = captures.get((case_id, "reference"))
    candidate = captures.get((case_id, "candidate"))
    if reference is None or candidate is None:
        return None
    return delta_of(reference, candidate)


def run_cases(
    cases: Iterable[CaseSpec],
    load_errors: Iterable[CaseError] = (),
    observe: Observer = lambda event, message: None,
    options: RunOptions = RunOptions(),
    *,
    more_follow: bool = False,
) -> RunResult:
    """Run every case; on KeyboardInterrupt (SIGINT, or SIGTERM turned into it by the CLI)
    stop and return the verdicts so far, marked incomplete. `more_follow`: the caller runs
    more model groups in later calls (the pytest plugin runs one per call): a spare worker
    is kept warm for them, which the caller releases (`worker.release_spare()`)."""
    from . import offline

    offline()
    started = utc_now()
    verdicts = [load_error_verdict(e) for e in load_errors]
    groups: dict[str, list[CaseSpec]] = {}
    for case in cases:
        groups.setdefault(case.model_key(), []).append(case)
    observe("planned", len(verdicts) + sum(map(len, groups.values())))
    for v in verdicts:
        observe("verdict", v)
    complete = True
    try:
        for index, group in enumerate(groups.values()):
            more = more_follow or index + 1 < len(groups)
            for v in _run_group(group, observe, options, more):
                observe("verdict", v)
                verdicts.append(v)
    except KeyboardInterrupt:
        complete = False
        observe("interrupted", f"{len(verdicts)} verdict(s) kept")
    finally:
        if not (more_follow and complete):
            worker.release_spare()
    config_errors = sum(v.config_error for v in verdicts)
    return RunResult(
        tuple(verdicts),
        started,
        utc_now(),
        run_provenance(),
        config_errors,
        complete,
        strict=options.strict,
    )


def run(
    targets: Iterable[Path],
    observe: Observer = lambda event, message: None,
    options: RunOptions = RunOptions(),
    include_roots: Iterable[Path] = (),
) -> RunResult:
    """Load the case files under `targets` and run them (`include_roots`: directories
    beyond each target's own that `include:` may reach)."""
    cases, errors = load_cases(targets, include_roots=tuple(include_roots))
    return run_cases(cases, errors, observe, options)
