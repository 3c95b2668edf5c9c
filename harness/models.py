"""Resolve a case's model spec to a checkpoint directory, never downloading anything."""

from __future__ import annotations

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
        if not path.is_dir():
            raise ModelUnavailable(f"local checkpoint {path} does not exist on this machine")
        return path
    assert isinstance(spec, HubModel)
    return _from_hf_cache(spec)


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
