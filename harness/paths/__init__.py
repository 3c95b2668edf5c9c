"""Paths turn a case into a Capture. A path session loads its model once and captures
many cases; the runner closes it before the next path loads.

Built-in paths are named in `BUILTIN`; any other `package.module:Class` works too, so an
engine can gate its own pipeline, when the person running the gate allowed its module
(see `harness.policy`). A session class is constructed as
`Session(model_dir: Path, options: SessionOptions)` and has `capture(case) -> Capture` and
`close()`.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..policy import ImportPolicy, NotAllowed, check_target, registered

if TYPE_CHECKING:
    from ..cases import CaseSpec
    from ..records import Capture

BUILTIN: dict[str, str] = {
    "mlx-vlm": "harness.paths.native:NativeSession",
    "unified": "harness.paths.unified:UnifiedSession",
    "mlx-lm": "harness.paths.unified:PlainTextSession",
    # Engine-style: the libraries' stream_generate instead of generate_step.
    "mlx-vlm-stream": "harness.paths.pipeline:VlmStreamSession",
    "unified-stream": "harness.paths.pipeline:UnifiedStreamSession",
    "mlx-lm-stream": "harness.paths.pipeline:MlxLmStreamSession",
    # A recording of a path's capture (`mlx-parity record`), replayed; no library loaded.
    "golden": "harness.paths.golden:GoldenSession",
    # PyTorch: transformers on an HF-layout copy of the checkpoint (needs the torch extra).
    "transformers": "harness.paths.transformers_path:TransformersSession",
}


class PathError(Exception):
    """A path could not be resolved or refused a case; the message names what and why.
    `field` names the case field at fault, if any; such errors are configuration errors."""

    field: str | None = None


class PathUnavailable(Exception):
    """A path needs an optional dependency this machine lacks: its cases are skipped with
    this reason (as a real checkpoint that is not here), not errored."""


def check_requirements(name: str, session_class: type) -> None:
    """A session class may name the modules it needs (`requires`) and how to get them
    (`install_hint`); raises PathUnavailable when one cannot be found."""
    missing = [m for m in getattr(session_class, "requires", ()) if not _importable(m)]
    if missing:
        hint = getattr(session_class, "install_hint", "")
        raise PathUnavailable(
            f"path {name!r} needs {', '.join(missing)}, not installed"
            + (f" ({hint})" if hint else "")
        )


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@dataclass(frozen=True)
class SessionOptions:
    addon: str | None = None
    trust_remote_code: bool = False
    # Record every decoder layer's output (issue: where does parity break); off leaves
    # only the embeddings entering layer 0.
    layer_probes: bool = True
    # Modules that `module:Class` names may import (from the command line, never a case).
    imports: ImportPolicy = ImportPolicy()
    # The `golden` path: where recordings are read (--golden-dir, never a case), and
    # whether a recording made elsewhere (versions, platform, checkpoint) is an error.
    golden_dir: Path = Path("reference")
    golden_strict: bool = False


class Session(Protocol):
    def __init__(self, model_dir: Path, options: SessionOptions) -> None: ...
    def capture(self, case: CaseSpec) -> Capture: ...
    def close(self) -> None: ...


def import_object(target: str) -> Any:
    """Import `package.module:Name`, with errors that say which part failed. Callers check
    the target against the import policy first."""
    module_name, sep, attr = target.partition(":")
    if not sep or not module_name or not attr:
        raise PathError(f"{target!r} is not of the form 'package.module:Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise PathError(f"cannot import module {module_name!r} for {target!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError:
        raise PathError(f"module {module_name!r} has no attribute {attr!r}") from None


def import_allowed(target: str, kind: str, policy: ImportPolicy) -> Any:
    """`import_object` of a case-named target, only when the policy allows its module."""
    try:
        return import_object(check_target(target, kind, policy))
    except NotAllowed as exc:
        raise PathError(str(exc)) from None


SESSION_METHODS = ("capture", "close")


def check_session_class(name: str, found: Any) -> type[Session]:
    """A path must be a class implementing the session contract, never any callable."""
    missing = [m for m in SESSION_METHODS if not callable(getattr(found, m, None))]
    if not isinstance(found, type) or missing:
        what = "not a class" if not isinstance(found, type) else "missing " + ", ".join(missing)
        raise PathError(f"path {name!r} does not satisfy the path session contract: {what}")
    return found


def resolve_session_class(name: str, policy: ImportPolicy | None = None) -> type[Session]:
    policy = policy or ImportPolicy()
    if name in BUILTIN:
        return import_object(BUILTIN[name])
    if ":" in name or name in registered("path"):
        return check_session_class(name, import_allowed(name, "path", policy))
    known = ", ".join(sorted(BUILTIN))
    raise PathError(f"unknown path {name!r}; built-in paths: {known}, or give 'module:Class'")

