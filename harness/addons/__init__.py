"""Vision add-ons for the `unified` path, one module per `model_type`, or any
`package.module:Class` that honours mlx-engine's add-on contract (imported only when the
person running the gate allowed its module, see `harness.policy`):

    AddOn(model_path: Path)
    compute_embeddings(text_model, prompt_tokens, images_b64, max_size) -> (input_ids, embeddings)
    clear_prediction_state(text_model)        # optional, called before every prediction
    patch_text_model(text_model)              # optional, mlx-parity extension: patch the
                                              # loaded instance instead of a library class
A built-in module names its class `AddOn`.
"""

from __future__ import annotations

import importlib.util

from ..architectures import component
from ..paths import PathError, import_allowed
from ..policy import ImportPolicy, NotAllowed, check_target, registered

REQUIRED_METHODS = ("compute_embeddings",)


class AddOnError(PathError):
    field = "addon"


def _no_builtin(name: str) -> AddOnError:
    return AddOnError(
        f"no built-in add-on {name!r} (expected harness/architectures/"
        f"{name}/addon.py); or give 'module:Class'"
    )


def _external(name: str) -> bool:
    return ":" in name or name in registered("addon")


def is_builtin(name: str, model_type: str, policy: ImportPolicy | None = None) -> bool:
    """Whether `name` resolves to an add-on of the harness's own
    (harness/architectures/<name>/addon.py): not an entry point of another package (which
    'auto' can resolve to as well), not a class the caller handed over."""
    if name == "auto":
        name = model_type
    return (policy is None or policy.given_addon(name) is None) and not _external(name)


NO_IMPORTS = ImportPolicy()


def check_addon_name(name: str, model_type: str, policy: ImportPolicy = NO_IMPORTS) -> None:
    """Cheap check that `name` can be found, without importing it (an add-on pulls in
    mlx-lm and mlx-vlm; the worker that runs it imports it). The import policy is checked
    first: `find_spec` of a dotted name imports its parent packages."""
    if policy.given_addon(name) is not None:
        return
    if name == "auto":
        name = model_type
    if _external(name):
        try:
            target = check_target(name, "addon", policy)
        except NotAllowed as exc:
            raise AddOnError(str(exc)) from None
        module_name = target.partition(":")[0]
    elif component(name, "addon") is not None:
        return
    else:
        raise _no_builtin(name)
    try:
        found = importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError) as exc:
        raise AddOnError(
            f"add-on cannot import module {module_name!r} for {name!r}: {exc}"
        ) from None
    if not found and _external(name):
        raise AddOnError(
            f"add-on cannot import module {module_name!r} for {name!r}: "
            f"No module named {module_name!r}"
        )
    if not found:
        raise _no_builtin(name)


def resolve_addon(name: str, model_type: str, policy: ImportPolicy = NO_IMPORTS) -> type:
    """The add-on class for `name` ('auto' picks the checkpoint's model_type)."""
    if name == "auto":
        name = model_type
    given = policy.given_addon(name)
    if given is not None:  # a class object from the caller's code: nothing to import
        addon = given
    elif _external(name):
        try:
            addon = import_allowed(name, "addon", policy)
        except PathError as exc:
            raise AddOnError(f"add-on {exc}") from None
    else:
        module = component(name, "addon")
        if module is None:
            raise _no_builtin(name)
        addon = module.AddOn
    missing = [m for m in REQUIRED_METHODS if not callable(getattr(addon, m, None))]
    if not isinstance(addon, type) or missing:
        raise AddOnError(
            f"add-on {name!r} does not satisfy the add-on contract: "
            f"{'not a class' if not isinstance(addon, type) else 'missing ' + ', '.join(missing)}"
        )
    return addon
