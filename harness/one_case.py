"""One case from Python: `run_one(case_or_path, addon, **overrides) -> Verdict`, what the
pytest `parity` fixture calls. `addon` may be the add-on class object itself: it travels in
the run's import policy (`ImportPolicy.addon_classes`), which only the calling code can
fill, so a case file still imports nothing it was not allowed to."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from .case_yaml import CaseError
from .cases import CaseSpec, load_case
from .policy import ImportPolicy
from .records import Verdict
from .runner import RunOptions, run_cases


def addon_name(addon: type) -> str:
    """A name a case's `addon` field accepts for a class object: module:Class (given:Class
    when the module's name is not a dotted identifier)."""
    module = addon.__module__
    valid = all(part.isidentifier() for part in module.split("."))
    name = addon.__name__ if addon.__name__.isidentifier() else "AddOn"
    return f"{module if valid else 'given'}:{name}"


def with_overrides(case: CaseSpec, overrides: dict[str, Any]) -> CaseSpec:
    """The case with fields replaced, validated as a case file's fields are; a bad value
    is a one-line CaseError naming the field."""
    if not overrides:
        return case
    data = {**case.model_dump(mode="python"), **overrides}
    try:
        return CaseSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise CaseError(case.source, first["msg"], case.id, field) from None


def run_one(
    case: CaseSpec | str | Path,
    addon: str | type | None = None,
    *,
    policy: ImportPolicy | None = None,
    include_roots: Sequence[Path] = (),
    isolation: Literal["process", "none"] = "none",
    **overrides: Any,
) -> Verdict:
    """Run one case (a CaseSpec or a case file), with `overrides` of its fields and `addon`
    as a name or a class object; in this process unless `isolation="process"` (a class
    object must then be importable by the worker)."""
    policy = policy or ImportPolicy.from_sources()
    if not isinstance(case, CaseSpec):
        case = load_case(Path(case), include_roots=include_roots)
    if isinstance(addon, type):
        name = addon_name(addon)
        policy = ImportPolicy(policy.allowed, ((name, addon), *policy.addon_classes))
        overrides["addon"] = name
    elif addon is not None:
        overrides["addon"] = addon
    case = with_overrides(case, overrides)
    result = run_cases([case], options=RunOptions(isolation=isolation, imports=policy))
    if not result.complete:
        raise KeyboardInterrupt
    (verdict,) = result.verdicts
    return verdict
