"""Capture taps installed on a loaded model instance and removed afterwards.

Generic taps work on any mlx-lm / mlx-vlm model exposing `.layers` (the decoder layers,
as both libraries do for KV-cache construction). Architecture files in this package add
taps for architecture-specific tensors (e.g. Gemma 4's per-layer inputs); they are found
by `model_type`, so a new architecture adds a file and touches nothing here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from ..registry import find_module

ALIASES: dict[str, str] = {"gemma4_text": "gemma4"}


@dataclass
class Recording:
    """Per-call arrays, in call order; a path trims them to the prompt afterwards.

    `final_call_only`: stages whose prefill-chunk values the model itself never uses (MLX's
    lazy graph would skip computing them); they are kept for the final call only, so that
    probing adds no compute, and compared at the last position."""

    calls: dict[str, list[mx.array]] = field(default_factory=dict)
    final_call_only: set[str] = field(default_factory=set)

    def add(self, stage: str, value: mx.array) -> None:
        self.calls.setdefault(stage, []).append(value)


class _LayerTap:
    """Stands in for a decoder layer in its parent's list; records what enters layer 0
    (the embeddings after any scaling), what leaves every layer, and the per-layer input
    each layer receives where the architecture has one. Records only: never changes the
    arrays passed through."""

    def __init__(self, layer: Any, index: int, recording: Recording, outputs: bool) -> None:
        self._layer = layer
        self._index = index
        self._recording = recording
        self._outputs = outputs

    def __call__(self, x: mx.array, *args: Any, **kwargs: Any) -> Any:
        if self._index == 0:
            self._recording.add("embeddings", x)
        if not self._outputs:
            return self._layer(x, *args, **kwargs)
        per_layer_input = kwargs.get("per_layer_input")
        if per_layer_input is not None:
            self._recording.add(f"{LAYER_PLI}.{self._index}", per_layer_input)
        out = self._layer(x, *args, **kwargs)
        self._recording.add(f"{LAYER_OUT}.{self._index}", out[0] if isinstance(out, tuple) else out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._layer, name)


LAYER_OUT = "layer_outputs"
LAYER_PLI = "layer_per_layer_inputs"


def layer_tree(model: Any) -> str:
    """Human-readable location of the probed layer list, for mismatch messages."""
    layers = model.layers
    owner = type(layers[0]._layer if isinstance(layers[0], _LayerTap) else layers[0])
    return f"{owner.__module__}.{owner.__qualname__} x {len(layers)} (model.layers)"


@contextlib.contextmanager
def tap_layers(model: Any, recording: Recording, outputs: bool = True) -> Iterator[None]:
    """Tap layer 0's input always; every layer's output and per-layer input if `outputs`."""
    layers = model.layers
    originals = list(layers)
    for index, layer in enumerate(originals if outputs else originals[:1]):
        layers[index] = _LayerTap(layer, index, recording, outputs)
    try:
        yield
    finally:
        layers[:] = originals


@contextlib.contextmanager
def wrap_method(owner: Any, name: str, before: Callable[..., None]) -> Iterator[None]:
    """Shadow `owner.name` on the instance with a recorder; the class is untouched."""
    original = getattr(owner, name)

    def recorder(*args: Any, **kwargs: Any) -> Any:
        before(*args, **kwargs)
        return original(*args, **kwargs)

    object.__setattr__(owner, name, recorder)
    try:
        yield
    finally:
        object.__delattr__(owner, name)


def architecture_taps(model_type: str) -> Callable[[Any, Recording], Any] | None:
    """The `taps(model, recording)` context manager of an architecture, if it has one."""
    module = find_module(__name__, model_type, ALIASES)
    return None if module is None else module.taps


@contextlib.contextmanager
def install(model: Any, model_type: str, layer_outputs: bool = True) -> Iterator[Recording]:
    recording = Recording()
    with contextlib.ExitStack() as stack:
        stack.enter_context(tap_layers(model, recording, layer_outputs))
        extra = architecture_taps(model_type)
        if extra is not None:
            stack.enter_context(extra(model, recording))
        yield recording
