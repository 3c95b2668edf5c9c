"""Checkpoint synthesizers and their on-disk cache, plus helpers every synthesizer shares
(tokenizer, streamed weights). Each architecture's synthesizer lives in its folder,
harness/architectures/<model_type>/synth.py (`Spec`, `build(spec, out_dir)`,
`SYNTH_VERSION`); nothing here changes when one is added.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from ..provenance import library_versions

COMPLETE_MARKER = ".mlx-parity-complete"


class UnknownSynthesizerError(LookupError):
    pass


def synthesizer(model_type: str) -> ModuleType:
    from ..architectures import component

    module = component(model_type, "synth")
    # Helper modules (tokenizer, weights, *_spec) are not synthesizers.
    if module is None or not all(hasattr(module, a) for a in ("Spec", "build", "SYNTH_VERSION")):
        raise UnknownSynthesizerError(
            f"no synthesizer for model_type {model_type!r} (expected "
            f"harness/architectures/{model_type}/synth.py)"
        )
    return module


def cache_root() -> Path:
    default = Path.home() / ".cache" / "mlx-parity"
    return Path(os.environ.get("MLX_PARITY_CACHE", default)) / "synth"


def cache_key(model_type: str, spec: Any, module: ModuleType) -> str:
    payload = {
        "model_type": model_type,
        "synth_version": module.SYNTH_VERSION,
        "spec": spec.model_dump(mode="json"),
        "libraries": library_versions(),
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class SynthesisError(RuntimeError):
    """A synthesizer failed on a spec its `Spec` accepted: a synthesizer bug or the machine
    (disk, memory), never a bare KeyError from deep inside a library."""


# A staging directory is `.<target>.<builder>.<pid>.<random>`: `builder` identifies the host
# and PID namespace, so a later build can tell a dead builder's leftovers from a live one's.
_STAGING = re.compile(r"^\.(?P<target>.+)\.(?P<builder>[0-9a-f]{8})\.(?P<pid>\d+)\.[^.]+$")
# Leftovers whose builder cannot be checked (another host, or the old unnamed layout) are
# removed only when nothing in them changed for this long: far beyond any build.
STALE_AFTER_SECONDS = 24 * 3600.0


def _builder_id() -> str:
    ident = socket.gethostname()
    with contextlib.suppress(OSError):
        ident += os.readlink("/proc/self/ns/pid")  # containers may share a hostname
    return hashlib.sha256(ident.encode()).hexdigest()[:8]


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def _last_change(directory: Path) -> float:
    times = [directory.stat().st_mtime]
    with contextlib.suppress(OSError):
        times += [entry.stat().st_mtime for entry in directory.iterdir()]
    return max(times)


def _is_stale(staging: Path, now: float) -> bool:
    match = _STAGING.match(staging.name)
    if match and match["builder"] == _builder_id():
        return not _pid_alive(int(match["pid"]))
    try:
        return now - _last_change(staging) > STALE_AFTER_SECONDS
    except OSError:
        return False  # gone already, or unreadable: leave it


def remove_stale_staging(root: Path) -> list[Path]:
    """Remove staging directories left by killed builds; never a live builder's."""
    removed = []
    now = time.time()
    with contextlib.suppress(OSError):
        for entry in root.iterdir():
            # Only our own staging names: `.<model_type>-<16 hex key>...`.
            if not re.match(r"^\.[^.].*-[0-9a-f]{16}[.-]", entry.name) or not entry.is_dir():
                continue
            if entry.is_symlink() or not _is_stale(entry, now):
                continue
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def ensure_checkpoint(model_type: str, options: Mapping[str, Any]) -> Path:
    """Return the cached checkpoint for (model_type, options), building it on first use.

    Invalid options raise the Spec's pydantic ValidationError (its `loc` names the option);
    a build that fails anyway raises SynthesisError naming the model_type and the spec."""
    module = synthesizer(model_type)
    spec = module.Spec.model_validate(dict(options))
    target = cache_root() / f"{model_type}-{cache_key(model_type, spec, module)}"
    if (target / COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(target.parent)
    # Build beside the target and rename: a crashed or concurrent build never leaves a
    # half-written directory under the cached name.
    prefix = f".{target.name}.{_builder_id()}.{os.getpid()}."
    staging = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    try:
        try:
            module.build(spec, staging)
        except Exception as exc:
            options_json = json.dumps(spec.model_dump(mode="json"), sort_keys=True)
            raise SynthesisError(
                f"the {model_type} synthesizer failed on spec {options_json}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        (staging / "synth_spec.json").write_text(
            json.dumps({"model_type": model_type, **spec.model_dump(mode="json")}, indent=2)
        )
        (staging / COMPLETE_MARKER).write_text("")
        try:
            staging.rename(target)
        except OSError:
            if not (target / COMPLETE_MARKER).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def cached_checkpoint(model_type: str, options: Mapping[str, Any]) -> Path | None:
    """The cached checkpoint for (model_type, options) if it is complete, else None.
    Validates the options (a ValidationError names the option); builds nothing."""
    module = synthesizer(model_type)
    spec = module.Spec.model_validate(dict(options))
    target = cache_root() / f"{model_type}-{cache_key(model_type, spec, module)}"
    return target if (target / COMPLETE_MARKER).exists() else None


class SynthesisTimeout(SynthesisError):
    pass


def _build_in_child(model_type: str, options: dict, conn: Any) -> None:
    try:
        conn.send(("ok", str(ensure_checkpoint(model_type, options))))
    except Exception as exc:  # reported to the parent as one line
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _serve_builds(conn: Any) -> None:
    """A builder process: builds until told to stop. It stays warm between builds, so the
    MLX stack a synthesizer needs (~6 s of imports) is imported once per run, not once per
    checkpoint; each build is seeded by its own spec and depends on nothing earlier."""
    import signal
    import threading

    from ..worker import exit_when_orphaned

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    threading.Thread(target=exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    import gc

    while (job := conn.recv()) is not None:
        model_type, options, cache = job
        os.environ["MLX_PARITY_CACHE"] = cache  # where the parent's cache is now
        _build_in_child(model_type, options, conn)
        gc.collect()  # a build's weights are on disk: keep no buffers while workers load
        if "mlx.core" in sys.modules:
            sys.modules["mlx.core"].clear_cache()


_builder: tuple[Any, Any] | None = None  # (process, connection) of the warm builder


def _take_builder() -> tuple[Any, Any]:
    global _builder
    if _builder is None or not _builder[0].is_alive():
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe(duplex=True)
        process = context.Process(target=_serve_builds, args=(child,), daemon=True)
        process.start()
        child.close()
        _builder = (process, parent)
    return _builder


def _drop_builder() -> None:
    global _builder
    if _builder is not None:
        process, conn = _builder
        if process.is_alive():
            process.kill()
        process.join()
        conn.close()
        _builder = None


def ensure_checkpoint_within(model_type: str, options: Mapping[str, Any], timeout: float) -> Path:
    """`ensure_checkpoint`, with a build (a cache miss) run in a builder process killed
    after `timeout` seconds: a case asking for a large preset, or a build that crashes,
    costs that case only, never the run (the next build gets a fresh builder)."""
    cached = cached_checkpoint(model_type, options)
    if cached is not None:
        return cached
    process, conn = _take_builder()
    try:
        # The cache as the parent resolves it now (absolute: the builder's working
        # directory and HOME are those it started with).
        conn.send((model_type, dict(options), str(cache_root().parent.absolute())))
        if not conn.poll(timeout):
            _drop_builder()
            raise SynthesisTimeout(
                f"building the {model_type} checkpoint took longer than {timeout:g} s "
                "(--timeout); build it once with `mlx-parity synth` to cache it"
            )
        status, payload = conn.recv()
    except (EOFError, OSError):
        process.join()
        code = process.exitcode
        _drop_builder()
        raise SynthesisError(f"the {model_type} synthesizer died (exit code {code})") from None
    except BaseException:  # interrupted mid-build: the builder's state is unknown
        _drop_builder()
        raise
    if status != "ok":
        raise SynthesisError(payload)
    return Path(payload)
