"""Turn what the taps recorded during a prompt's forward passes into a Capture."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import mlx.core as mx
import numpy as np

from .probes import Recording
from .records import Capture

_WIDEN = {mx.bfloat16, mx.float16}


def to_numpy(array: mx.array) -> tuple[np.ndarray, str]:
    """Exact host copy: half-precision floats are widened to float32 (lossless)."""
    dtype = str(array.dtype).removeprefix("mlx.core.")
    if array.dtype in _WIDEN:
        array = array.astype(mx.float32)
    return np.array(array, copy=True), dtype


class FirstLogits:
    """A logits processor that keeps the first call's logits: those of the first generated
    token, computed after the whole prompt. Both libraries' `generate_step` accept it."""

    def __init__(self) -> None:
        self.logits: mx.array | None = None

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        if self.logits is None:
            self.logits = logits
        return logits


def prompt_rows(chunks: Sequence[mx.array], prompt_len: int) -> tuple[mx.array, tuple[int, ...]]:
    """Concatenate per-call [1, n, ...] arrays and keep the prompt's rows.

    `generate_step` runs the first decode step before yielding, so calls past the prompt
    are dropped; the lengths of the calls that covered the prompt are the prefill schedule.
    """
    kept, lengths, total = [], [], 0
    for chunk in chunks:
        if total >= prompt_len:
            break
        kept.append(chunk)
        lengths.append(int(chunk.shape[1]))
        total += int(chunk.shape[1])
    if total != prompt_len:
        raise RuntimeError(
            f"recorded {total} prompt rows across {len(kept)} calls, expected {prompt_len}"
        )
    return mx.concatenate(kept, axis=1)[0], tuple(lengths)


def build_capture(
    path: str,
    case_id: str,
    input_ids: mx.array,
    recording: Recording,
    logits: mx.array | None,
    provenance: Mapping[str, Any],
) -> Capture:
    prompt_len = int(input_ids.size)
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    arrays["input_ids"], dtypes["input_ids"] = to_numpy(input_ids.reshape(-1))
    chunks: tuple[int, ...] = ()
    for stage, calls in recording.calls.items():
        rows, lengths = prompt_rows(calls, prompt_len)
        arrays[stage], dtypes[stage] = to_numpy(rows)
        if stage == "embeddings":
            chunks = lengths
    if logits is None:
        raise RuntimeError("the prompt's forward pass produced no logits")
    arrays["logits"], dtypes["logits"] = to_numpy(logits.reshape(-1))
    return Capture(
        path=path,
        case_id=case_id,
        arrays=arrays,
        dtypes=dtypes,
        prefill_chunks=chunks,
        provenance={k: str(v) for k, v in provenance.items()},
    )
