"""Worker processes, started early: a worker imports the MLX stack while the parent is
still parsing cases, then waits for its job. Light on imports itself, so the parent can
start one before importing anything heavy."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

_context = multiprocessing.get_context("spawn")
_spare: Worker | None = None


@dataclass
class Worker:
    process: Any
    conn: Any
    # No library fix applied in it yet (harness.paths.loading.apply_library_fixes): what a
    # group running code from elsewhere must get, so that its results do not depend on
    # which group ran before it.
    pristine: bool = True


def exit_when_orphaned(parent: int) -> None:
    """A worker whose parent was killed outright must not keep a model loaded forever."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(1)


def _serve(conn: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    threading.Thread(target=exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    # mlx-vlm's prefill progress bar would otherwise create a process-shared semaphore that
    # outlives the worker (a resource_tracker warning in the parent).
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())
    import mlx_lm  # noqa: F401  (warm-up while the parent prepares the job)
    import mlx_vlm  # noqa: F401

    from .case_yaml import restrict_image_formats

    restrict_image_formats()  # no image decoder that runs an external program (EPS: gs)
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()  # deprecation chatter is not a CI log line

    from .execute import execute_plan
    from .patches import patched_library_classes
    from .paths.loading import fixes_applied

    # Jobs until told to stop. After each, say whether this process is still as a fresh
    # one would be (no library class replaced): the parent hands only such a worker on.
    while (job := conn.recv()) is not None:
        execute_plan(*job, emit=lambda *event: conn.send(event))
        conn.send(("ready", not patched_library_classes(), not fixes_applied()))
    conn.close()


def _start() -> Worker:
    parent, child = _context.Pipe(duplex=True)
    process = _context.Process(target=_serve, args=(child,), daemon=True)
    process.start()
    child.close()
    return Worker(process, parent)


def prestart() -> None:
    """Start a spare worker now, to be handed the next job."""
    global _spare
    if _spare is None or not _spare.process.is_alive():
        _spare = _start()


def take(pristine: bool = False) -> Worker:
    """The spare worker if one is warm (and, when `pristine` is asked, no library fix was
    applied in it), else a fresh one."""
    global _spare
    if _spare is not None and pristine and not _spare.pristine:
        release_spare()
    worker, _spare = _spare, None
    if worker is None or not worker.process.is_alive():
        worker = _start()
    return worker


def give_back(worker: Worker) -> None:
    """A worker that finished a job and may serve the next (see `ready`): it becomes the
    spare, which it beats (its imports are done, and more of them); a spare started in the
    meantime is stopped."""
    global _spare
    if _spare is not None and _spare is not worker:
        release_spare()
    _spare = worker


def ready(worker: Worker, timeout: float = 30.0) -> bool:
    """After a job's last event: whether the worker says it is still clean (no library
    class replaced); records whether it is still pristine."""
    try:
        if worker.conn.poll(timeout):
            event, *args = worker.conn.recv()
            if event == "ready" and len(args) == 2:
                worker.pristine = bool(args[1])
                return bool(args[0])
    except (EOFError, OSError):
        pass
    return False


def release_spare() -> None:
    """Stop an unused spare (end of run)."""
    global _spare
    if _spare is not None:
        with contextlib.suppress(OSError):
            _spare.conn.send(None)
        _spare.process.join(timeout=10)
        if _spare.process.is_alive():
            _spare.process.kill()
        _spare = None
