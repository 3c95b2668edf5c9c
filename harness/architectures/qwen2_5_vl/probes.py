"""Qwen2.5-VL taps: the rotary positions decoder layer 0 is given (`position_ids` stage).
Native mlx-vlm passes its layers M-RoPE `position_ids` [3, B, n] (or [B, n] for a text
prompt); a plain mlx-lm Qwen2 passes none and rotates by its cache offset, which the core
tap records as one 1-D column. The core records both once an architecture turns it on."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ...probes import Recording

# Stages this architecture adds to the common ones (listed by `mlx-parity list
# --architectures`).
STAGES = ("position_ids",)


@contextlib.contextmanager
def taps(model: Any, recording: Recording) -> Iterator[None]:
    recording.positions = True
    yield
