"""Deliberately broken LLaVA add-ons, each a realistic wiring mistake: the gate must FAIL
every one of them and name the stage where it enters (tests/test_llava.py). Loaded by the
runner as `llava_mutants:<Class>` (tests/ is on sys.path under pytest)."""

from __future__ import annotations

import mlx.core as mx

from harness.architectures.llava.addon import AddOn


class LastRowDropped(AddOn):
    """The `default` strategy applied to the wrong end (`[:, :-1]` for `[:, 1:]`): the
    right number of rows, but CLS first and every patch one image row late. Invisible under
    the `full` strategy, which slices nothing."""

    def select_features(self, hidden_states):
        selected = hidden_states[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "default":
            selected = selected[:, :-1]
        return selected


class LastLayerFeatures(AddOn):
    """Features from the tower's last layer (what `vision_tower(x)[1]` returns) instead of
    `vision_feature_layer` (-2 in LLaVA 1.5). Right where the config says -1."""

    def select_features(self, hidden_states):
        selected = hidden_states[-1]
        if self.config.vision_feature_select_strategy == "default":
            selected = selected[:, 1:]
        return selected


class EveryCheckpointFull(AddOn):
    """The strategy read from nowhere, everything done as under `full`: each `<image>`
    expanded into patches + CLS tokens (the processor's count without the `default` -1)
    and the CLS row kept, so features and placeholders still agree in number. The ids are
    wrong from the first image token on a `default` checkpoint; right on a `full` one."""

    def processor_inputs(self, prompt, images):
        processor = self.processor
        strategy = processor.vision_feature_select_strategy
        processor.vision_feature_select_strategy = "full"
        try:
            return super().processor_inputs(prompt, images)
        finally:
            processor.vision_feature_select_strategy = strategy

    def select_features(self, hidden_states):
        return hidden_states[self.config.vision_feature_layer]


class Float32Features(AddOn):
    """An engine's own merge that scatters the projector's float32 rows without casting
    them to the embeddings' dtype (`mx.where` promotes): image rows keep float32 precision
    and the whole prompt enters the bf16 decoder as float32. Invisible on a float32
    checkpoint."""

    def merge_features(self, input_ids, inputs_embeds, features):
        is_image = input_ids == self.config.image_token_index
        order = mx.maximum(mx.cumsum(is_image.astype(mx.int32), axis=1) - 1, 0)
        rows = features.reshape(-1, features.shape[-1])[order]
        return mx.where(is_image[..., None], rows, inputs_embeds)


class Bfloat16Tower(AddOn):
    """Pixels cast to the checkpoint's dtype before the tower (the Gemma 3 habit), where
    mlx-vlm's llava feeds its float32 pixels as they are: tower and projector run in bf16.
    Invisible on a float32 checkpoint."""

    def image_features(self, pixel_values):
        weight = self.vision_tower.vision_model.embeddings.patch_embedding.weight
        return super().image_features(pixel_values.astype(weight.dtype))
