"""Execute a model group's capture plan: path sessions one after another, each loading its
model once for all its cases. In-process, or in worker processes so that a crash (segfault,
MLX abort, out of memory) or a hang becomes a failed case and the other cases still run.

One executor (`execute_plan`) reports events through a callback; the process runner feeds
those events over a pipe, the in-process runner applies them directly.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import same_path
from .capture import save_capture
from .cases import CaseError, CaseSpec
from .patches import patched_library_classes
from .paths import SessionOptions, resolve_session_class
from .policy import remote_code
from .records import Capture
from .worker import give_back, prestart, ready, take

Plan = list[tuple["SessionKey", list[tuple[CaseSpec, str]]]]
Emit = Callable[..., None]
Observer = Callable[[str, str], None]


@dataclass(frozen=True)
class SessionKey:
    path: str
    options: SessionOptions


@dataclass
class Outcome:
    captures: dict[tuple[str, str], Capture] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    config_failures: set[str] = field(default_factory=set)  # caused by a case field
    seconds: dict[str, float] = field(default_factory=dict)  # capture time per case

    def apply(self, event: str, *args: Any) -> None:
        if event == "capture":
            case_id, role, capture = args
            self.captures[(case_id, role)] = capture
        elif event == "failed":
            case_id, message, *config = args
            if case_id not in self.failures and config and config[0]:
                self.config_failures.add(case_id)
            self.failures.setdefault(case_id, message)
        elif event == "timing":
            case_id, seconds = args
            self.seconds[case_id] = self.seconds.get(case_id, 0.0) + seconds

    def remaining(self, plan: Plan) -> Plan:
        """The part of `plan` with neither a capture nor a failure yet."""
        left = []
        for key, members in plan:
            todo = [
                (c, r)
                for c, r in members
                if c.id not in self.failures and (c.id, r) not in self.captures
            ]
            if todo:
                left.append((key, todo))
        return left


def one_line(exc: BaseException) -> str:
    """First line of an error; the type is named unless the error is the case's own."""
    text = str(exc).strip().splitlines()
    message = text[0] if text else ""
    if isinstance(exc, CaseError):
        return message
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _release() -> None:
    import mlx.core as mx

    gc.collect()
    mx.clear_cache()


class ExitAttempt(Exception):
    """Code under test tried to end the process (sys.exit, os._exit): a failed case, never
    a silent exit 0 with no report."""


class PatchedLibraries(RuntimeError):
    pass


def _refuse_patched_libraries(key: SessionKey) -> None:
    """A session without an add-on must see the libraries as installed: an add-on imported
    earlier in this process (--isolation none, several model groups) may have replaced
    their classes."""
    if key.options.addon is not None:
        return
    patched = patched_library_classes()
    if patched:
        raise PatchedLibraries(
            f"an add-on imported earlier in this process replaced library classes "
            f"({', '.join(patched[:3])}); comparing against unpatched {key.path} is "
            "impossible here: run with --isolation process"
        )


def _session_failure(exc: BaseException, case: CaseSpec, key: SessionKey) -> tuple[str, bool]:
    field = getattr(exc, "field", None)
    if field:  # the case named something that does not work: say which field
        return f"{case.source}: {field}: loading path {key.path}: {exc}", True
    return f"path {key.path} failed to load: {one_line(exc)}", False


def execute_plan(
    plan: Plan,
    model_dir: Path,
    keep_tensors: Path | None,
    perturbations: dict | None = None,
    *,
    emit: Emit,
) -> None:
    """Run each session of `plan` over its cases. `perturbations`: (case id, role) ->
    (delta, seed) for noise-envelope draws of the reference (see harness.envelope)."""
    failed: set[str] = set()
    for index, (key, members) in enumerate(plan):
        emit("load", key.path, index)
        with remote_code(key.options.trust_remote_code):
            try:
                session_class = resolve_session_class(key.path, key.options.imports)
                _refuse_patched_libraries(key)
                session = session_class(model_dir, key.options)
            except (Exception, SystemExit) as exc:
                for case, _ in members:
                    failed.add(case.id)
                    emit("failed", case.id, *_session_failure(exc, case, key))
                continue
            try:
                for case, role in members:
                    perturb = (perturbations or {}).get((case.id, role))
                    if case.id not in failed and not _capture_one(
                        session, case, role, key, keep_tensors, emit, perturb
                    ):
                        failed.add(case.id)
            finally:
                holds_model = getattr(session, "holds_model", True)
                session.close()
                del session
                if holds_model:  # a full collection costs ~0.2 s; a recording needs none
                    _release()
    emit("done")


def _capture_one(
    session: Any,
    case: CaseSpec,
    role: str,
    key: SessionKey,
    keep: Path | None,
    emit: Emit,
    perturb: tuple | None = None,
) -> bool:
    emit("start", case.id, role, key.path)
    started = time.perf_counter()
    try:
        if perturb is not None:
            from .envelope import perturbation

            session.perturb_embeddings = perturbation(*perturb)
        if role in same_path.CHECKS:
            capture = same_path.capture(role, session, case, key.path)
        else:
            capture = session.capture(case)
        if keep is not None:
            save_capture(capture, keep / case.id / f"{role}.safetensors")
        emit("capture", case.id, role, capture)
        return True
    except CaseError as exc:
        emit("failed", case.id, exc.during(f"{role} path {key.path}"), True)
    except SystemExit as exc:
        emit("failed", case.id, f"{role} path {key.path}: called sys.exit({exc.code!r})")
    except Exception as exc:
        emit("failed", case.id, f"{role} path {key.path}: {one_line(exc)}")
    finally:
        if perturb is not None:
            with contextlib.suppress(AttributeError):
                del session.perturb_embeddings
        emit("timing", case.id, time.perf_counter() - started)
    return False


