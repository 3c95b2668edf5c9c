"""Deliberately broken Gemma 3 add-ons, each a realistic wiring mistake: the gate must FAIL
every one of them and name the stage where it enters (tests/test_gemma3.py). Loaded by the
runner as `gemma3_mutants:<Class>` (tests/ is on sys.path under pytest)."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
from mlx_lm.models import gemma3_text
from mlx_lm.models.base import create_attention_mask

from harness.architectures.gemma3.addon import AddOn

# --- Mutant add-ons ----------------------------------------------------------------------


def _merge_dividing_by(addon, hidden_size, input_ids, inputs_embeds, features, inputs):
    """mlx-vlm's merge with image features divided by sqrt(hidden_size)."""
    from mlx_vlm.models.gemma3 import Model

    merged, _ = Model.prepare_inputs_for_multimodal(
        hidden_size,
        addon.config.pad_token_id,
        addon.config.image_token_index,
        features,
        inputs_embeds,
        input_ids,
        inputs["attention_mask"],
    )
    return merged


class FeaturesNotDivided(AddOn):
    """Image features scattered in as the projector returns them (the divide by
    sqrt(hidden) forgotten): mlx-lm's own embed scale then multiplies them once too often."""

    def merge_features(self, input_ids, inputs_embeds, features, inputs):
        return _merge_dividing_by(self, 1, input_ids, inputs_embeds, features, inputs)


class ScaleAppliedTwice(AddOn):
    """Embeddings handed over already multiplied by sqrt(hidden), as if mlx-lm did not
    scale `input_embeddings` (the Gemma 4 habit): scaled twice."""

    def merge_features(self, input_ids, inputs_embeds, features, inputs):
        merged = super().merge_features(input_ids, inputs_embeds, features, inputs)
        scale = mx.array(self.config.text_config.hidden_size**0.5, mx.bfloat16)
        return merged * scale.astype(merged.dtype)


class DividesByTextHidden(AddOn):
    """Image features divided by sqrt(text_config.hidden_size), the text model's own
    scale, where mlx-vlm divides by sqrt(ModelConfig.hidden_size): the same number while
    config.json has a top-level hidden_size, sqrt(2048) when it has none (published Gemma 3
    configs)."""

    def merge_features(self, input_ids, inputs_embeds, features, inputs):
        hidden = self.config.text_config.hidden_size
        return _merge_dividing_by(self, hidden, input_ids, inputs_embeds, features, inputs)


class Float32Projector(AddOn):
    """mlx-engine's Gemma 3 add-on: float32 pixels through the vision tower and projector,
    cast to the embeddings' dtype only after the projection."""

    def image_features(self, pixel_values, dtype):
        return super().image_features(pixel_values, mx.float32).astype(dtype)


@dataclasses.dataclass(frozen=True)
class _Blocks:
    """Image-block index per prompt token, -1 elsewhere, [1, L] (a plain object: MLX would
    keep an array attribute in the module tree)."""

    ids: mx.array


class _BidirectionalImages(gemma3_text.Gemma3Model):
    """mlx-lm's Gemma 3 decoder with each image block attending both ways (what
    Transformers does), on every layer."""

    prompt: _Blocks | None = None

    def __call__(self, inputs, cache=None, input_embeddings=None):
        if self.prompt is None or input_embeddings is None:
            return super().__call__(inputs, cache, input_embeddings)
        blocks = self.prompt.ids
        h = input_embeddings * mx.array(self.args.hidden_size**0.5, mx.bfloat16).astype(
            input_embeddings.dtype
        )
        if cache is None:
            cache = [None] * len(self.layers)
        start = cache[0].offset if cache[0] is not None else 0
        stop = start + h.shape[1]
        masks = {}
        for i, (layer, c) in enumerate(zip(self.layers, cache, strict=True)):
            is_global = i % self.sliding_window_pattern == self.sliding_window_pattern - 1
            if is_global not in masks:
                window = None if is_global else self.window_size
                masks[is_global] = self._mask(h, c, window, blocks, start, stop)
            h = layer(h, masks[is_global], c)
        return self.norm(h)

    @staticmethod
    def _mask(h, cache, window, blocks, start, stop):
        base = create_attention_mask(h, cache, window_size=window, return_array=True)
        if base is None:  # one query row: it sees every cached key already
            return None
        # Key columns: the last base.shape[-1] prompt positions before `stop` (a rotating
        # cache holds at most its window before the chunk).
        queries = blocks[:, start:stop, None]
        keys = blocks[:, None, stop - base.shape[-1] : stop]
        return base | ((queries == keys) & (queries >= 0))[:, None]


class BidirectionalImages(AddOn):
    """Image tokens attend to their whole image block, as in Transformers, where native
    mlx-vlm 0.7.10 stays causal."""

    def patch_text_model(self, text_model):
        text_model.language_model.model.__class__ = _BidirectionalImages

    def clear_prediction_state(self, text_model):
        text_model.language_model.model.prompt = None

    def compute_embeddings(self, text_model, prompt_tokens, images_b64, max_size):
        ids, embeddings = super().compute_embeddings(
            text_model, prompt_tokens, images_b64, max_size
        )
        is_image = ids[None] == self.config.image_token_index
        previous = mx.concatenate([mx.zeros_like(is_image[:, :1]), is_image[:, :-1]], axis=1)
        blocks = mx.cumsum((is_image & ~previous).astype(mx.int32), axis=1) - 1
        text_model.language_model.model.prompt = _Blocks(mx.where(is_image, blocks, -1))
        return ids, embeddings
