"""Library classes replaced in this process. Engine add-ons patch mlx-lm (or mlx-vlm)
classes when imported; in one process every later session then runs the patched class, so
a comparison "patched vs unpatched" silently becomes "patched vs patched". Found by
looking, not by trusting: a library module attribute bound to a class defined outside the
libraries that subclasses one of theirs."""

from __future__ import annotations

import sys

LIBRARIES = ("mlx_lm", "mlx_vlm")


def _is_library(module_name: str) -> bool:
    return module_name.partition(".")[0] in LIBRARIES


def patched_library_classes() -> list[str]:
    """'mlx_lm.models.gemma4_text.Gemma4TextModel -> engine.patches.PatchedModel', sorted."""
    found = []
    for name, module in list(sys.modules.items()):
        if module is None or not _is_library(name):
            continue
        for attribute, value in list(vars(module).items()):
            if not isinstance(value, type) or _is_library(getattr(value, "__module__", "")):
                continue
            if any(_is_library(base.__module__) for base in value.__mro__[1:]):
                found.append(f"{name}.{attribute} -> {value.__module__}.{value.__qualname__}")
    return sorted(found)
