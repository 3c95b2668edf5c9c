"""Spec checks that several synthesizers share, as pydantic field validators. A Spec
class binds one to a name (`_kv_heads_divide = checks.kv_heads_divide()`); each factory
call makes a new validator, as pydantic needs one per class. Checks that differ in what
they allow (head dims in multiples of 4 for 2-D rotary, ...) stay in their architecture."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import ValidationInfo, field_validator

Check = Callable[[int, Mapping[str, Any]], str | None]


def _validator(field: str, check: Check) -> Any:
    def validate(cls: type, value: int, info: ValidationInfo) -> int:
        problem = check(value, info.data)
        if problem:
            raise ValueError(problem)
        return value

    return field_validator(field)(validate)


def kv_heads_divide() -> Any:
    """`num_kv_heads` divides `num_heads` (grouped-query attention)."""

    def check(value: int, data: Mapping[str, Any]) -> str | None:
        heads = data.get("num_heads")
        if heads is not None and heads % value:
            return f"must divide num_heads ({heads}), got {value}"
        return None

    return _validator("num_kv_heads", check)


def vision_heads_divide() -> Any:
    """`vision_heads` divides `vision_hidden_size`."""

    def check(value: int, data: Mapping[str, Any]) -> str | None:
        hidden = data.get("vision_hidden_size")
        if hidden is not None and hidden % value:
            return f"must divide vision_hidden_size ({hidden}), got {value}"
        return None

    return _validator("vision_heads", check)


def even_head_dim() -> Any:
    """`head_dim` is even: RoPE rotates pairs of dimensions."""

    def check(value: int, data: Mapping[str, Any]) -> str | None:
        if value % 2:
            return f"must be even (RoPE rotates pairs of dimensions), got {value}"
        return None

    return _validator("head_dim", check)


def patch_grid() -> Any:
    """`patch_size` divides `image_size` and does not exceed `vision_hidden_size`."""

    def check(value: int, data: Mapping[str, Any]) -> str | None:
        size, hidden = data.get("image_size"), data.get("vision_hidden_size")
        if size is not None and size % value:
            return f"must divide image_size ({size}), got {value}"
        if hidden is not None and hidden < value:
            # mlx-vlm's sanitize takes a conv weight whose out_channels < kernel size for a
            # PyTorch-layout one and transposes it.
            return (
                f"must not exceed vision_hidden_size ({hidden}): mlx-vlm would transpose "
                f"the patch embedding, got {value}"
            )
        return None

    return _validator("patch_size", check)
