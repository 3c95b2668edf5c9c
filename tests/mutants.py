"""Deliberately broken Gemma 4 add-ons: each reproduces a real wiring mistake. The gate
must FAIL every one of them and name the stage where it enters. Loaded by the runner as
`mutants:<Class>` (this directory is on sys.path under pytest), like any add-on that lives
outside the harness package."""

from __future__ import annotations

import dataclasses

import mlx.core as mx

from harness.addons.gemma4 import AddOn, UnifiedGemma4TextModel


def _scatter(decoder, input_ids, image_token_id, embeddings, features):
    from mlx_vlm.models.gemma4.gemma4 import masked_scatter

    mask = mx.broadcast_to(mx.expand_dims(input_ids == image_token_id, -1), embeddings.shape)
    return masked_scatter(embeddings, mask, features.astype(embeddings.dtype))


class EngineStyle(AddOn):
    """mlx-engine's design (correct, but not exact for every hidden size): unscaled token
    embeddings, image features divided by embed_scale, mlx-lm multiplies by it again."""

    def feature_divisor(self, decoder):
        return decoder.embed_scale

    def merge_features(self, decoder, input_ids, features):
        return _scatter(
            decoder,
            input_ids,
            self.config.image_token_id,
            decoder.embed_tokens(input_ids),
            features / self.feature_divisor(decoder),
        )

    def prompt_state(self, input_ids):
        return dataclasses.replace(super().prompt_state(input_ids), prescaled=False)


class FeaturesNotDivided(EngineStyle):
    """Image features not divided by embed_scale: mlx-lm scales them once too often."""

    def feature_divisor(self, decoder):
        return 1


class EmbedScaleTwice(AddOn):
    """Scaled embeddings handed to a decoder that scales them again."""

    def prompt_state(self, input_ids):
        return dataclasses.replace(super().prompt_state(input_ids), prescaled=False)


class PerLayerInputsNotZeroed(AddOn):
    """Image tokens keep their own per-layer embeddings instead of token 0's."""

    def per_layer_input_ids(self, input_ids):
        return input_ids


class PerLayerInputsNotPassed(AddOn):
    """No per-layer inputs injected: mlx-lm computes them from the raw ids."""

    def per_layer_input_ids(self, input_ids):
        return None


class _UnslicedDecoder(UnifiedGemma4TextModel):
    @staticmethod
    def per_layer_rows(ids, start, stop):
        return ids[:, : stop - start]


class PerLayerInputsNotSliced(AddOn):
    """Every prefill chunk gets the prompt's first rows of per-layer inputs."""

    def patch_text_model(self, text_model):
        text_model.language_model.model.__class__ = _UnslicedDecoder


class CausalVision(AddOn):
    """Bidirectional attention inside image blocks turned causal."""

    def __init__(self, model_path):
        super().__init__(model_path)
        self.bidirectional = False


class _NudgedLayer:
    """Adds a tiny offset to what enters one decoder layer, nothing else."""

    def __init__(self, layer, amount):
        self._layer, self._amount = layer, amount

    def __call__(self, x, *args, **kwargs):
        return self._layer(x + self._amount, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._layer, name)


class NudgeLayerTwoInput(AddOn):
    """Perturbs only decoder layer 2's input in the unified path (a wiring slip deep in
    the stack): everything before layer 2 matches, the verdict must name layer 2."""

    LAYER = 2

    def patch_text_model(self, text_model):
        super().patch_text_model(text_model)
        layers = text_model.layers
        layers[self.LAYER] = _NudgedLayer(layers[self.LAYER], 1e-2)


class DropsLastToken(AddOn):
    """Returns one token fewer than the processor produced: sequence lengths differ."""

    def compute_embeddings(self, *args, **kwargs):
        ids, embeddings = super().compute_embeddings(*args, **kwargs)
        return ids[:-1], embeddings[:-1]


class NanInEmbeddings(AddOn):
    """One image feature row turned into NaN."""

    def merge_features(self, decoder, input_ids, features):
        features = features.at[:, 0].multiply(mx.array(float("nan"), features.dtype))
        return super().merge_features(decoder, input_ids, features)


class NotAnAddOn:
    """Constructible, but has no compute_embeddings."""

    def __init__(self, model_path):
        pass
