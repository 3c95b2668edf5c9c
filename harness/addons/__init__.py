"""Vision add-ons for the `unified` path, one module per `model_type`, or any
`package.module:Class` that honours mlx-engine's add-on contract:

    AddOn(model_path: Path)
    compute_embeddings(text_model, prompt_tokens, images_b64, max_size) -> (input_ids, embeddings)
    clear_prediction_state(text_model)        # optional, called before every prediction
    patch_text_model(text_model)              # optional, mlx-parity extension: patch the
                                              # loaded instance instead of a library class
A built-in module names its class `AddOn`.
"""

from __future__ import annotations

import importlib.util

from ..paths import PathError, import_object
from ..registry import find_module

ALIASES: dict[str, str] = {"gemma4_text": "gemma4"}
REQUIRED_METHODS = ("compute_embeddings",)


class AddOnError(PathError):
    field = "addon"


def _no_builtin(name: str) -> AddOnError:
    return AddOnError(
        f"no built-in add-on {name!r} (expected harness/addons/"
        f"{ALIASES.get(name, name)}.py); or give 'module:Class'"
    )


def check_addon_name(name: str, model_type: str) -> None:
    """Cheap check that `name` can be found, without importing it (an add-on pulls in
    mlx-lm and mlx-vlm; the worker that runs it imports it). Contract checks happen there."""
    if name == "auto":
        name = model_type
    builtin = f"{__name__}.{ALIASES.get(name, name)}"
    module_name = name.partition(":")[0] if ":" in name else builtin
    try:
        found = importlib.util.find_spec(module_name) is not None
    except (ImportError, ValueError) as exc:
        raise AddOnError(
            f"add-on cannot import module {module_name!r} for {name!r}: {exc}"
        ) from None
    if not found and ":" in name:
        raise AddOnError(
            f"add-on cannot import module {module_name!r} for {name!r}: "
            f"No module named {module_name!r}"
        )
    if not found:
        raise _no_builtin(name)


def resolve_addon(name: str, model_type: str) -> type:
    """The add-on class for `name` ('auto' picks the checkpoint's model_type)."""
    if name == "auto":
        name = model_type
    if ":" in name:
        try:
            addon = import_object(name)
        except PathError as exc:
            raise AddOnError(f"add-on {exc}") from None
    else:
        module = find_module(__name__, name, ALIASES)
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
