"""Loading helpers shared by the built-in paths."""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import provenance
from . import PathError


def model_type_of(model_dir: Path) -> str:
    config = model_dir / "config.json"
    try:
        return json.loads(config.read_text())["model_type"]
    except FileNotFoundError:
        raise PathError(f"{model_dir} has no config.json") from None
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise PathError(f"{config} has no readable model_type: {exc}") from None


def image_token_id_of(model_dir: Path) -> int | None:
    config = json.loads((model_dir / "config.json").read_text())
    token = config.get("image_token_id", config.get("image_token_index"))
    return token if isinstance(token, int) else None


def load_quietly(loader: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a library loader offline, without its unrelated warnings (e.g. audio mel
    filters): nothing may be fetched from a hub at run time."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
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
