"""Checkpoint synthesizers, one module per `model_type`, and their on-disk cache.

Adding an architecture adds `harness/synth/<model_type>.py` exposing `Spec` (a pydantic
model of the build options) and `build(spec, out_dir)`; nothing here changes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from ..provenance import library_versions
from ..registry import find_module

# model_type spellings that share a synthesizer module.
ALIASES: dict[str, str] = {"gemma4_text": "gemma4"}

COMPLETE_MARKER = ".mlx-parity-complete"


class UnknownSynthesizerError(LookupError):
    pass


def synthesizer(model_type: str) -> ModuleType:
    module = find_module(__name__, model_type, ALIASES)
    # Helper modules (tokenizer, weights, *_spec) are not synthesizers.
    if module is None or not all(hasattr(module, a) for a in ("Spec", "build", "SYNTH_VERSION")):
        name = ALIASES.get(model_type, model_type)
        raise UnknownSynthesizerError(
            f"no synthesizer for model_type {model_type!r} (expected harness/synth/{name}.py)"
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
