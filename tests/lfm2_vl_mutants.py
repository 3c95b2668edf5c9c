"""Deliberately broken LFM2-VL add-ons, each a realistic wiring mistake: the gate must FAIL
every one of them and name the stage where it enters (tests/test_lfm2_vl.py). Loaded by the
runner as `lfm2_vl_mutants:<Class>` (tests/ is on sys.path under pytest)."""

from __future__ import annotations

from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import lfm2
from mlx_lm.models.cache import ArraysCache

from harness.architectures.lfm2_vl.addon import AddOn
from harness.architectures.lfm2_vl.spec import IMAGE_END, IMAGE_START, TILE_MARKERS

# --- features ----------------------------------------------------------------------------


class Float32VisionTower(AddOn):
    """Vision tower and projector kept in float32 (an engine that upcasts vision weights at
    load), features rounded to the embeddings' dtype only by the scatter: native computes
    them in the checkpoint's dtype. Invisible on a float32 checkpoint."""

    def __init__(self, model_path: Path, trust_remote_code: bool = False) -> None:
        super().__init__(model_path, trust_remote_code)
        self.vision_tower.set_dtype(mx.float32)
        self.multi_modal_projector.set_dtype(mx.float32)


class ProjectorNormSkipped(AddOn):
    """The projector run as linear-GELU-linear, its LayerNorm left out (an engine reading a
    config key it does not know as false). Invisible where the checkpoint has none
    (`projector_use_layernorm: false`)."""

    def __init__(self, model_path: Path, trust_remote_code: bool = False) -> None:
        super().__init__(model_path, trust_remote_code)
        self.multi_modal_projector.projector_use_layernorm = False


class PostLayerNormSkipped(AddOn):
    """Features taken from the last encoder layer's hidden state instead of SigLIP2's
    `last_hidden_state` (after `post_layernorm`)."""

    def __init__(self, model_path: Path, trust_remote_code: bool = False) -> None:
        super().__init__(model_path, trust_remote_code)
        self.vision_tower.post_layernorm = nn.Identity()


# --- merge order -------------------------------------------------------------------------


def views_per_image(ids: list[int], tokenizer) -> list[int]:
    """Vision-tower views of each image, read from the expanded prompt: one per tile
    marker, plus the thumbnail when tiled, else the single view."""
    start, end = (tokenizer.convert_tokens_to_ids(t) for t in (IMAGE_START, IMAGE_END))
    markers = set(tokenizer.convert_tokens_to_ids(TILE_MARKERS))
    counts, tiles = [], None
    for token in ids:
        if token == start:
            tiles = 0
        elif token in markers and tiles is not None:
            tiles += 1
        elif token == end and tiles is not None:
            counts.append(tiles + 1 if tiles else 1)
            tiles = None
    return counts


class ThumbnailFirst(AddOn):
    """A tiled image's thumbnail features merged before its tiles (the LLaVA-NeXT /
    InternVL habit of putting the global view first), where LFM2-VL lays the thumbnail out
    last. Invisible on an untiled image (one view)."""

    def image_features(self, inputs):
        from mlx_vlm.models.lfm2_vl import Model

        views = Model.encode_images(
            self,
            inputs["pixel_values"],
            spatial_shapes=inputs["spatial_shapes"],
            pixel_attention_mask=inputs["pixel_attention_mask"],
        )
        ordered, first = [], 0
        for count in views_per_image(inputs["input_ids"][0].tolist(), self.processor.tokenizer):
            own = list(views[first : first + count])
            ordered += own[-1:] + own[:-1] if count > 1 else own
            first += count
        return mx.concatenate(ordered, axis=0)


# --- text model state --------------------------------------------------------------------


class _ConvStateDropped(lfm2.Lfm2Model):
    """mlx-lm's LFM2 decoder whose convolution states restart from zeros at every prefill
    chunk after the first, as with a prompt cache that saves and restores only KV caches."""

    def __call__(self, inputs, cache=None, input_embeddings=None):
        rows = (input_embeddings if input_embeddings is not None else inputs).shape[1]
        if cache is not None and rows > 1:
            for c in cache:
                if isinstance(c, ArraysCache):
                    c[0] = None
        return super().__call__(inputs, cache, input_embeddings)


class ConvStateDropped(AddOn):
    """Conv-layer state lost between prefill chunks (KV caches kept): the first chunk is
    right, every later one starts its convolutions from zeros. Invisible when the prompt is
    prefilled in one chunk (the final one-token call keeps its state)."""

    def patch_text_model(self, text_model):
        text_model.language_model.model.__class__ = _ConvStateDropped
