"""Named tolerance profiles: the default check list per stage.

`exact`: every stage bit-exact (the default for text prompts).
`image`: ids, positions, per-layer inputs and attention masks exact, embeddings and injected
(DeepStack) features within one ulp of their dtype, first-token top-5 ids equal in order
and top-5 probabilities within 25% (1e-3 floor on the reference probability), the
engine's own acceptance rule, and KL(ref || cand) <= 1e-3 over the full vocabulary.
Failures after a tolerated embeddings difference that stay within its measured noise
envelope (harness.envelope) are that difference's noise.
`cross`: float32 MLX vs float32 PyTorch (the transformers path): measured rounding
bounds, masks, ids and tokens exact.
A case picks a profile (default: `image` when it has images, else `exact`) and overrides
single stages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .check_specs import (
    AllcloseSpec,
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

# Absolute bounds of the `cross` profile: about 10x the largest max |diff| between float32
# mlx-vlm / unified and float32 transformers over 16 tiny Gemma 4 / Gemma 3 configs
# (cases/three_way/ and a sweep: hidden 48, two images, a tall image, sliding windows 8
# and 16, no per-layer inputs, no KV sharing): per-layer inputs 0, embeddings 6.2e-6,
# layer outputs 1.2e-4, first-token and decode logits 3.2e-4; KL 2.2e-9, top-5
# probability relative diff 1.5e-4 (README, "The cross profile").
CROSS_ATOL = {"per_layer_inputs": 1e-5, "embeddings": 1e-4, "layers": 1e-3, "logits": 3e-3}

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
    # float32 MLX vs float32 PyTorch (the transformers path): the same model computed by two
    # frameworks differs by rounding only (bounds: CROSS_ATOL); masks, ids and tokens exact.
    # For float32 checkpoints only: bf16 MLX vs float32 PyTorch differs by the bf16
    # rounding of every weight and activation.
    "cross": {
        "input_ids": (ExactSpec(),),
        "position_ids": (ExactSpec(),),
        "per_layer_inputs": (AllcloseSpec(atol=CROSS_ATOL["per_layer_inputs"]),),
        "embeddings": (AllcloseSpec(atol=CROSS_ATOL["embeddings"]),),
        "attention_mask": (ExactSpec(),),
        "layers": (StatsSpec(max_abs=CROSS_ATOL["layers"]),),
        "deepstack": (AllcloseSpec(atol=CROSS_ATOL["layers"]),),
        "logits": (
            AllcloseSpec(atol=CROSS_ATOL["logits"]),
            TopkSpec(
                k=5, order=True, prob_rtol=1e-3, ref_floor=1e-3, tie_margin=CROSS_ATOL["logits"]
            ),
            KlSpec(max=1e-7),
            *DISTRIBUTION[1:],
        ),
        "tokens": (ExactSpec(),),
    },
}
# Decode steps' logits are checked as the first token's ("logits") unless a case says
# otherwise (cases.CaseSpec.checks).
DECODE_FOLLOWS = "logits"
