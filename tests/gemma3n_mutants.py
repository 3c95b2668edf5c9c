"""Gemma 3n test doubles and deliberately broken add-ons (tests/test_gemma3n.py). Loaded by
the runner as `gemma3n_mutants:<Class>` (tests/ is on sys.path under pytest).

Why a stand-in vision tower: mlx-vlm 0.7.10's MobileNetV5 tower is hard-coded at its
published size (~294M parameters), runs only on images whose side is a multiple of 256,
and MLX's CPU convolutions run at ~1 GFLOP/s: one 256 px image takes minutes per path on
the CI machine. So the image cases of the test module swap the tower, AFTER the real
`mlx_vlm.load` (native) and the real add-on load (unified), for `StubTower`: a cheap,
deterministic function of the pixels with the tower's output contract ([B, 16, 16, 2048],
channels last, computed in the dtype the pixels and weights promote to, as the real tower
is). Everything else is the real code on both sides: mlx-vlm's processor, its
`get_input_embeddings` (hard multimodal tokens, `embed_vision`, the merge) and
`generate_step`, against the add-on on mlx-lm's decoder.
"""

from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import gemma3n as lm_gemma3n

from harness.architectures.gemma3n.addon import AddOn
from harness.paths.native import NativeSession

GRID, CHANNELS = 16, 2048  # what mlx-vlm's get_image_features reshapes into 256 tokens


class StubTower(nn.Module):
    """Pixels [B, 3, H, W] -> [B, 16, 16, 2048]: a 16x16 average pool, a fixed random
    projection (stored in the checkpoint's dtype, like the real tower's weights) plus a
    fixed per-cell pattern, then tanh. Token order and pixel content both matter."""

    def __init__(self, dtype: mx.Dtype) -> None:
        super().__init__()
        key = mx.random.key(1234)
        k1, k2 = mx.random.split(key)
        self.projection = mx.random.normal((3, CHANNELS), key=k1).astype(dtype)
        self.pattern = (mx.random.normal((GRID, GRID, CHANNELS), key=k2) * 0.5).astype(dtype)

    def __call__(self, pixels: mx.array, output_hidden_states: bool | None = None) -> mx.array:
        b, c, h, w = pixels.shape
        cells = pixels.transpose(0, 2, 3, 1).reshape(b, GRID, h // GRID, GRID, w // GRID, c)
        pooled = cells.mean(axis=(2, 4))  # [B, 16, 16, 3], the pixels' dtype
        return mx.tanh(pooled @ self.projection * 4.0 + self.pattern)


def _weights_dtype(embedder: nn.Module) -> mx.Dtype:
    """The checkpoint's float dtype: an embedder's norm scale (never quantized)."""
    return embedder.hard_embedding_norm.weight.dtype


class StubTowerNative(NativeSession):
    """Native mlx-vlm (real load, processor, embeddings, decoder, generate_step) with the
    tower swapped for `StubTower` after loading."""

    def __init__(self, model_dir, options) -> None:
        super().__init__(model_dir, options)
        self.model.vision_tower = StubTower(_weights_dtype(self.model.embed_vision))


class StubTowerAddOn(AddOn):
    """The reference add-on (real load) with the same stand-in tower."""

    def __init__(self, model_path, trust_remote_code: bool = False) -> None:
        super().__init__(model_path, trust_remote_code)
        self.vision_tower = StubTower(_weights_dtype(self.embed_vision))


# --- Mutant add-ons ----------------------------------------------------------------------


class ScaleAppliedTwice(StubTowerAddOn):
    """Merged embeddings multiplied by bf16(sqrt(hidden)), the Gemma 3 / Gemma 4 habit
    (Transformers' scaled word embedding), on a decoder that does not scale
    `input_embeddings` and against a native path that never scales them."""

    def embeddings(self, text_model, input_ids, pixel_values):
        merged = super().embeddings(text_model, input_ids, pixel_values)
        hidden = self.config.text_config.hidden_size
        return merged * mx.array(math.sqrt(hidden), mx.bfloat16).astype(merged.dtype)


class HardTokensFromTextTable(StubTowerAddOn):
    """Only the image soft tokens merged (the Gemma 3 recipe): <end_of_image>, the first id
    of the vision vocabulary, keeps its text-table row instead of `embed_vision`'s hard
    embedding."""

    def embeddings(self, text_model, input_ids, pixel_values):
        from mlx_vlm.models.gemma3n import Model

        decoder = text_model.model.language_model
        text_rows = decoder.embed_tokens(input_ids)
        features = self.image_features(
            pixel_values, self.vision_tower, self.config, self.embed_vision
        )
        mask = Model.construct_special_modality_mask(
            None, input_ids, text_rows, self.config.image_token_id
        )
        return Model.merge_multimodal_and_text(text_rows, features, mask)


class _ClippedPerLayerIds(lm_gemma3n.LanguageModel):
    """mlx-lm's decoder looking up per-layer inputs of ids clamped into the per-layer table
    instead of masked to row 0."""

    def get_per_layer_inputs(self, input_ids):
        clipped = mx.clip(input_ids, 0, self.vocab_size_per_layer_input - 1)
        rows = self.embed_tokens_per_layer(clipped) * (self.hidden_size_per_layer_input**0.5)
        return rows.reshape(
            *input_ids.shape, self.num_hidden_layers, self.hidden_size_per_layer_input
        )


class UnmaskedPerLayerIds(StubTowerAddOn):
    """Per-layer-input ids not masked for image tokens: a patched decoder guards the
    per-layer lookup with a clamp (an out-of-table id would read past the table) where
    both libraries read row 0 for every vision and audio id."""

    def patch_text_model(self, text_model):
        text_model.model.language_model.__class__ = _ClippedPerLayerIds


class Float32Merge(StubTowerAddOn):
    """Image features (float32: the tower runs on float32 pixels) scattered into the token
    rows without the cast `merge_multimodal_and_text` does: the whole prompt's embeddings
    become float32, image rows unrounded, and mlx-lm's decoder runs the prompt in float32."""

    def embeddings(self, text_model, input_ids, pixel_values):
        from mlx_vlm.models.gemma3n.gemma3n import masked_scatter

        merged = super().embeddings(text_model, input_ids, pixel_values)
        features = self.image_features(
            pixel_values, self.vision_tower, self.config, self.embed_vision
        )
        mask = mx.broadcast_to((input_ids == self.config.image_token_id)[..., None], merged.shape)
        return masked_scatter(merged.astype(features.dtype), mask, features)
