"""Deliberately broken Gemma 4 add-ons: each reproduces a real wiring mistake. The gate
must FAIL every one of them and name the stage where it enters. Loaded by the runner as
`mutants:<Class>` (this directory is on sys.path under pytest), like any add-on that lives
outside the harness package."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
from mlx_lm.models import gemma4_text

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


# --- Bug families exposed by the cases of tests/test_gemma4_families.py -------------------


class _WindowlessDecoder(UnifiedGemma4TextModel):
    def _make_masks(self, h, cache):
        window, self.window_size = self.window_size, 1 << 30
        try:
            return super()._make_masks(h, cache)
        finally:
            self.window_size = window


class WindowIgnored(AddOn):
    """Sliding-window layers attend causally to every key their cache holds: the window
    is ignored (invisible while the prompt fits in the window)."""

    def patch_text_model(self, text_model):
        text_model.language_model.model.__class__ = _WindowlessDecoder


class _PositionFromCacheSize(UnifiedGemma4TextModel):
    @staticmethod
    def prompt_position(cache):
        # A rotating cache's size() stops growing at the window: past it, the chunk's
        # per-layer rows are taken from the wrong place.
        return cache[0].size() if cache and cache[0] is not None else 0


class PositionFromCacheSize(AddOn):
    """The chunk's prompt position read from the layer-0 cache's size (capped at the
    sliding window) instead of its offset: per-layer inputs mis-sliced past the window."""

    def patch_text_model(self, text_model):
        text_model.language_model.model.__class__ = _PositionFromCacheSize


class _LoopScheduleDecoder(UnifiedGemma4TextModel):
    def runs_in_one_pass(self, state, start, stop):
        return False

    @staticmethod
    def _refuse_split_blocks(blocks, start, stop):
        pass


class LoopScheduleBidirectional(AddOn):
    """Follows the engine loop's chunks for a bidirectional image prompt and lays the
    image-block mask inside each chunk only (what mlx-vlm does when chunking is forced):
    image tokens never see the later tokens of their block that fall in a later chunk."""

    def patch_text_model(self, text_model):
        text_model.language_model.model.__class__ = _LoopScheduleDecoder


class _OneTokenDecodeDecoder(UnifiedGemma4TextModel):
    def runs_in_one_pass(self, state, start, stop):
        return stop - start > 1 and super().runs_in_one_pass(state, start, stop)

    def _make_masks(self, h, cache):
        if h.shape[1] == 1:  # "a one-token call is a decode step": no block check, causal
            return gemma4_text.Gemma4TextModel._make_masks(self, h, cache)
        return super()._make_masks(h, cache)


class OneTokenChunkIsDecode(AddOn):
    """Takes a one-token prefill chunk (`prefill_step_size: 1`) for a decode step: no
    one-pass prefill, no image-block check, image tokens silently attend causally."""

    def patch_text_model(self, text_model):
        text_model.language_model.model.__class__ = _OneTokenDecodeDecoder


class ReencodesWithSpecials(AddOn):
    """Re-tokenizes the prompt with the tokenizer's defaults (special tokens on) before
    expanding the image placeholders: a tokenizer that adds <bos> puts one more in front
    of what native feeds. Invisible with a tokenizer that adds nothing."""

    def compute_embeddings(self, text_model, prompt_tokens, images_b64, max_size):
        tokenizer = self.processor.tokenizer
        again = tokenizer.encode(tokenizer.decode(prompt_tokens.tolist()))
        return super().compute_embeddings(text_model, mx.array(again), images_b64, max_size)


def _reloaded(image, fmt, **options):
    import io

    from PIL import Image

    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


class JpegTransport(AddOn):
    """Images handed over as JPEG (quality 95) instead of their original bytes, as an
    engine that re-encodes uploads would."""

    @staticmethod
    def load_images(images_b64, max_size):
        return [_reloaded(i, "JPEG", quality=95) for i in AddOn.load_images(images_b64, max_size)]


class Mirrored(AddOn):
    """Images mirrored left-right (an orientation mistake)."""

    @staticmethod
    def load_images(images_b64, max_size):
        from PIL import ImageOps

        return [ImageOps.mirror(i) for i in AddOn.load_images(images_b64, max_size)]


class LandscapeOnly(AddOn):
    """Portrait images turned to landscape (rotated 90 degrees) before the processor, as an
    engine that normalises orientation would: invisible while no image is taller than
    wide."""

    @staticmethod
    def load_images(images_b64, max_size):
        from PIL import Image

        return [
            i.transpose(Image.Transpose.ROTATE_90) if i.height > i.width else i
            for i in AddOn.load_images(images_b64, max_size)
        ]


class _StaleDecodeDecoder(UnifiedGemma4TextModel):
    """Decode steps (token calls after an image prompt) take their per-layer inputs from
    the stored prompt ids (the last prompt row) instead of the new token: the state the
    prompt left behind is read one call too long."""

    def __call__(self, inputs=None, cache=None, input_embeddings=None, per_layer_inputs=None):
        state = self.prompt_state
        ids = None if state is None else state.per_layer_input_ids
        if input_embeddings is None and ids is not None and per_layer_inputs is None:
            per_layer_inputs = self._get_per_layer_inputs(ids[:, -inputs.shape[1] :])
        return super().__call__(inputs, cache, input_embeddings, per_layer_inputs)


class StalePromptStateAtDecode(AddOn):
    """Exact through the first token; wrong from the first decode step on."""

    def patch_text_model(self, text_model):
        text_model.language_model.model.__class__ = _StaleDecodeDecoder



class _StateReadByTextDecoder(UnifiedGemma4TextModel):
    """Reads the stored prompt state on token calls too (per-layer inputs of the stored
    prompt's rows at the call's offset, as for embeddings calls)."""

    def __call__(self, inputs=None, cache=None, input_embeddings=None, per_layer_inputs=None):
        state = self.prompt_state
        ids = None if state is None else state.per_layer_input_ids
        if input_embeddings is None and ids is not None and per_layer_inputs is None:
            start = self.prompt_position(cache)
            rows = ids[:, start : start + inputs.shape[1]]
            if rows.shape[1] == inputs.shape[1]:
                per_layer_inputs = self._get_per_layer_inputs(rows)
        return super().__call__(inputs, cache, input_embeddings, per_layer_inputs)


class PromptStateNeverCleared(AddOn):
    """`clear_prediction_state` forgotten, and the decoder reads the stored state whenever it
    holds one: each request alone is right (a text request in a fresh session has no state),
    a text request after an image request reads the image prompt's per-layer ids."""

    def patch_text_model(self, text_model):
        text_model.language_model.model.__class__ = _StateReadByTextDecoder

    def clear_prediction_state(self, text_model):
        pass


class _CausalAfterRestoreDecoder(UnifiedGemma4TextModel):
    """Builds the bidirectional image mask only for calls starting at the prompt's first
    row: a suffix prefilled on top of a restored prompt cache attends causally."""

    def _make_masks(self, h, cache):
        if self._chunk is not None and self._chunk.start > 0:
            return gemma4_text.Gemma4TextModel._make_masks(self, h, cache)
        return super()._make_masks(h, cache)


class MaskLostAfterRestore(AddOn):
    """mlx-engine's regression: bidirectional image attention lost on a suffix prefilled
    on top of a restored prompt-cache prefix. Exact on one-shot requests."""

    def patch_text_model(self, text_model):
        text_model.language_model.model.__class__ = _CausalAfterRestoreDecoder
