"""The schema of a recording's `recording.json` (harness.golden): validated before any
field is used, so a malformed or hostile file is one line naming the file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .case_yaml import safe_key, scrub

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, Field(max_length=256)]
Shape = Annotated[list[Annotated[int, Field(ge=0, le=1 << 40)]], Field(max_length=8)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StageEntry(_Strict):
    stored: Literal["exact", "bits", "digest", "topk"]
    shape: Shape
    sha256: Sha256 | None = None
    dtype: Name | None = None
    stats: dict[Name, float] | None = None
    last_sha256: Sha256 | None = None
    last_stats: dict[Name, float] | None = None
    topk_ids: list[Annotated[int, Field(ge=0)]] | None = Field(None, max_length=1 << 16)
    topk_values: list[float] | None = Field(None, max_length=1 << 16)
    lse: float | None = None

    @model_validator(mode="after")
    def _complete(self) -> StageEntry:
        if self.stored in ("digest", "topk") and None in (self.sha256, self.dtype, self.stats):
            raise ValueError("a digest needs sha256, dtype and stats")
        if self.stored == "topk" and (
            not self.topk_ids
            or self.topk_values is None
            or len(self.topk_ids) != len(self.topk_values)
            or self.lse is None
        ):
            raise ValueError("top-k logits need topk_ids, topk_values of one length and lse")
        return self


class Checkpoint(_Strict):
    hash: Name
    model: dict[str, Any]
    synth_version: Name | None = None


class Meta(_Strict):
    format: Name
    case_id: Name
    architecture: Name
    path: Name
    case_sha256: Sha256
    case_addon: bool
    mode: Literal["compact", "full"]
    logits: Literal["full", "topk"]
    environment: dict[Name, Name]
    checkpoint: Checkpoint
    prefill_chunks: list[Annotated[int, Field(ge=1)]] = Field(max_length=1 << 20)
    dtypes: dict[Name, Name]
    layer_tree: str
    prompt_text: str
    tokens: list[str]
    provenance: dict[Name, str]
    stages: dict[Name, StageEntry]
    arrays_sha256: Sha256
    seal: Sha256


def check_meta(meta: Any, path: Path) -> None:
    from .golden import RecordingError

    if not isinstance(meta, dict):
        raise RecordingError(f"{path}: not a JSON object")
    try:
        Meta.model_validate(meta)
    except ValidationError as exc:
        first = max(exc.errors(), key=lambda e: len(e["loc"]))
        field = ".".join(safe_key(p) for p in first["loc"]) or "(top level)"
        raise RecordingError(f"{path}: {field}: {scrub(first['msg'])}") from None
