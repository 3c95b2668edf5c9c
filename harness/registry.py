"""Per-architecture modules found by name, as mlx-lm finds its model files: adding an
architecture adds `harness/<package>/<name>.py` and touches no core module."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from types import ModuleType

_PLAIN = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def is_plain_name(name: object) -> bool:
    return isinstance(name, str) and bool(_PLAIN.match(name))


def find_module(package: str, name: str, aliases: Mapping[str, str]) -> ModuleType | None:
    """`package.<name>` (after `aliases`), or None when no such module exists. An import
    error raised from inside an existing module is not swallowed. `name` comes from case
    files and checkpoints' config.json: only a plain name can select a module."""
    name = aliases.get(name, name)
    if not is_plain_name(name):
        return None
    module_name = f"{package}.{name}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        return None
