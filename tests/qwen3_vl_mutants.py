"""Deliberately broken Qwen3-VL add-ons, each a realistic porting mistake (mlx-engine
disabled its Qwen VL add-ons in Oct 2025 because "ports are bugged": mlx-lm runs Qwen3-VL
as plain qwen3 with 1-D RoPE and no DeepStack). The gate must FAIL every one of them and
name the stage where it enters (tests/test_qwen3_vl.py). Loaded by the runner as
`qwen3_vl_mutants:<Class>` (tests/ is on sys.path under pytest)."""

from __future__ import annotations

import dataclasses

import mlx.core as mx
from mlx_vlm.models.rope_utils import MRoPERotaryEmbedding

from harness.architectures.qwen3_vl.addon import AddOn, Qwen3VLTextModel


def _replace_state(text_model, **changes) -> None:
    decoder = text_model.language_model.model
    decoder.vl_prompt = dataclasses.replace(decoder.vl_prompt, **changes)


class DeepStackDropped(AddOn):
    """Embeddings and M-RoPE positions right, DeepStack features never added (what a port
    that only replaces the embeddings and positions does)."""

    def compute_embeddings(self, text_model, prompt_tokens, images_b64, max_size):
        out = super().compute_embeddings(text_model, prompt_tokens, images_b64, max_size)
        _replace_state(text_model, deepstack=())
        return out


class DeepStackOneLayerLate(AddOn):
    """Feature k added after decoder layer k + 1 (an off-by-one in the layer index): the
    features are stacked behind a zero feature, which adds nothing after layer 0."""

    def compute_embeddings(self, text_model, prompt_tokens, images_b64, max_size):
        out = super().compute_embeddings(text_model, prompt_tokens, images_b64, max_size)
        features = text_model.language_model.model.vl_prompt.deepstack
        _replace_state(text_model, deepstack=(mx.zeros_like(features[0]), *features))
        return out


class _FeaturesNotSliced(Qwen3VLTextModel):
    def call_deepstack(self, start, n):
        mask, _ = super().call_deepstack(start, n)
        if mask is None:
            return None, None
        return mask, list(self.vl_prompt.deepstack)


class DeepStackNotSlicedByChunk(AddOn):
    """The visual mask is cut to the current prefill chunk but the features are not: every
    chunk takes the FIRST features for its image rows (mlx-vlm's `_deepstack_process` reads
    rows 0..n_visual-1 of what it is given). Invisible while one call holds the whole
    image span."""

    TEXT_MODEL = _FeaturesNotSliced


class _NoPositions(Qwen3VLTextModel):
    def call_positions(self, start, n):
        return None


class PositionsMissing(AddOn):
    """No position_ids reach the decoder layers: mlx-lm's own 1-D RoPE on sequence positions
    (embeddings and DeepStack right). Image rows get 4..23 instead of (t, h, w) grid
    positions and later text is off by rope_deltas."""

    TEXT_MODEL = _NoPositions


class _ChunkedRotary(MRoPERotaryEmbedding):
    def __init__(self, dim, max_position_embeddings=2048, base=10000, rope_scaling=None):
        super().__init__(
            dim,
            max_position_embeddings=max_position_embeddings,
            base=base,
            rope_scaling=rope_scaling,
            style="chunked",
        )


class ChunkedMRoPE(AddOn):
    """Qwen2/2.5-VL's M-RoPE layout reused for Qwen3-VL: the same (t, h, w) positions, but
    the rotary frequencies split into contiguous sections (t | h | w) where Qwen3-VL
    interleaves them (`mrope_interleaved: true`). Positions equal, rotation wrong on image
    rows (the only rows whose three positions differ)."""

    ROTARY = _ChunkedRotary


class KeepsPromptState(AddOn):
    """clear_prediction_state forgets nothing: a text prompt after an image prompt is
    rotated by the image prompt's stored positions and gets its DeepStack features."""

    def clear_prediction_state(self, text_model):
        pass
