"""Pixtral vision add-on for the unified path: Mistral 3's add-on (same tower, same prompt
layout, same merge: harness/architectures/mistral3/addon.py says why it is bit-exact) with
Pixtral's own modules. What differs is the projector: mlx-vlm's LLaVA projector (linear,
GELU, linear, with biases) on the tower's selected layer, one image token per patch (no
norm, no patch merger, so `image_sizes` reaches only the tower)."""

from __future__ import annotations

from typing import Any

import mlx.core as mx

from ..mistral3.addon import AddOn as Mistral3AddOn


class AddOn(Mistral3AddOn):
    """mlx-engine-compatible vision add-on for Pixtral (`model_type: pixtral`)."""

    MODEL_TYPE = "pixtral"

    @staticmethod
    def _vlm() -> Any:
        from mlx_vlm.models import pixtral

        return pixtral

    def _vision_modules(self) -> tuple[Any, Any]:
        from mlx_vlm.models.pixtral.pixtral import LlavaMultiModalProjector

        tower = self._vlm().VisionModel(self.config.vision_config)
        return tower, LlavaMultiModalProjector(self.config)

    def project(self, selected: mx.array, image_sizes: Any) -> mx.array:
        """LLaVA's projector on every patch of every image, as native calls it."""
        return self.multi_modal_projector(selected)
