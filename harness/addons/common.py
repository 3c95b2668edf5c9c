"""Helpers the bundled vision add-ons share (harness/architectures/<model_type>/addon.py)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

__all__ = ["load_images", "load_vision_modules"]


def load_vision_modules(
    model_path: Path,
    modules: Mapping[str, nn.Module],
    quantization: Mapping[str, Any] | None,
    *,
    strip_prefix: str = "",
    exclude: tuple[str, ...] = (),
    sanitize: Callable[[dict[str, mx.array]], dict[str, mx.array]] | None = None,
) -> None:
    """Load each module of `modules` ({key prefix: module}) from the checkpoint's
    safetensors shards, strictly, quantizing it first as the checkpoint's `quantization`
    says. Keys lose `strip_prefix` first; keys holding any of `exclude` are skipped;
    `sanitize` sees all the kept weights before they are split among the modules."""
    prefixes = tuple(prefix + "." for prefix in modules)
    weights: dict[str, mx.array] = {}
    for shard in sorted(Path(model_path).glob("*.safetensors")):
        for key, value in mx.load(str(shard)).items():
            key = key.removeprefix(strip_prefix)
            if key.startswith(prefixes) and not any(part in key for part in exclude):
                weights[key] = value
    if sanitize is not None:
        weights = sanitize(weights)
    for prefix, module in modules.items():
        own = {
            k.removeprefix(prefix + "."): v
            for k, v in weights.items()
            if k.startswith(prefix + ".")
        }
        if quantization:
            # Quantize exactly the layers whose scales were stored, as mlx-vlm does
            # (stack-facts pitfall 7).
            nn.quantize(
                module,
                group_size=quantization["group_size"],
                bits=quantization["bits"],
                mode=quantization.get("mode", "affine"),
                class_predicate=lambda p, m, own=own: f"{p}.scales" in own,
            )
        module.load_weights(list(own.items()), strict=True)
        mx.eval(module.parameters())


def load_images(images_b64: list[str], max_size: tuple[int, int] | None) -> list[Any]:
    """The images as mlx-vlm loads them (EXIF orientation applied, RGB), fitted into
    `max_size` when given."""
    from mlx_vlm.utils import load_image

    images = [load_image(io.BytesIO(base64.b64decode(b))) for b in images_b64]
    if max_size is not None:
        for image in images:
            image.thumbnail(max_size)
    return images
