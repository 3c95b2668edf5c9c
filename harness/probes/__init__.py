"""Capture taps installed on a loaded model instance and removed afterwards.

Generic taps work on any mlx-lm / mlx-vlm model exposing `.layers` (the decoder layers,
as both libraries do for KV-cache construction). Architecture files in this package add
taps for architecture-specific tensors (e.g. Gemma 4's per-layer inputs); they are found
by `model_type`, so a new architecture adds a file and touches nothing here.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

ALIASES: dict[str, str] = {"gemma4_text": "gemma4"}


@dataclass
class Recording:
    """Per-call arrays, in call order; a path trims them to the prompt afterwards."""

    calls: dict[str, list[mx.array]] = field(default_factory=dict)

    def add(self, stage: str, value: mx.array) -> None:
        self.calls.setdefault(stage, []).append(value)


class _LayerTap:
    """Stands in for a decoder layer in its parent's list and records its input."""

    def __init__(self, layer: Any, on_input: Callable[[mx.array], None]) -> None:
        self._layer = layer
        self._on_input = on_input

    def __call__(self, x: mx.array, *args: Any, **kwargs: Any) -> Any:
        self._on_input(x)
        return self._layer(x, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._layer, name)


@contextlib.contextmanager
def tap_first_layer_input(model: Any, recording: Recording) -> Iterator[None]:
    """Record the hidden state entering decoder layer 0: the embeddings after any scaling."""
    layers = model.layers
    original = layers[0]
    layers[0] = _LayerTap(original, lambda x: recording.add("embeddings", x))
    try:
        yield
    finally:
        layers[0] = original


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
    name = ALIASES.get(model_type, model_type)
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
        return None
    return module.taps


@contextlib.contextmanager
def install(model: Any, model_type: str) -> Iterator[Recording]:
    recording = Recording()
    with contextlib.ExitStack() as stack:
        stack.enter_context(tap_first_layer_input(model, recording))
        extra = architecture_taps(model_type)
        if extra is not None:
            stack.enter_context(extra(model, recording))
        yield recording
