"""Finding case files: case files named directly, or the *.yaml / *.yml files under
directories, one folder per architecture (cases/<model_type>/...) included. Files and
folders starting with "_" are shared bases; `images/` folders are not searched; symlinked
folders are not followed."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from .case_yaml import CaseError


def _shown(target: Path) -> str:
    text = str(target)
    return text if target.is_absolute() or text.startswith(".") else f"./{text}"


def discover(targets: Iterable[Path], errors: list[CaseError] | None = None) -> list[Path]:
    """Case files named directly, or the non-underscore *.yaml/*.yml files of directories.
    A missing target or an empty directory is an error for that target: appended to
    `errors` when given (the other targets still count), raised otherwise."""
    files: list[Path] = []
    for target in targets:
        try:
            files.extend(_discover_one(target))
        except CaseError as exc:
            if errors is None:
                raise
            errors.append(exc)
    return files


def _walk(directory: Path, depth: int = 0) -> Iterator[Path]:
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith((".", "_")):
            continue
        if entry.suffix in (".yaml", ".yml") or not entry.is_dir() or entry.is_symlink():
            yield entry  # a directory named *.yaml is reported as not a regular file
        elif depth < 4 and entry.name != "images":
            yield from _walk(entry, depth + 1)


def _discover_one(target: Path) -> list[Path]:
    try:
        is_dir = os.path.isdir(target)
        exists = is_dir or os.path.lexists(target)
    except ValueError:  # NUL in the name
        exists = is_dir = False
    if not exists:
        # Run outside the repository with no argument: "looked in ./cases".
        raise CaseError(target, f"no cases found (looked in {_shown(target)})")
    if not is_dir:
        return [target]
    try:
        # cases/<model_type>/... included: one folder of cases per architecture. Files
        # and folders starting with "_" are shared bases, symlinks are not followed.
        found = sorted(
            p
            for p in _walk(target)
            if p.suffix in (".yaml", ".yml") and not p.name.startswith("_")
        )
    except OSError as exc:
        raise CaseError(target, f"cannot list directory: {exc.strerror or exc}") from None
    if not found:
        raise CaseError(target, "directory holds no case files (*.yaml)")
    return found
