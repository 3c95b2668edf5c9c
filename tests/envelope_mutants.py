"""Add-ons for the noise-envelope and image-profile tests (named `envelope_mutants:<Class>`):
faults that keep the top-5 ranking, and rounding noise combined with a real fault."""

from __future__ import annotations

from mutants import EngineStyle

from harness.addons.gemma4 import AddOn


class SoftcapDropped(AddOn):
    """The patched text model forgets Gemma's final-logit softcapping (ranking kept)."""

    def patch_text_model(self, text_model):
        super().patch_text_model(text_model)
        text_model.language_model.final_logit_softcapping = None


class TemperatureScaled(AddOn):
    """Logits scaled by 1.05 (the final norm's weight scaled): ranking kept."""

    def patch_text_model(self, text_model):
        super().patch_text_model(text_model)
        norm = text_model.language_model.model.norm
        norm.weight = norm.weight * 1.05


class EngineStyleCausal(EngineStyle):
    """The engine's divide-and-multiply rounding AND image blocks attended causally."""

    def __init__(self, model_path):
        super().__init__(model_path)
        self.bidirectional = False
