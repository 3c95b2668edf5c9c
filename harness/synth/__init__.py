"""Checkpoint synthesizers, one module per `model_type`, and their on-disk cache.

Adding an architecture adds `harness/synth/<model_type>.py` exposing `Spec` (a pydantic
model of the build options) and `build(spec, out_dir)`; nothing here changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from ..provenance import library_versions
from ..registry import find_module

# model_type spellings that share a synthesizer module.
ALIASES: dict[str, str] = {"gemma4_text": "gemma4"}

COMPLETE_MARKER = ".mlx-parity-complete"


class UnknownSynthesizerError(LookupError):
    pass


def synthesizer(model_type: str) -> ModuleType:
    module = find_module(__name__, model_type, ALIASES)
    if module is None:
        name = ALIASES.get(model_type, model_type)
        raise UnknownSynthesizerError(
            f"no synthesizer for model_type {model_type!r} (expected harness/synth/{name}.py)"
        )
    return module


def cache_root() -> Path:
    default = Path.home() / ".cache" / "mlx-parity"
    return Path(os.environ.get("MLX_PARITY_CACHE", default)) / "synth"


def cache_key(model_type: str, spec: Any, module: ModuleType) -> str:
    payload = {
        "model_type": model_type,
        "synth_version": module.SYNTH_VERSION,
        "spec": spec.model_dump(mode="json"),
        "libraries": library_versions(),
    }
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def ensure_checkpoint(model_type: str, options: Mapping[str, Any]) -> Path:
    """Return the cached checkpoint for (model_type, options), building it on first use."""
    module = synthesizer(model_type)
    spec = module.Spec.model_validate(dict(options))
    target = cache_root() / f"{model_type}-{cache_key(model_type, spec, module)}"
    if (target / COMPLETE_MARKER).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: a crashed or concurrent build never leaves a
    # half-written directory under the cached name.
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        module.build(spec, staging)
        (staging / "synth_spec.json").write_text(
            json.dumps({"model_type": model_type, **spec.model_dump(mode="json")}, indent=2)
        )
        (staging / COMPLETE_MARKER).write_text("")
        try:
            staging.rename(target)
        except OSError:
            if not (target / COMPLETE_MARKER).exists():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
