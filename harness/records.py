"""Typed records exchanged by the stages: capture -> compare -> verdict -> report.

Plain frozen dataclasses of arrays and metadata: the runner builds them, the report only
reads them.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

# The order in which data flows through a decoder; "first diverging stage" follows it.
# "layers" stands for the per-layer stages "layer.0" ... "layer.N-1".
# "deepstack" stands for "deepstack.0" ...: what is added to the hidden state between
# decoder layer N's output and layer N+1's input (Qwen3-VL's DeepStack visual features),
# ranked between layer.N and layer.N+1.
STAGE_ORDER: tuple[str, ...] = (
    "input_ids",
    "position_ids",
    "per_layer_inputs",
    "embeddings",
    "attention_mask",
    "layers",
    "deepstack",
    "logits",
    "decode",
    "tokens",
)
LAYER_PREFIX = "layer."
DEEPSTACK_PREFIX = "deepstack."
# Per deepstack.N, the hidden state's magnitude around the addition (not a stage).
DEEPSTACK_SCALE = "deepstack_scale"
# "decode" stands for "decode.1" ... "decode.N": the logits of each greedy decode step after
# the first token; "tokens" for the greedy tokens each path generated.
DECODE_PREFIX = "decode."


def layer_stage(index: int) -> str:
    return f"{LAYER_PREFIX}{index}"


def deepstack_stage(index: int) -> str:
    return f"{DEEPSTACK_PREFIX}{index}"


def decode_stage(step: int) -> str:
    return f"{DECODE_PREFIX}{step}"


def stage_rank(stage: str) -> tuple[int, int]:
    if stage.startswith(DECODE_PREFIX):
        return STAGE_ORDER.index("decode"), int(stage.removeprefix(DECODE_PREFIX))
    layers = STAGE_ORDER.index("layers")
    if stage.startswith(LAYER_PREFIX):
        return layers, 2 * int(stage.removeprefix(LAYER_PREFIX))
    if stage.startswith(DEEPSTACK_PREFIX):
        return layers, 2 * int(stage.removeprefix(DEEPSTACK_PREFIX)) + 1
    return (STAGE_ORDER.index(stage) if stage in STAGE_ORDER else len(STAGE_ORDER)), 0


@dataclass(frozen=True)
class Digest:
    """A stage held as a fingerprint instead of its values (a compact recording, see
    harness.golden): the sha256 of its exact bytes decides equality, the statistics say how
    far a different array moved. `last_*`: the same for the last row alone, for stages a
    path may keep at the last prompt position only. `topk_*` / `lse`: logits recorded as
    their top-k ids and values plus the log-sum-exp (a real checkpoint's vocabulary)."""

    sha256: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype of the hashed bytes (floats widened to float32, as captured)
    stats: Mapping[str, float]
    last_sha256: str = ""
    last_stats: Mapping[str, float] = field(default_factory=dict)
    topk_ids: tuple[int, ...] = ()
    topk_values: tuple[float, ...] = ()
    lse: float = float("nan")


@dataclass(frozen=True)
class Capture:
    """What one path fed its decoder, and what came out, for one case.

    `arrays` hold float data widened to float32 (exact for bf16/fp16); `dtypes` keeps the
    dtype the decoder really saw, which ulp-based checks need.
    """

    path: str
    case_id: str
    arrays: Mapping[str, np.ndarray]
    dtypes: Mapping[str, str]
    prefill_chunks: tuple[int, ...]
    provenance: Mapping[str, str] = field(default_factory=dict)
    # Where the per-layer probes sat, e.g. "gemma4_text.Gemma4TextModel.layers (4)".
    layer_tree: str = ""
    # The prompt as the path rendered it (chat template applied), shown when ids differ.
    prompt_text: str = ""
    # Token strings of input_ids (decoded one by one), for "first differing position".
    tokens: tuple[str, ...] = ()
    # Stages held only as fingerprints (a compact recording): stage -> Digest. compare
    # checks them against the other side's arrays (harness.digests).
    digests: Mapping[str, Digest] = field(default_factory=dict)
    # A replayed capture: the recording it was read from ("" for a live capture), and what
    # differs between where it was recorded and here (name -> "recorded X, now Y").
    recording: str = ""
    environment: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CheckResult:
    case_id: str
    stage: str
    check: str
    metric: str
    value: float
    threshold: float
    passed: bool
    # Smallest tolerance of this metric that would have passed (Polygraphy's
    # "minimum required tolerance"); nan when no tolerance can make it pass.
    required: float
    detail: str = ""
    # False for diagnostics: they locate a divergence but never fail the verdict.
    gating: bool = True

    @property
    def margin(self) -> float:
        """Threshold minus value: how far from failing (negative when failed)."""
        return self.threshold - self.value


class Status(str, enum.Enum):
    PASS = "pass"
    FAIL = "fail"
    ERROR = "error"
    SKIP = "skip"


@dataclass(frozen=True)
class Verdict:
    case_id: str
    source: str
    status: Status
    checks: tuple[CheckResult, ...] = ()
    # First stage with any failed check, gating or diagnostic (where drift is located).
    first_divergence: str | None = None
    reason: str = ""
    # First stage whose captured arrays differ at all, even within tolerance, and how.
    first_difference: str | None = None
    first_difference_detail: str = ""
    # First stage with a failed gating check (what fails the case), and which check.
    first_failure: str | None = None
    first_failure_detail: str = ""
    # Both paths' rendered prompts (reference, candidate), kept when their ids differ.
    prompt_texts: tuple[str, ...] = ()
    # What the measured noise envelope says about the differences after the first one.
    envelope_note: str = ""
    # An ERROR caused by the case file or its names (exit code 2), not by a run.
    config_error: bool = False
    reference: str = ""
    candidate: str = ""
    provenance: Mapping[str, str] = field(default_factory=dict)
    # Image prompts: per-image grids of the embedding error of each image token.
    image_token_errors: tuple[np.ndarray, ...] = ()
    # Seconds the case took (captures and comparison), for the JUnit `time` attribute.
    duration: float = 0.0
    # The checkpoint's model_type ("" when unknown), for the JUnit classname.
    architecture: str = ""
    # File names of the prompt's images, in order: titles of the image-token heatmaps.
    image_names: tuple[str, ...] = ()

    def worst_check(self) -> CheckResult | None:
        """Failed checks first, then the smallest margin; ties go to the latest stage."""
        return min(
            (c for c in self.checks if c.gating),
            key=lambda c: (c.passed, c.margin, tuple(-r for r in stage_rank(c.stage))),
            default=None,
        )
