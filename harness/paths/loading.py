"""Loading helpers shared by the built-in paths."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import provenance
from ..cases import CaseError
from ..models import DataFileError, model_type_problem, read_json
from . import PathError


def _config(model_dir: Path) -> dict:
    """config.json of a checkpoint, read as untrusted data (regular file, size-capped)."""
    try:
        config = read_json(model_dir / "config.json")
    except FileNotFoundError:
        raise PathError(f"{model_dir} has no config.json") from None
    except DataFileError as exc:
        raise PathError(f"{model_dir}: {exc}") from None
    if not isinstance(config, dict):
        raise PathError(f"{model_dir}: config.json is not a JSON object")
    return config


def model_type_of(model_dir: Path) -> str:
    model_type = _config(model_dir).get("model_type")
    problem = model_type_problem(model_type)
    if problem:
        raise PathError(f"{model_dir}: config.json: {problem}")
    return model_type


def image_token_id_of(model_dir: Path) -> int | None:
    config = _config(model_dir)
    token = config.get("image_token_id", config.get("image_token_index"))
    return token if _is_int(token) else None


def placeholder_token_id_of(model_dir: Path) -> int | None:
    """The id of the image placeholder the chat template renders (one per image). Most
    architectures render the image token itself; an architecture folder names another
    config key in its `PLACEHOLDER_CONFIG_KEY` (Gemma 3 renders `<start_of_image>`)."""
    import importlib

    from ..architectures import folder

    config = _config(model_dir)
    model_type = config.get("model_type")
    name = folder(model_type) if isinstance(model_type, str) else None
    package = importlib.import_module(f"harness.architectures.{name}") if name else None
    key = getattr(package, "PLACEHOLDER_CONFIG_KEY", None)
    if key is None:
        return image_token_id_of(model_dir)
    token = config.get(key)
    return token if _is_int(token) else None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class CheckpointMismatch(PathError):
    field = "model"


def check_vocab(tokenizer: Any, model_dir: Path) -> None:
    """A tokenizer with ids beyond the embedding table would index garbage rows."""
    config = _config(model_dir)
    text_config = config.get("text_config")
    text_config = text_config if isinstance(text_config, dict) else {}
    rows = text_config.get("vocab_size", config.get("vocab_size"))
    if _is_int(rows) and len(tokenizer) > rows:
        raise CheckpointMismatch(
            f"tokenizer has {len(tokenizer)} ids but the model's vocabulary has "
            f"{rows} rows ({model_dir})"
        )


def check_image_placeholders(case: Any, placeholders: int, image_token_id: int | None) -> None:
    """The rendered prompt must hold one image placeholder per image of the case."""
    if image_token_id is None:
        return
    images = len(case.image_files)
    if placeholders != images:
        message = (
            f"the rendered prompt has {placeholders} image placeholder(s) for {images} image(s)"
        )
        raise CaseError(case.source, message, case.id, "messages")


def load_quietly(loader: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a library loader without its unrelated warnings (e.g. audio mel filters).
    Offline mode is forced when the harness package is imported."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return loader(*args, **kwargs)


_APPLIED: set[str] = set()  # fixes applied in this process


def fixes_applied() -> bool:
    return bool(_APPLIED)


def apply_library_fixes(model_type: str) -> list[str]:
    """Apply the fixes an architecture folder declares (`LIBRARY_FIXES`: library bugs that
    stop a path from running at all, e.g. mlx-vlm's LlavaProcessor under transformers 5);
    returns their names for the report. Only the project's own folders declare them."""
    import importlib

    from ..architectures import folder

    name = folder(model_type)
    if name is None:
        return []
    package = importlib.import_module(f"harness.architectures.{name}")
    fixes = getattr(package, "LIBRARY_FIXES", ())
    for fix in fixes:
        fix()
    names = [f"{name}.{fix.__name__}" for fix in fixes]
    _APPLIED.update(names)
    return names


def session_provenance(
    path_name: str, model_dir: Path, library_fixes: list[str] | None = None
) -> dict[str, str]:
    fixes = {"library_fixes": ",".join(library_fixes)} if library_fixes else {}
    return {
        "path": path_name,
        "checkpoint": str(model_dir),
        "checkpoint_hash": provenance.checkpoint_hash(model_dir),
        **{f"version_{k}": v for k, v in provenance.library_versions().items()},
        **fixes,
    }
