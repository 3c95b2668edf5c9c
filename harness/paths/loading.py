"""Loading helpers shared by the built-in paths."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import provenance
from ..cases import CaseError
from . import PathError


def model_type_of(model_dir: Path) -> str:
    config = model_dir / "config.json"
    try:
        return json.loads(config.read_text())["model_type"]
    except FileNotFoundError:
        raise PathError(f"{model_dir} has no config.json") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PathError(f"{config} has no readable model_type: {exc}") from None


def _config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


def image_token_id_of(model_dir: Path) -> int | None:
    config = _config(model_dir)
    token = config.get("image_token_id", config.get("image_token_index"))
    return token if isinstance(token, int) else None


class CheckpointMismatch(PathError):
    field = "model"


def check_vocab(tokenizer: Any, model_dir: Path) -> None:
    """A tokenizer with ids beyond the embedding table would index garbage rows."""
    config = _config(model_dir)
    rows = (config.get("text_config") or {}).get("vocab_size", config.get("vocab_size"))
    if isinstance(rows, int) and len(tokenizer) > rows:
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


def session_provenance(path_name: str, model_dir: Path) -> dict[str, str]:
    return {
        "path": path_name,
        "checkpoint": str(model_dir),
        "checkpoint_hash": provenance.checkpoint_hash(model_dir),
        **{f"version_{k}": v for k, v in provenance.library_versions().items()},
    }
