"""Capture taps installed on a loaded model instance and removed afterwards.

Generic taps work on any mlx-lm / mlx-vlm model exposing `.layers` (the decoder layers,
as both libraries do for KV-cache construction). An architecture folder's probes.py adds
taps for architecture-specific tensors (e.g. Gemma 4's per-layer inputs); it is found by
`model_type`, so a new architecture touches nothing here.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx

from ._masks import MaskCall, key_width, layer_types

# perturb(x, offset) -> x: replaces what enters decoder layer 0 in every forward call;
# `offset` is the number of prompt rows processed by earlier calls.
Perturbation = Callable[[mx.array, int], mx.array]


@dataclass
class Recording:
    """Per-call arrays, in call order; a path trims them to the prompt afterwards.

    `final_call_only`: stages whose prefill-chunk values the model itself never uses (MLX's
    lazy graph would skip computing them); they are kept for the final call only, so that
    probing adds no compute, and compared at the last position.

    `masks`: per layer type, the attention mask its first layer was called with in each
    forward call, as passed (see `_masks`)."""

    calls: dict[str, list[mx.array]] = field(default_factory=dict)
    final_call_only: set[str] = field(default_factory=set)
    masks: dict[str, list[MaskCall]] = field(default_factory=dict)
    # Set by an architecture's taps: record the rotary positions decoder layer 0 is given
    # (`position_ids` stage), and what is added to the hidden state between layers
    # (`deepstack.N` stages, from every layer's input).
    positions: bool = False
    between_layers: bool = False
    n_calls: int = 0  # forward calls seen by decoder layer 0
    rows_seen: int = 0  # rows of those calls: the absolute position after the current one

    def add(self, stage: str, value: mx.array) -> None:
        self.calls.setdefault(stage, []).append(value)

    def begin_call(self, rows: int) -> int:
        """Layer 0 starts a forward call of `rows` rows; returns the rows before it."""
        start = self.rows_seen
        self.n_calls += 1
        self.rows_seen += rows
        return start


class _LayerTap:
    """Stands in for a decoder layer in its parent's list; records what enters layer 0
    (the embeddings after any scaling), what leaves every layer, the per-layer input
    each layer receives where the architecture has one, and the attention mask the first
    layer of each type is called with. Records only: never changes the arrays passed
    through, unless a perturbation of layer 0's input was asked for."""

    def __init__(
        self,
        layer: Any,
        index: int,
        recording: Recording,
        outputs: bool,
        mask_type: str | None = None,
        perturb: Perturbation | None = None,
    ) -> None:
        self._layer = layer
        self._index = index
        self._recording = recording
        self._outputs = outputs
        self._mask_type = mask_type
        self._perturb = perturb

    def __call__(self, x: mx.array, *args: Any, **kwargs: Any) -> Any:
        recording = self._recording
        if self._index == 0:
            start = recording.begin_call(x.shape[1])
            if self._perturb is not None:
                x = self._perturb(x, start)
            recording.add("embeddings", x)
            if recording.positions:
                recording.add(POSITIONS, self._positions(x, start, args, kwargs))
        elif self._outputs and recording.between_layers:
            recording.add(f"{LAYER_IN}.{self._index}", x)
        if self._outputs:
            per_layer_input = kwargs.get("per_layer_input")
            if per_layer_input is not None:
                recording.add(f"{LAYER_PLI}.{self._index}", per_layer_input)
        out = self._layer(x, *args, **kwargs)
        if self._outputs:
            recording.add(f"{LAYER_OUT}.{self._index}", out[0] if isinstance(out, tuple) else out)
        if self._mask_type is not None:
            self._record_mask(x, args, kwargs)
        return out

    def _positions(self, x: mx.array, start: int, args: tuple, kwargs: dict) -> mx.array:
        """The positions this call's rows are rotated by, as [1, rows, sections]: the
        `position_ids` argument when the layer is given one ([sections, B, rows] for
        M-RoPE), else the sequence positions a plain RoPE applies from its cache offset
        ([1, rows, 1]: an M-RoPE model fed these has lost its image positions)."""
        positions = kwargs.get("position_ids")
        slot = _position_slot(self._layer)
        if positions is None and slot is not None and slot < len(args):
            positions = args[slot]
        if positions is None:
            return mx.arange(start, start + x.shape[1])[None, :, None]
        if positions.ndim == 2:  # [B, rows]: one section
            return positions[..., None]
        return positions.transpose(1, 2, 0)

    def _record_mask(self, x: mx.array, args: tuple, kwargs: dict) -> None:
        """After the call: a rotating cache's width is known once it was updated. Only
        references and shapes are kept; nothing is evaluated."""
        recording = self._recording
        mask = args[0] if args else kwargs.get("mask", kwargs.get("attention_mask"))
        cache = args[1] if len(args) > 1 else kwargs.get("cache")
        end = recording.rows_seen
        call = MaskCall(
            call=recording.n_calls - 1,
            end=end,
            queries=int(x.shape[1]),
            width=key_width(mask, cache, end),
            mask=mask,
        )
        recording.masks.setdefault(self._mask_type, []).append(call)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._layer, name)


