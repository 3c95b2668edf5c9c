"""A noise envelope, measured: how far the reference's own rounding noise carries.

When the first difference between the paths is tolerated (e.g. 1 bf16 ulp on the image
rows of the embeddings), every later stage differs too, and whether a top-5 order or a KL
threshold then fails is a property of the random weights, not of the add-on. So the
reference path runs again with its embeddings perturbed by the observed difference pattern
(same rows, same magnitudes, random signs; a few draws), and the spread of each later
stage over the draws is the envelope. A candidate whose later stages stay within
`SLACK` times the envelope carries only the noise of its first difference; one that leaves
it has a separate fault, named at the stage where it leaves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .records import Capture

PERTURBED_STAGE = "embeddings"
# Later stages may deviate this many times the largest deviation seen over the draws.
# Measured on the shipped Gemma 4 configs (README, "noise envelope"): the candidate's
# rounding noise and the draws' spread agree within a factor of ~1.5.
SLACK = 2.0


@dataclass(frozen=True)
class StageEnvelope:
    stage: str
    candidate: float  # max |diff| of the candidate against the reference
    bound: float  # SLACK x the largest max |diff| of a perturbed reference draw
    draws: int

    @property
    def within(self) -> bool:
        return bool(np.isfinite(self.candidate) and self.candidate <= self.bound)


def delta_of(reference: Capture, candidate: Capture) -> np.ndarray | None:
    """|candidate - reference| at the perturbed stage, or None when it cannot be used."""
    ref = reference.arrays.get(PERTURBED_STAGE)
    test = candidate.arrays.get(PERTURBED_STAGE)
    if ref is None or test is None or ref.shape != test.shape or ref.ndim != 2:
        return None
    delta = np.abs(test.astype(np.float32) - ref.astype(np.float32))
    return delta if np.isfinite(delta).all() and delta.any() else None


def perturbation(delta: np.ndarray, seed: int) -> Callable:
    """`perturb(x, offset)` for the layer-0 tap: adds `delta` with random signs to the
    prompt rows [offset, offset + n) of the hidden state entering decoder layer 0."""
    import mlx.core as mx

    signs = np.random.default_rng(seed).choice(np.array([-1.0, 1.0], np.float32), delta.shape)
    shift = mx.array(delta * signs)

    def perturb(x: mx.array, offset: int) -> mx.array:
        rows = shift[offset : offset + x.shape[1]]
        if rows.shape[0] != x.shape[1]:  # past the prompt (a decode step): untouched
            return x
        return (x.astype(mx.float32) + rows[None]).astype(x.dtype)

    return perturb


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    diff = np.abs(a.astype(np.float64) - b.astype(np.float64))
    return float(diff.max()) if diff.size else 0.0


def measure(
    stages: dict[str, tuple[np.ndarray, np.ndarray, str]],
    reference: Capture,
    draws: Sequence[Capture],
    arrays_of: Callable[[Capture, Capture], dict[str, tuple[np.ndarray, np.ndarray, str]]],
) -> dict[str, StageEnvelope]:
    """Per stage after the perturbed one: the candidate's deviation and the envelope.
    `stages` are the candidate's compared arrays; `arrays_of` aligns a draw the same way."""
    order = list(stages)
    later = order[order.index(PERTURBED_STAGE) + 1 :] if PERTURBED_STAGE in order else []
    spreads: dict[str, float] = dict.fromkeys(later, 0.0)
    for draw in draws:
        aligned = arrays_of(reference, draw)
        for stage in later:
            if stage in aligned:
                ref, test, _ = aligned[stage]
                spreads[stage] = max(spreads[stage], _max_abs(ref, test))
    return {
        stage: StageEnvelope(
            stage, _max_abs(stages[stage][0], stages[stage][1]), SLACK * spreads[stage], len(draws)
        )
        for stage in later
    }
