"""Path sessions for near-tie tests: the native path with the first-token logits edited
after capture. Named in a case as `logit_paths:<Class>` (a path from outside the harness)."""

from __future__ import annotations

import dataclasses

import numpy as np

from harness.checks import ulp
from harness.paths.native import NativeSession


class _EditedLogits(NativeSession):
    def capture(self, case):
        capture = super().capture(case)
        logits = capture.arrays["logits"].copy()
        self.edit(logits, capture.dtypes["logits"])
        return dataclasses.replace(
            capture, path=type(self).__name__, arrays={**capture.arrays, "logits": logits}
        )

    @staticmethod
    def ranked(logits):
        return np.argsort(-logits, kind="stable")

    def edit(self, logits, dtype):
        raise NotImplementedError


class NearTieReference(_EditedLogits):
    """Top-2 token pulled to exactly one ulp below the top-1 token: a near-tied pair."""

    def edit(self, logits, dtype):
        first, second = self.ranked(logits)[:2]
        logits[second] = logits[first] - ulp(logits[first : first + 1], dtype)[0]


class NearTieSwapped(NearTieReference):
    """The same near-tied pair with its order flipped by a 1-ulp move of each token."""

    def edit(self, logits, dtype):
        super().edit(logits, dtype)
        first, second = self.ranked(logits)[:2]
        logits[first], logits[second] = logits[second], logits[first]


class SeparatedSwapped(_EditedLogits):
    """The top-1 and top-3 tokens (clearly separated) with their order flipped."""

    def edit(self, logits, dtype):
        first, _, third = self.ranked(logits)[:3]
        logits[first], logits[third] = logits[third], logits[first]


class TruncatedVocab(_EditedLogits):
    """Reports logits for a smaller vocabulary than the reference."""

    def capture(self, case):
        capture = super().capture(case)
        logits = capture.arrays["logits"][:-16]
        return dataclasses.replace(capture, arrays={**capture.arrays, "logits": logits})

    def edit(self, logits, dtype):
        pass
