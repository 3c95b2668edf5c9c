"""Named tolerance profiles: the default check list per stage.

`exact`: every stage bit-exact (the default for text prompts).
`image`: ids and per-layer inputs exact, embeddings within one ulp of their dtype,
first-token top-5 ids equal in order and top-5 probabilities within 25% (1e-3 floor on
the reference probability): the engine's own acceptance rule.
A case picks a profile (default: `image` when it has images, else `exact`) and overrides
single stages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .checks import CheckSpec, ExactSpec, TopkSpec, UlpSpec

Profile = Mapping[str, Sequence[CheckSpec]]

PROFILES: dict[str, Profile] = {
    "exact": {
        "input_ids": (ExactSpec(),),
        "per_layer_inputs": (ExactSpec(),),
        "embeddings": (ExactSpec(),),
        "logits": (ExactSpec(),),
    },
    "image": {
        "input_ids": (ExactSpec(),),
        "per_layer_inputs": (ExactSpec(),),
        "embeddings": (UlpSpec(ulps=1),),
        "logits": (TopkSpec(k=5, order=True, prob_rtol=0.25, ref_floor=1e-3),),
    },
}
