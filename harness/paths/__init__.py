"""Paths turn a case into a Capture. A path session loads its model once and captures
many cases; the runner closes it before the next path loads.

Built-in paths are named in `BUILTIN`; any other `package.module:Class` works too, so an
engine can gate its own pipeline. A session class is constructed as
`Session(model_dir: Path, options: SessionOptions)` and has `capture(case) -> Capture` and
`close()`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..cases import CaseSpec
    from ..records import Capture

BUILTIN: dict[str, str] = {
    "mlx-vlm": "harness.paths.native:NativeSession",
    "unified": "harness.paths.unified:UnifiedSession",
    "mlx-lm": "harness.paths.unified:PlainTextSession",
}


class PathError(Exception):
    """A path could not be resolved or refused a case; the message names what and why.
    `field` names the case field at fault, if any; such errors are configuration errors."""

    field: str | None = None


@dataclass(frozen=True)
class SessionOptions:
    addon: str | None = None
    trust_remote_code: bool = False
    # Record every decoder layer's output (issue: where does parity break); off leaves
    # only the embeddings entering layer 0.
    layer_probes: bool = True


class Session(Protocol):
    def __init__(self, model_dir: Path, options: SessionOptions) -> None: ...
    def capture(self, case: CaseSpec) -> Capture: ...
    def close(self) -> None: ...


def import_object(target: str) -> Any:
    """Import `package.module:Name`, with errors that say which part failed."""
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


def resolve_session_class(name: str) -> type[Session]:
    if name in BUILTIN:
        return import_object(BUILTIN[name])
    if ":" in name:
        return import_object(name)
    known = ", ".join(sorted(BUILTIN))
    raise PathError(f"unknown path {name!r}; built-in paths: {known}, or give 'module:Class'")
