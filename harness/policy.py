"""What a case file may make the harness do. Case files are data: they name built-in paths
and add-ons freely, but code outside the harness (`module:Class`) is imported only when the
person running the gate allowed its module on the command line (`--allow-import`, or the
`MLX_PARITY_ALLOW_IMPORT` environment variable), or an installed package registered it
under an entry point group. A checkpoint's own code (transformers `auto_map`, mlx-lm
`model_file`) runs only when the case sets `trust_remote_code` AND the command line passed
`--trust-remote-code`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ENV_ALLOW_IMPORT = "MLX_PARITY_ALLOW_IMPORT"
ENTRY_POINT_GROUPS = {"addon": "mlx_parity.addons", "path": "mlx_parity.paths"}
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


class NotAllowed(Exception):
    """A case named code the person running the gate did not allow."""


@dataclass(frozen=True)
class ImportPolicy:
    """Modules (and their submodules) that `module:Class` names may import."""

    allowed: tuple[str, ...] = ()
    # Add-on classes handed over as objects by Python code (the pytest `parity` fixture):
    # (name, class) pairs. A case file cannot put anything here: only code that already
    # holds the class can, so nothing is imported on a case's behalf.
    addon_classes: tuple[tuple[str, type], ...] = ()

    def given_addon(self, name: str) -> type | None:
        return dict(self.addon_classes).get(name)

    @classmethod
    def from_sources(cls, flags: Iterable[str] = (), environ: Any = None) -> ImportPolicy:
        environ = os.environ if environ is None else environ
        from_env = [m.strip() for m in environ.get(ENV_ALLOW_IMPORT, "").split(",")]
        names = [*flags, *from_env]
        bad = [n for n in names if n and not _MODULE.match(n)]
        if bad:
            raise ValueError(f"--allow-import takes module names, got {bad[0]!r}")
        return cls(tuple(sorted({n for n in names if n})))

    def allows_module(self, module_name: str) -> bool:
        return any(module_name == a or module_name.startswith(a + ".") for a in self.allowed)


@functools.cache
def registered(kind: str) -> dict[str, str]:
    """Entry points of `kind` ('addon' or 'path') installed packages declare: name ->
    'module:attr'. Reads package metadata only (once per process: every case and role asks,
    and scanning every installed distribution is not free); nothing is imported."""
    return {ep.name: ep.value for ep in metadata.entry_points(group=ENTRY_POINT_GROUPS[kind])}


def check_target(target: str, kind: str, policy: ImportPolicy) -> str:
    """The 'module:Class' a case's `target` may import, or NotAllowed. A registered entry
    point may be named by its name or by its value."""
    entries = registered(kind)
    if target in entries:
        return entries[target]
    if target in entries.values():
        return target
    module_name, sep, attr = target.partition(":")
    if not sep or not _MODULE.match(module_name) or not attr.isidentifier():
        raise NotAllowed(f"{target!r} is not of the form 'package.module:Class'")
    if not policy.allows_module(module_name):
        top = module_name.partition(".")[0]
        raise NotAllowed(
            f"{kind} {target!r} names code outside mlx-parity; it is imported only when "
            f"allowed: pass --allow-import {top} (or set {ENV_ALLOW_IMPORT}={top}), or "
            f"register it under the entry point group {ENTRY_POINT_GROUPS[kind]!r}"
        )
    return target


# --- a checkpoint's own code -----------------------------------------------------------

_CODE_KEYS = ("auto_map", "model_file")
# A checkpoint's JSON files are scanned whole: tokenizer.json of a 262k vocabulary is ~33 MB.
MAX_SCANNED_JSON_BYTES = 64 << 20


def custom_code_in(model_dir: Path) -> list[str]:
    """Where a checkpoint asks a loader to run its own code: `auto_map` / `model_file`
    entries of its JSON configs, and Python files beside them. A JSON file that cannot be
    read safely (a FIFO, a device, a link to /dev/zero, over the size cap) is listed too,
    with why: what a loader would find in it is unknown, so the checkpoint is refused."""
    from .models import DataFileError, UnreadableFileError, read_json  # models imports this

    found = []
    for config in sorted(model_dir.glob("*.json")):
        try:
            data = read_json(config, MAX_SCANNED_JSON_BYTES)
        except UnreadableFileError as exc:
            found.append(str(exc))
            continue
        except DataFileError:  # not JSON at all: no loader finds code in it
            continue
        except OSError:  # vanished since the listing
            continue
        found += [f"{config.name}:{key}" for key in _CODE_KEYS if _has_key(data, key)]
    found += [p.name for p in sorted(model_dir.glob("*.py"))]
    return found


def _has_key(data: Any, key: str, depth: int = 0) -> bool:
    if depth > 8:
        return False
    if isinstance(data, dict):
        return key in data or any(_has_key(v, key, depth + 1) for v in data.values())
    if isinstance(data, list):
        return any(_has_key(v, key, depth + 1) for v in data)
    return False


class RemoteCodeRefused(RuntimeError):
    pass


_remote_code_allowed = False
_GUARDED = ("get_class_from_dynamic_module", "get_class_in_module", "check_imports")


def _guard(original: Any) -> Any:
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if not _remote_code_allowed:
            raise RemoteCodeRefused(
                "the checkpoint asks to run its own code; allowed only when the case sets "
                "trust_remote_code and the command line passes --trust-remote-code"
            )
        return original(*args, **kwargs)

    guarded.__mlx_parity_guard__ = original  # type: ignore[attr-defined]
    return guarded


def install_remote_code_guard() -> None:
    """Every route by which transformers executes a checkpoint's code goes through these
    functions; guard them, and every module that already bound them by name, so that a
    loader called with trust_remote_code=True (mlx-vlm's `load_processor` defaults to it)
    still runs nothing unless the gate allowed it."""
    import transformers.dynamic_module_utils as dmu

    for name in _GUARDED:
        current = getattr(dmu, name)
        if hasattr(current, "__mlx_parity_guard__"):
            continue
        guarded = _guard(current)
        for module in list(sys.modules.values()):
            if getattr(module, "__name__", "").startswith(("transformers", "mlx_vlm", "mlx_lm")):
                with contextlib.suppress(AttributeError, TypeError):
                    if module.__dict__.get(name) is current:
                        setattr(module, name, guarded)
        setattr(dmu, name, guarded)


@contextlib.contextmanager
def remote_code(allowed: bool) -> Iterator[None]:
    """Run a session's loading and captures with the checkpoint's code allowed or not."""
    global _remote_code_allowed
    install_remote_code_guard()
    previous, _remote_code_allowed = _remote_code_allowed, allowed
    try:
        yield
    finally:
        _remote_code_allowed = previous
