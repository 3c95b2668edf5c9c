"""Deliberately broken Qwen2.5-VL add-ons, each a realistic mistake of an engine porting
this architecture: the gate must FAIL every one of them and name the stage where it enters
(tests/test_qwen2_5_vl.py). Loaded by the runner as `qwen2_5_vl_mutants:<Class>` (tests/ is
on sys.path under pytest)."""

from __future__ import annotations

import mlx.core as mx

from harness.architectures.qwen2_5_vl.addon import (
    AddOn,
    MRopeDecoder,
    PromptPositions,
    call_positions,
)


class NoPositions(AddOn):
    """Embeddings only, no patch: mlx-lm's plain Qwen2 rotates every row by its sequence
    index (what mlx-engine's disabled Qwen VL add-ons did). Image rows lose their grid
    positions and every later token its rope_deltas shift."""

    def patch_text_model(self, text_model):
        pass


class _FirstCallOnlyDecoder(MRopeDecoder):
    def positions(self, offset, batch, rows):
        stored = self.mrope
        if stored is not None and offset > 0:
            # "Only the first call is the prompt": later calls take the decode rule.
            stored = PromptPositions(stored.position_ids[:, :, :0], stored.rope_deltas)
        return call_positions(stored, offset, batch, rows)


class PositionsForFirstCallOnly(AddOn):
    """The stored positions are used for the first forward call only, as if it held the
    whole prompt; every later call gets offset + rope_deltas (the decode rule), i.e. the
    positions are not sliced by the cache offset. Right when the prompt goes in one call
    (the final row is text after the images, where both rules agree); wrong on every row
    of a later prefill chunk inside or before an image span."""

    def patch_text_model(self, text_model):
        super().patch_text_model(text_model)
        text_model.language_model.model.__class__ = _FirstCallOnlyDecoder


class _NoDeltasDecoder(MRopeDecoder):
    def positions(self, offset, batch, rows):
        stored = self.mrope
        if stored is not None:
            stored = PromptPositions(stored.position_ids, mx.zeros_like(stored.rope_deltas))
        return call_positions(stored, offset, batch, rows)


class DecodeWithoutDeltas(AddOn):
    """The prompt rotated by its stored positions, generated tokens by their sequence
    index (mlx-lm's rule) instead of index + rope_deltas: the prompt is exact, every decode
    step after an image is rotated |rope_deltas| positions too far."""

    def patch_text_model(self, text_model):
        super().patch_text_model(text_model)
        text_model.language_model.model.__class__ = _NoDeltasDecoder


class Float32Features(AddOn):
    """Pixels not cast to the weights' dtype: the vision tower runs in float32 and the
    merge promotes the prompt's embeddings to float32."""

    def image_features(self, pixel_values, grid_thw):
        return self.vision_tower(pixel_values, grid_thw, output_hidden_states=False)


class ImagePadsNotReplaced(AddOn):
    """Image features computed but never scattered in: the <|image_pad|> rows keep their
    token embedding (positions are still right)."""

    def merge_features(self, input_ids, inputs_embeds, features):
        mx.eval(features)
        return inputs_embeds


class StalePositions(AddOn):
    """`clear_prediction_state` forgets the stored positions: the next text prompt (which
    never calls compute_embeddings) is rotated by the previous image prompt's positions
    (the Qwen3.5 regression mlx-engine fixed)."""

    def clear_prediction_state(self, text_model):
        pass