LAYER_OUT = "layer_outputs"
LAYER_PLI = "layer_per_layer_inputs"
LAYER_IN = "layer_inputs"
POSITIONS = "position_ids"


def _position_slot(layer: Any) -> int | None:
    """Index of a `position_ids` parameter among the positional arguments after the hidden
    state, by the layer's signature (mlx-vlm's Qwen VL layers take it 4th)."""
    try:
        names = list(inspect.signature(layer.__call__).parameters)
    except (TypeError, ValueError):
        return None
    return names.index(POSITIONS) - 1 if POSITIONS in names[1:] else None


def layer_tree(model: Any) -> str:
    """Human-readable location of the probed layer list, for mismatch messages."""
    layers = model.layers
    owner = type(layers[0]._layer if isinstance(layers[0], _LayerTap) else layers[0])
    return f"{owner.__module__}.{owner.__qualname__} x {len(layers)} (model.layers)"


@contextlib.contextmanager
def tap_layers(
    model: Any,
    recording: Recording,
    outputs: bool = True,
    perturb: Perturbation | None = None,
) -> Iterator[None]:
    """Tap layer 0's input and the first layer of each attention type's mask always;
    every layer's output and per-layer input if `outputs`."""
    layers = model.layers
    originals = list(layers)
    first_of_type: dict[str, int] = {}
    for index, kind in enumerate(layer_types(model, originals)):
        first_of_type.setdefault(kind, index)
    mask_types = {index: kind for kind, index in first_of_type.items()}
    for index, layer in enumerate(originals):
        if index == 0 or outputs or index in mask_types:
            layers[index] = _LayerTap(
                layer,
                index,
                recording,
                outputs,
                mask_type=mask_types.get(index),
                perturb=perturb if index == 0 else None,
            )
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
    from ..architectures import component

    module = component(model_type, "probes")
    return None if module is None else module.taps


@contextlib.contextmanager
def install(
    model: Any,
    model_type: str,
    layer_outputs: bool = True,
    perturb_embeddings: Perturbation | None = None,
    offset: int = 0,
) -> Iterator[Recording]:
    """Install every tap on `model` for the duration of the block. `perturb_embeddings(x,
    offset)` (for noise envelopes) replaces what enters decoder layer 0, before it is
    recorded: the captured embeddings are the perturbed ones."""
    # `offset`: prompt rows already in the KV cache (a restored prefix): calls' positions,
    # mask rows and perturbation rows are counted from it.
    recording = Recording(rows_seen=offset)
    with contextlib.ExitStack() as stack:
        stack.enter_context(tap_layers(model, recording, layer_outputs, perturb_embeddings))
        extra = architecture_taps(model_type)
        if extra is not None:
            stack.enter_context(extra(model, recording))
        yield recording
