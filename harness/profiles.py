"""Named tolerance profiles: the default check list per stage.

`exact`: every stage bit-exact (the default for text prompts).
`image`: ids, positions, per-layer inputs and attention masks exact, embeddings and injected
(DeepStack) features within one ulp of their dtype, first-token top-5 ids equal in order
and top-5 probabilities within 25% (1e-3 floor on the reference probability), the
engine's own acceptance rule, and KL(ref || cand) <= 1e-3 over the full vocabulary.
Failures after a tolerated embeddings difference that stay within its measured noise
envelope (harness.envelope) are that difference's noise.
A case picks a profile (default: `image` when it has images, else `exact`) and overrides
single stages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .check_specs import (
    CheckSpec,
    DeltaPSpec,
    ExactSpec,
    JaccardSpec,
    KlSpec,
    StatsSpec,
    Top1Spec,
    TopkSpec,
    UlpSpec,
)

Profile = Mapping[str, Sequence[CheckSpec]]

# Distribution metrics on the first-token logits: always reported, never gating by default.
DISTRIBUTION = (
    KlSpec(max=1e-3, gate=False),
    Top1Spec(gate=False),
    JaccardSpec(k=5, min=1.0, gate=False),
    DeltaPSpec(max=0.05, gate=False),
)

PROFILES: dict[str, Profile] = {
    "exact": {
        "input_ids": (ExactSpec(),),
        "position_ids": (ExactSpec(),),
        "per_layer_inputs": (ExactSpec(),),
        "embeddings": (ExactSpec(),),
        "attention_mask": (ExactSpec(),),
        "layers": (StatsSpec(max_abs=0.0),),
        "deepstack": (ExactSpec(),),
        "logits": (ExactSpec(), *DISTRIBUTION),
        "tokens": (ExactSpec(),),
    },
    "image": {
        "input_ids": (ExactSpec(),),
        "position_ids": (ExactSpec(),),
        "per_layer_inputs": (ExactSpec(),),
        "embeddings": (UlpSpec(ulps=1),),
        "attention_mask": (ExactSpec(),),
        # Per-layer probes locate the first bit of drift without gating on it.
        "layers": (StatsSpec(max_abs=0.0, gate=False),),
        # Injected visual features gate like the embeddings they are made of.
        "deepstack": (UlpSpec(ulps=1),),
        # KL gates too: a logit transform that keeps the ranking (softcap dropped,
        # temperature) must fail. 1e-3 nats: bit-exact add-ons give 0, a dropped softcap
        # 0.0075-0.053 on the shipped image configs (README, "image profile"). Noise that a
        # tolerated embeddings difference carries here is judged by the noise envelope.
        "logits": (
            TopkSpec(k=5, order=True, prob_rtol=0.25, ref_floor=1e-3),
            KlSpec(max=1e-3),
            *DISTRIBUTION[1:],
        ),
        # The engine's own decode test: generated tokens equal.
        "tokens": (ExactSpec(),),
    },
}
# Decode steps' logits are checked as the first token's ("logits") unless a case says
# otherwise (cases.CaseSpec.checks).
DECODE_FOLLOWS = "logits"
