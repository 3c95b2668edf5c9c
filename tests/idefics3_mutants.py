"""Deliberately broken Idefics3 add-ons, each a realistic porting mistake: the gate must FAIL
every one of them and name the stage where it enters (tests/test_idefics3.py). Loaded by
the runner as `idefics3_mutants:<Class>` (tests/ is on sys.path under pytest)."""

from __future__ import annotations

import math
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_vlm.models.idefics3.idefics3 import Idefics3Connector

from harness.architectures.idefics3.addon import AddOn, _NativeView

# --- the pixel-shuffle connector -------------------------------------------------------


class _ReshapeConnector(Idefics3Connector):
    """Groups s*s consecutive patches of a row into a token (a plain reshape) instead of
    an s x s block: the shuffle's spatial regrouping skipped, shapes unchanged."""

    def pixel_shuffle(self, x: mx.array, scale_factor: int = 2) -> mx.array:
        batch, seq, dim = x.shape
        return x.reshape(batch, seq // scale_factor**2, dim * scale_factor**2)


class _ShuffleByTwoConnector(Idefics3Connector):
    """A factor-2 shuffle applied log2(s) times for scale factor s: the same shapes as one
    shuffle by s, the same values for s = 2, other channel orders for s = 4."""

    def pixel_shuffle(self, x: mx.array, scale_factor: int = 2) -> mx.array:
        for _ in range(round(math.log2(scale_factor))):
            x = super().pixel_shuffle(x, 2)
        return x


class ShuffleSkipped(AddOn):
    """Pixel shuffle replaced by a reshape (no s x s spatial grouping)."""

    def __init__(self, model_path: Any, trust_remote_code: bool = False) -> None:
        super().__init__(model_path, trust_remote_code)
        self.connector.__class__ = _ReshapeConnector


class ShuffleByTwoRepeated(AddOn):
    """Scale factor 4 done as two factor-2 shuffles (a port that only has the factor-2
    shuffle of Idefics3-8B)."""

    def __init__(self, model_path: Any, trust_remote_code: bool = False) -> None:
        super().__init__(model_path, trust_remote_code)
        self.connector.__class__ = _ShuffleByTwoConnector


# --- dtypes -----------------------------------------------------------------------------


class Bf16Pixels(AddOn):
    """Pixels cast to the model dtype before the tower (the Gemma 3 add-on's habit):
    native feeds float32 pixels, so its patch embedding and its connector (the pooler
    output is cast back to the pixels' dtype) compute in float32."""

    def processor_inputs(self, prompt: str, images: list[Any]) -> dict[str, Any]:
        inputs = super().processor_inputs(prompt, images)
        inputs["pixel_values"] = inputs["pixel_values"].astype(mx.bfloat16)
        return inputs


class _Float32Merge(_NativeView):
    def _prepare_inputs_for_multimodal(self, image_features, inputs_embeds, input_ids):
        return super()._prepare_inputs_for_multimodal(
            image_features, inputs_embeds.astype(mx.float32), input_ids
        )


class Float32Features(AddOn):
    """Connector output (float32 on both paths) scattered into a float32 copy of the token
    embeddings: mlx-lm's Llama casts nothing, so image rows enter the decoder unrounded
    and the whole decoder runs in float32; mlx-vlm scatters into bf16."""

    VIEW = _Float32Merge


# --- positions --------------------------------------------------------------------------


class _GlobalFirst(_NativeView):
    """Each image's global-image tile moved before its grid tiles (LLaVA-NeXT's order:
    base image first) in the features, while the prompt keeps Idefics3's order."""

    def _prepare_inputs_for_multimodal(self, image_features, inputs_embeds, input_ids):
        ids = np.array(input_ids[0].tolist())
        image_token = self.config.image_token_index
        is_image = ids == image_token
        starts = np.flatnonzero(is_image & ~np.r_[False, is_image[:-1]])  # one per tile
        per_tile = image_features.shape[0] // len(starts)
        global_id = self.global_image_id
        order, group = [], []
        for tile, start in enumerate(starts):
            group.append(tile)
            if ids[start - 1] == global_id:  # an image's tiles end with its global tile
                order += [group[-1], *group[:-1]]
                group = []
        tiles = image_features.reshape(len(starts), per_tile, -1)[mx.array(order)]
        return super()._prepare_inputs_for_multimodal(
            tiles.reshape(image_features.shape), inputs_embeds, input_ids
        )


class GlobalImageFirst(AddOn):
    """Global image's features placed first in each image's span."""

    def __init__(self, model_path: Any, trust_remote_code: bool = False) -> None:
        super().__init__(model_path, trust_remote_code)
        global_id = self.processor.tokenizer.convert_tokens_to_ids("<global-img>")
        self.VIEW = type("_View", (_GlobalFirst,), {"global_image_id": global_id})


# --- the text model ---------------------------------------------------------------------


class DefaultRopeTheta(AddOn):
    """Text model built with mlx-lm's ModelArgs default rope_theta (10000): the loader
    forwards a filtered set of text_config keys that leaves it out (or reads it from a
    transformers-5 `rope_parameters` block this config does not have)."""

    def text_args(self, text_config: dict[str, Any]) -> dict[str, Any]:
        args = super().text_args(text_config)
        del args["rope_theta"]
        return args
