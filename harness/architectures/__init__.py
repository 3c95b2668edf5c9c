"""One folder per architecture, found by `model_type` as mlx-lm finds its model files:

    harness/architectures/<model_type>/
        __init__.py   ALIASES: other model_type spellings it serves (e.g. "gemma4_text")
        synth.py      Spec (pydantic), build(spec, out_dir), SYNTH_VERSION
        addon.py      AddOn: the reference add-on under mlx-engine's contract
        probes.py     taps(model, recording): architecture-specific capture taps (optional)

Adding an architecture adds a folder (and its cases under cases/<model_type>/) and touches
no core module: the synthesizer, add-on and probe registries all ask `component()`.
"""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache
from pathlib import Path
from types import ModuleType

from ..models import model_type_problem
from ..registry import find_module, is_plain_name

PARTS = ("synth", "addon", "probes")


@cache
def aliases() -> dict[str, str]:
    """model_type spelling -> architecture folder, from each folder's ALIASES."""
    found: dict[str, str] = {}
    for info in pkgutil.iter_modules([str(Path(__file__).parent)]):
        if info.ispkg and is_plain_name(info.name):
            package = importlib.import_module(f"{__name__}.{info.name}")
            found.update(dict.fromkeys(getattr(package, "ALIASES", ()), info.name))
    return found


def names() -> list[str]:
    """Every architecture folder."""
    return sorted(
        info.name
        for info in pkgutil.iter_modules([str(Path(__file__).parent)])
        if info.ispkg and is_plain_name(info.name)
    )


def folder(model_type: str) -> str | None:
    """The architecture folder serving `model_type`, or None. A spelling that is no
    Python name (mlx-lm's `lfm2-vl`) selects a folder only through an ALIASES entry."""
    if model_type_problem(model_type):
        return None
    if is_plain_name(model_type) and model_type in names():
        return model_type
    return aliases().get(model_type)


def component(model_type: str, part: str) -> ModuleType | None:
    """`harness.architectures.<folder>.<part>` for `model_type`, or None when the
    architecture or that part does not exist. Import errors inside an existing module
    are not swallowed."""
    name = folder(model_type)
    if name is None or part not in PARTS:
        return None
    return find_module(f"{__name__}.{name}", part, {})


def describe(cases: list | None = None) -> list[dict[str, str]]:
    """One row per architecture folder: its aliases, which parts it has, the stages its
    probes add, and the shipped cases (of `cases`) whose synthesized model it builds."""
    rows = []
    for name in names():
        package = importlib.import_module(f"{__name__}.{name}")
        parts = [p for p in PARTS if component(name, p) is not None]
        probes = component(name, "probes")
        covered = [
            c.id
            for c in cases or []
            if getattr(c.model, "synth", None) is not None and folder(c.model.synth) == name
        ]
        rows.append(
            {
                "architecture": name,
                "aliases": ", ".join(getattr(package, "ALIASES", ())),
                "parts": ", ".join(parts),
                "extra stages": ", ".join(getattr(probes, "STAGES", ())),
                "cases": ", ".join(covered) or "-",
            }
        )
    return rows
