"""The preset mechanism synthesizers' `Spec`s share: a `preset` option whose dimensions
fill in every field not given explicitly."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, model_validator

__all__ = ["PresetSpec"]


class PresetSpec(BaseModel):
    """Base of a `Spec` with a `preset` field (a Literal of the keys of `PRESETS`, default
    `DEFAULT_PRESET`): the preset's values are the defaults of the fields not given."""

    PRESETS: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    DEFAULT_PRESET: ClassVar[str] = "tiny"

    @model_validator(mode="before")
    @classmethod
    def _preset_defaults(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", cls.DEFAULT_PRESET)
        if not isinstance(preset, str) or preset not in cls.PRESETS:
            return data  # the Literal check reports it
        return {**cls.PRESETS[preset], **data}
