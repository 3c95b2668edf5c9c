"""The effective attention mask, as each decoder layer type was called with it.

Both libraries build one mask per layer type and hand it to every decoder layer (second
positional argument or `mask=`). It comes in several forms: None (attend to every key in
the cache), the string "causal" (MLX's fused causal mask, lower-right aligned when there
are more keys than queries), a boolean array (True = may attend) or an additive float
array (0 = attend, a large negative number or -inf = masked). A rotating sliding-window
cache hands attention only its last `width` keys, so the key columns of a call are the
last `width` absolute positions ending where the call's rows end.

Every form is normalized here to one boolean "may attend" grid [L, L] over the prompt's
absolute positions, assembled from the prefill calls. The name starts with "_" so that no
checkpoint's `model_type` can select it as an architecture module.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# Additive masks: a position is masked when its bias is at or below this (mlx-lm and
# mlx-vlm use -inf or the dtype's minimum; older code -1e9; float16 bottoms out at -65504).
ADDITIVE_MASKED_AT = -1e4
# Architectures without layer types have one.
DEFAULT_TYPE = "full"


@dataclass(frozen=True)
class MaskCall:
    """What the first layer of a type was called with, in one forward call.

    `mask` is kept as passed (a lazy array is not evaluated here: the forward pass
    computes it anyway). `end` is the absolute position after the call's last row,
    `queries` the rows this layer received (the last ones of the call) and `width` the
    number of keys attention saw (the last `width` positions before `end`)."""

    call: int
    end: int
    queries: int
    width: int
    mask: Any


def _text_configs(model: Any) -> list[Any]:
    found = []
    language = getattr(model, "language_model", None)
    for owner in (getattr(language, "model", None), language, model):
        if owner is None:
            continue
        for name in ("config", "args"):
            config = getattr(owner, name, None)
            if config is not None:
                found += [getattr(config, "text_config", None), config]
    return [c for c in found if c is not None and not isinstance(c, dict)]


def layer_types(model: Any, layers: Sequence[Any]) -> list[str]:
    """Each decoder layer's attention type: the text config's `layer_types` when it has one
    entry per layer, else the layers' own `layer_type`, else one type "full"."""
    for config in _text_configs(model):
        types = getattr(config, "layer_types", None)
        if isinstance(types, (list, tuple)) and len(types) == len(layers):
            return [str(t) for t in types]
    own = [getattr(layer, "layer_type", None) for layer in layers]
    if all(isinstance(t, str) and t for t in own):
        return list(own)
    # Hybrids (LFM2: convolution and attention layers) flag their attention layers.
    flags = [getattr(layer, "is_attention_layer", None) for layer in layers]
    if all(isinstance(f, bool) for f in flags) and len(set(flags)) > 1:
        return ["full_attention" if f else "conv" for f in flags]
    # Gemma 3 keeps neither: its attention modules know whether they slide.
    sliding = [getattr(getattr(layer, "self_attn", None), "is_sliding", None) for layer in layers]
    if all(isinstance(s, bool) for s in sliding) and len(set(sliding)) > 1:
        return ["sliding_attention" if s else "full_attention" for s in sliding]
    return [DEFAULT_TYPE] * len(layers)


def cache_width(cache: Any, end: int) -> int:
    """Keys a cache handed to attention, read after the layer updated it (shapes and
    offsets only: nothing is evaluated). A plain KV cache keeps every position (its buffer
    is padded past `offset`); a rotating cache may hold fewer. No cache: all `end` rows."""
    offset = getattr(cache, "offset", None)
    keys = getattr(cache, "keys", None)
    if isinstance(keys, (list, tuple)):  # quantized caches keep (data, scales, biases)
        keys = keys[0] if keys else None
    if not isinstance(offset, int) or getattr(keys, "shape", None) is None:
        return end
    return min(offset, int(keys.shape[-2]), end)


def key_width(mask: Any, cache: Any, end: int) -> int:
    shape = getattr(mask, "shape", None)
    if shape is not None and len(shape) >= 1:
        return int(shape[-1])
    return cache_width(cache, end)


def allowed(mask: Any, queries: int, width: int) -> np.ndarray:
    """[queries, width] booleans, True where query row i may attend key column j.

    Rows are the last `queries` positions of the call and columns the last `width`
    positions, both ending at the same absolute position."""
    if mask is None:
        return np.ones((queries, width), dtype=bool)
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"unknown attention mask mode {mask!r}")
        # MLX's fused causal mask is lower-right aligned: key j <= query i + (width - queries)
        rows = np.arange(queries)[:, None]
        cols = np.arange(width)[None, :]
        return cols <= rows + (width - queries)
    values = _host(mask)
    if values.dtype == np.bool_:
        block = values
    elif np.issubdtype(values.dtype, np.floating):
        block = values > ADDITIVE_MASKED_AT  # NaN compares False: masked
    else:
        block = values != 0
    if block.ndim == 1:
        block = block[None, :]
    # Batch / head dimensions: a position is attendable when any head may attend it (the
    # libraries broadcast one mask over heads; a per-head mask is summarized, not split).
    block = block.reshape(-1, *block.shape[-2:]).any(axis=0)
    if block.shape[-1] != width:
        raise ValueError(f"mask has {block.shape[-1]} key columns, attention saw {width}")
    return np.broadcast_to(block[-queries:], (queries, width))


def _host(mask: Any) -> np.ndarray:
    if isinstance(mask, np.ndarray):
        return mask
    import mlx.core as mx

    if mask.dtype in (mx.bfloat16, mx.float16):
        mask = mask.astype(mx.float32)
    return np.array(mask)


def prompt_grid(calls: Sequence[MaskCall], n_calls: int, prompt_len: int) -> np.ndarray:
    """[L, L] "may attend" grid of the prompt from the first `n_calls` forward calls; a key
    a call's attention never saw (future, or dropped by a rotating cache) is False."""
    grid = np.zeros((prompt_len, prompt_len), dtype=bool)
    seen = [c for c in calls if c.call < n_calls]
    if len({c.call for c in seen}) != n_calls:
        raise RuntimeError(f"attention masks of {len(seen)} calls, expected {n_calls}")
    for c in seen:
        block = allowed(c.mask, c.queries, c.width)
        if c.end > prompt_len or c.width > c.end or c.queries > c.end:
            raise RuntimeError(
                f"mask block of call {c.call} ({c.queries} queries x {c.width} keys ending "
                f"at {c.end}) does not fit a prompt of {prompt_len}"
            )
        grid[c.end - c.queries : c.end, c.end - c.width : c.end] = block
    return grid


def stacked_grids(
    by_type: dict[str, list[MaskCall]], n_calls: int, prompt_len: int
) -> tuple[tuple[str, ...], np.ndarray]:
    """Types in sorted order and their grids stacked query-major, [L, n_types, L] uint8:
    row q holds every type's mask row for prompt position q, so row-wise reports speak
    of prompt positions."""
    types = tuple(sorted(by_type))
    grids = [prompt_grid(by_type[t], n_calls, prompt_len) for t in types]
    stacked = np.stack(grids, axis=1) if grids else np.zeros((prompt_len, 0, prompt_len))
    return types, stacked.astype(np.uint8)
