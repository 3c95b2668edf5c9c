"""Resolve a case's model spec to a checkpoint directory, never downloading anything."""

from __future__ import annotations

import json
import struct
from pathlib import Path

from pydantic import ValidationError

from .cases import CaseError, CaseSpec, HubModel, LocalModel, SynthModel
from .synth import UnknownSynthesizerError, ensure_checkpoint


class ModelUnavailable(Exception):
    """The checkpoint is not on this machine: the case is skipped with this reason."""


def resolve_model(case: CaseSpec) -> Path:
    spec = case.model
    if isinstance(spec, SynthModel):
        return _synthesize(case, spec)
    if isinstance(spec, LocalModel):
        path = Path(spec.path).expanduser()
        path = path if path.is_absolute() else case.base_dir / path
        if not path.exists():
            raise ModelUnavailable(f"local checkpoint {path} does not exist on this machine")
        field = "model.path"
    else:
        path, field = _from_hf_cache(spec), "model.hf"
    try:
        validate_checkpoint(path)
    except CheckpointError as exc:
        raise CaseError(case.source, str(exc), case.id, field) from None
    return path


class CheckpointError(ValueError):
    pass


def validate_checkpoint(path: Path) -> None:
    """Cheap structural checks, so a broken checkpoint gets one clear line instead of a
    traceback from deep inside a loader: config.json readable, every safetensors file
    complete (header parses, tensor data as long as the header says)."""
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    config = path / "config.json"
    if not config.is_file():
        raise CheckpointError(f"{path} has no config.json")
    try:
        parsed = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{config} is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict) or "model_type" not in parsed:
        raise CheckpointError(f"{config} has no model_type")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{path} holds no *.safetensors weights")
    for shard in shards:
        _check_safetensors(shard)


def _check_safetensors(shard: Path) -> None:
    size = shard.stat().st_size
    with shard.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{shard.name} is truncated ({size} bytes)")
        header_len = struct.unpack("<Q", prefix)[0]
        if header_len > size - 8:
            raise CheckpointError(
                f"{shard.name} is truncated or corrupt: header of "
                f"{header_len} bytes in a {size}-byte file"
            )
        try:
            header = json.loads(handle.read(header_len))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise CheckpointError(f"{shard.name} has a corrupt header") from None
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    expected = 8 + header_len + max(ends, default=0)
    if size < expected:
        raise CheckpointError(f"{shard.name} is truncated: {size} bytes, header needs {expected}")


def _synthesize(case: CaseSpec, spec: SynthModel) -> Path:
    try:
        return ensure_checkpoint(spec.synth, spec.options)
    except UnknownSynthesizerError as exc:
        raise CaseError(case.source, str(exc), case.id, "model.synth") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(["model.options", *map(str, first["loc"])])
        raise CaseError(case.source, first["msg"], case.id, field) from None


def _from_hf_cache(spec: HubModel) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(spec.hf, revision=spec.revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        raise ModelUnavailable(
            f"{spec.hf} is not in the local Hugging Face cache (mlx-parity never downloads): "
            f"{type(exc).__name__}"
        ) from None
