"""Per-architecture modules found by name, as mlx-lm finds its model files: adding an
architecture adds `harness/<package>/<name>.py` and touches no core module."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from types import ModuleType


def find_module(package: str, name: str, aliases: Mapping[str, str]) -> ModuleType | None:
    """`package.<name>` (after `aliases`), or None when no such module exists. An import
    error raised from inside an existing module is not swallowed."""
    module_name = f"{package}.{aliases.get(name, name)}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None