def _observe_event(observe: Observer, model_dir: Path, event: str, *args: Any) -> None:
    if event == "load":
        observe("load", f"{args[0]} <- {model_dir.name}")
    elif event == "start":
        observe("capture", f"{args[0]} [{args[2]}]")
    elif event == "failed":
        observe("error", f"{args[0]}: {args[1]}")


def run_in_process(
    plan: Plan,
    model_dir: Path,
    keep_tensors: Path | None,
    observe: Observer,
    perturbations: dict | None = None,
) -> Outcome:
    outcome = Outcome()

    def emit(event: str, *args: Any) -> None:
        _observe_event(observe, model_dir, event, *args)
        outcome.apply(event, *args)

    with _no_process_exit():
        execute_plan(plan, model_dir, keep_tensors, perturbations, emit=emit)
    return outcome


@contextlib.contextmanager
def _no_process_exit() -> Iterator[None]:
    """In-process runs share the harness's process: `os._exit` from an add-on would end
    it with no report (and exit 0). Turn it into an error of the case in flight; worker
    processes need no such guard, their death is already a failed case."""
    original = os._exit

    def refuse(code: int) -> None:
        raise ExitAttempt(f"called os._exit({code})")

    os._exit = refuse
    try:
        yield
    finally:
        os._exit = original


def _death(process: Any) -> str:
    code = process.exitcode
    if code is not None and code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def run_in_workers(
    plan: Plan,
    model_dir: Path,
    keep_tensors: Path | None,
    observe: Observer,
    timeout: float,
    prestart_next: bool = False,
    perturbations: dict | None = None,
    reuse: bool = False,
) -> Outcome:
    """Run `plan` in a spawned worker; when it dies or hangs, fail what it was doing and
    start a fresh worker for the rest. `prestart_next` keeps a worker warm for the next
    model group: with `reuse` (the plan runs only the harness's own code) this one, when it
    ends clean, else a spare started now, importing while this one runs."""
    outcome = Outcome()
    remaining = plan
    while remaining:
        settled = len(outcome.captures) + len(outcome.failures)
        worker = take(pristine=not reuse)
        if prestart_next and not reuse:
            prestart()
        finished = handed_on = False
        try:
            worker.conn.send((remaining, model_dir, keep_tensors, perturbations))
            finished = _follow(
                worker.process, worker.conn, remaining, outcome, model_dir, observe, timeout
            )
            # Handed on: imports done, only the harness's code ran there, and nothing
            # failed but case files (an out-of-memory error may leave a process degraded).
            failed = set(outcome.failures) - outcome.config_failures
            if finished and prestart_next and reuse and not failed and ready(worker):
                give_back(worker)
                handed_on = True
        finally:
            if not handed_on:
                if worker.process.is_alive():
                    worker.process.kill()
                worker.process.join()
                worker.conn.close()
        if len(outcome.captures) + len(outcome.failures) == settled:
            # Died before finishing anything: do not respawn forever.
            death = _death(worker.process)
            for _, members in remaining:
                for case, _ in members:
                    outcome.apply("failed", case.id, f"worker {death} outside any case")
        remaining = outcome.remaining(remaining)
    return outcome


def _follow(
    worker: Any,
    conn: Any,
    plan: Plan,
    outcome: Outcome,
    model_dir: Path,
    observe: Observer,
    timeout: float,
) -> bool:
    """Apply the worker's events until its job is done (True) or it died or hung (False)."""
    loading: tuple[str, list[str]] = ("", [])  # path being loaded, and its cases
    current: tuple[str, str] | None = None  # (case id, what it was doing)
    while True:
        if not conn.poll(timeout):
            worker.kill()
            worker.join()
            what = f"timed out after {timeout:g} s"
            _fail_in_flight(outcome, current, loading, what)
            return False
        try:
            event, *args = conn.recv()
        except EOFError:
            worker.join()
            _fail_in_flight(outcome, current, loading, f"worker {_death(worker)}")
            return False
        _observe_event(observe, model_dir, event, *args)
        if event == "done":
            return True
        if event == "load":
            loading, current = (args[0], [c.id for c, _ in plan[args[1]][1]]), None
        elif event == "start":
            loading, current = ("", []), (args[0], f"{args[1]} path {args[2]}")
        else:
            outcome.apply(event, *args)
            current = None


def _fail_in_flight(
    outcome: Outcome, current: tuple[str, str] | None, loading: tuple[str, list[str]], what: str
) -> None:
    if current is not None:
        case_id, doing = current
        outcome.apply("failed", case_id, f"{doing}: {what}")
    path, case_ids = loading
    for case_id in case_ids:
        outcome.apply("failed", case_id, f"loading path {path}: {what}")
