"""Deliberately broken Pixtral add-ons: the gate must FAIL each one at the stage where its
mistake enters (tests/test_pixtral.py). The mistakes shared with Mistral 3 reuse its
mutants (tests/mistral3_mutants.py) on Pixtral's add-on. Loaded by the runner as
`pixtral_mutants:<Class>` (tests/ is on sys.path under pytest)."""

from __future__ import annotations

import mistral3_mutants as shared

from harness.architectures.pixtral.addon import AddOn


class Float32Features(shared.Float32Features, AddOn):
    """Tower output upcast to float32 before the LLaVA projector: float32 features and
    embeddings where native keeps the checkpoint's dtype."""


class ContiguousImageSpan(shared.ContiguousImageSpan, AddOn):
    """Each image's features written as one run from its first [IMG]: [IMG_BREAK] rows take
    features, the last [IMG] rows keep token embeddings. Invisible on a one-row grid."""


class PenultimateVisionLayer(AddOn):
    """Features from the tower's penultimate layer: transformers' LlavaConfig default
    (`vision_feature_layer: -2`), where Pixtral selects the last (-1)."""

    def image_features(self, pixel_values, image_sizes):
        *_, hidden_states = self.vision_tower(
            pixel_values.transpose(0, 2, 3, 1), output_hidden_states=True, image_sizes=image_sizes
        )
        return self.project(hidden_states[-2], image_sizes)
