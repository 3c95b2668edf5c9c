"""Gemma 3n taps.

AltUp: both decoders hand every layer the stacked AltUp streams, [altup, B, L, hidden]
(stream 0 is the embeddings, the others their normalised projections), and layers
return the same shape. The generic layer taps (and the report's per-token views) read
[B, L, width] arrays, so each tapped layer is seen through a view that lays the streams
side by side: the taps record [B, L, altup * hidden] (`embeddings` is what enters layer 0,
stream 0 in the first `hidden` columns; `layer.N` every stream a layer returns) and the
layer itself is called with its own layout. Transposes and reshapes only: no value
changes. The projected streams make the stage sensitive to the embeddings' dtype: float32
embeddings in a bf16 model change streams 1+ by hundreds of bf16 ulps even where stream 0
is within one.

Per-layer inputs: the token-id part (per-layer embedding rows of the ids, image and audio
ids masked to 0), before it is mixed with the projection of the embeddings; both
libraries pass it as the second argument of `project_per_layer_inputs`, after any chunk
slicing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import mlx.core as mx

from ...probes import Recording, _LayerTap, wrap_method

# Stages this architecture adds to the common ones (`mlx-parity list --architectures`).
STAGES = ("per_layer_inputs",)


def rows_first(x: mx.array) -> mx.array:
    """[altup, B, L, H] -> [B, L, altup * H]."""
    streams, batch, rows, hidden = x.shape
    return x.transpose(1, 2, 0, 3).reshape(batch, rows, streams * hidden)


def streams_first(x: mx.array, streams: int) -> mx.array:
    """[B, L, altup * H] -> [altup, B, L, H]."""
    batch, rows, width = x.shape
    return x.reshape(batch, rows, streams, width // streams).transpose(2, 0, 1, 3)


class _RowsFirst:
    """Stands in for a layer tap in the decoder's list: the tap sees rows first."""

    def __init__(self, tap: _LayerTap) -> None:
        self._tap = tap

    def __call__(self, x: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        return streams_first(self._tap(rows_first(x), *args, **kwargs), x.shape[0])

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tap, name)


class _StreamsFirst:
    """Stands in for the decoder layer inside a tap: the layer sees its own layout."""

    def __init__(self, layer: Any) -> None:
        self._layer = layer

    def __call__(self, x: mx.array, *args: Any, **kwargs: Any) -> mx.array:
        streams = self._layer.config.altup_num_inputs
        return rows_first(self._layer(streams_first(x, streams), *args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._layer, name)


def _decoder(model: Any) -> Any:
    """The module holding the layers and the per-layer-input methods: mlx-vlm's
    `language_model.model`, mlx-lm's `model.language_model`."""
    language = getattr(model, "language_model", None)
    if language is not None and hasattr(language, "model"):
        return language.model
    return model.model.language_model


@contextlib.contextmanager
def _altup_views(model: Any) -> Iterator[None]:
    layers = model.layers
    originals = list(layers)
    taps = [(i, t) for i, t in enumerate(originals) if isinstance(t, _LayerTap)]
    for index, tap in taps:
        tap._layer = _StreamsFirst(tap._layer)
        layers[index] = _RowsFirst(tap)
    try:
        yield
    finally:
        for _, tap in taps:
            tap._layer = tap._layer._layer
        layers[:] = originals


@contextlib.contextmanager
def taps(model: Any, recording: Recording) -> Iterator[None]:
    decoder = _decoder(model)

    def record(_embeddings: Any, per_layer_inputs: Any = None) -> None:
        if per_layer_inputs is not None:
            recording.add("per_layer_inputs", per_layer_inputs)

    with _altup_views(model), wrap_method(decoder, "project_per_layer_inputs", record):
        yield
