"""Qwen3-VL taps: the rotary positions decoder layer 0 is given (`position_ids`: interleaved
M-RoPE [3, B, n] on native and on a patched unified path; the implicit 1-D positions of a
plain RoPE otherwise) and what is added to the hidden state between decoder layers
(`deepstack.N`: the DeepStack visual features after layer N, zero where nothing is added),
both recorded by the generic layer taps once switched on here."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ...probes import Recording

# Stages this architecture adds to the common ones (listed by `mlx-parity list
# --architectures`).
STAGES = ("position_ids", "deepstack.N")


@contextlib.contextmanager
def taps(model: Any, recording: Recording) -> Iterator[None]:
    recording.positions = True
    recording.between_layers = True
    yield
