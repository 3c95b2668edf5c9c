"""LFM2-VL vision add-on for the unified path (mlx-lm text model + mlx-vlm vision tower),
under mlx-engine's add-on contract. Bit-exact with native mlx-vlm 0.7.10 by construction,
with no patch of the text model:

- LFM2 scales nothing: mlx-vlm's `get_input_embeddings` looks token rows up in the
  embedding table and scatters the projected image features over the `<image>` rows, and
  both libraries' LFM2 decoders take `input_embeddings` as they are. The add-on runs the
  same steps with mlx-vlm's own code: its processor (tiles + thumbnail + marker tokens),
  its `encode_images` (SigLIP2 NaFlex tower with the padded-patch attention mask,
  pixel-unshuffle, LayerNorm + MLP projector) on modules it builds and loads itself, and
  its `merge_input_ids_with_image_features`, on mlx-lm's embedding table.
- Views: one vision-tower row per tile (row-major) and, for a tiled image, the thumbnail
  last; features are concatenated in that order, the order the processor lays out the
  `<image>` runs in the prompt.
- Dtypes: the tower casts pixels to its patch-embedding weight's dtype and the features
  keep the checkpoint's dtype, as in native.
- The LFM2 convolution layers keep a (kernel - 1)-row state in an `ArraysCache` between
  prefill chunks; mlx-lm and mlx-vlm carry it the same way, so a chunk edge inside an image
  span needs nothing from the add-on. Nothing is kept between prompts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ...addons.common import load_images, load_vision_modules


class AddOn:
    """mlx-engine-compatible vision add-on for LFM2-VL (`model_type: lfm2-vl`)."""

    MODEL_TYPE = "lfm2-vl"

    def __init__(self, model_path: Path, trust_remote_code: bool = False) -> None:
        from mlx_vlm.models import lfm2_vl as vlm
        from mlx_vlm.models.lfm2_vl.lfm2_vl import (
            Lfm2VlMultiModalProjector,
            PixelUnshuffleBlock,
        )
        from mlx_vlm.utils import load_processor

        self.model_path = Path(model_path)
        raw = json.loads((self.model_path / "config.json").read_text())
        # As mlx_vlm.load builds it: top-level fields, then the module configs.
        self.config = vlm.ModelConfig.from_dict(raw)
        self.config.text_config = vlm.TextConfig.from_dict(raw["text_config"])
        self.config.vision_config = vlm.VisionConfig.from_dict(raw["vision_config"])
        self.vision_tower = vlm.VisionModel(self.config.vision_config)
        if self.config.vision_feature_layer != -1:  # as mlx-vlm's Model truncates the tower
            layers = self.vision_tower.encoder.layers
            self.vision_tower.encoder.layers = layers[: self.config.vision_feature_layer + 1]
        factor = self.config.downsample_factor
        self.pixel_unshuffle = PixelUnshuffleBlock(factor) if factor > 1 else nn.Identity()
        self.multi_modal_projector = Lfm2VlMultiModalProjector(self.config)
        self._load_vision_weights(raw.get("quantization"))
        # mlx-vlm's load_processor passes trust_remote_code=True unless told otherwise.
        self.processor = load_processor(
            self.model_path, add_detokenizer=True, trust_remote_code=trust_remote_code
        )

    def _load_vision_weights(self, quantization: dict[str, Any] | None) -> None:
        from mlx_vlm.models.lfm2_vl import Model

        def sanitize(weights: dict[str, mx.array]) -> dict[str, mx.array]:
            # mlx-vlm's key mapping (HF layout -> mlx-vlm), then the tower's own.
            weights = Model.sanitize(self, weights)
            return self.vision_tower.sanitize(weights)

        modules = {"vision_tower": self.vision_tower}
        modules["multi_modal_projector"] = self.multi_modal_projector
        load_vision_modules(self.model_path, modules, quantization, sanitize=sanitize)

    # -- the contract ------------------------------------------------------------------

    def compute_embeddings(
        self,
        text_model: Any,
        prompt_tokens: mx.array,
        images_b64: list[str],
        max_size: tuple[int, int] | None,
    ) -> tuple[mx.array, mx.array]:
        if not images_b64:
            raise ValueError("compute_embeddings needs at least one image")
        images = self.load_images(images_b64, max_size)
        prompt = self.processor.tokenizer.decode(prompt_tokens.tolist())
        inputs = self.processor_inputs(prompt, images)
        input_ids = inputs["input_ids"]
        inputs_embeds = self.embed_tokens(text_model)(input_ids)
        features = self.image_features(inputs)
        embeddings = self.merge_features(input_ids, inputs_embeds, features)
        return input_ids[0], embeddings[0]

    def clear_prediction_state(self, text_model: Any) -> None:
        """Nothing is kept between prompts: the text model is not patched."""

    # -- the steps, each as mlx-vlm's LFM2-VL `get_input_embeddings` takes it ------------

    load_images = staticmethod(load_images)

    @staticmethod
    def embed_tokens(text_model: Any) -> Any:
        """mlx-lm's table: `lfm2-vl.Model.language_model` is an `lfm2.Model`."""
        return text_model.language_model.model.embed_tokens

    def processor_inputs(self, prompt: str, images: list[Any]) -> dict[str, Any]:
        """mlx-vlm's processor on the detokenized prompt, called as native calls it: each
        `<image>` becomes `<|image_start|>`, per tile `<|img_row_R_col_C|>` and its image
        tokens, `<|img_thumbnail|>` and the thumbnail's, `<|image_end|>` (a small image:
        one run of image tokens, no tile markers)."""
        from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

        return prepare_inputs(
            self.processor,
            images=images,
            prompts=[prompt],
            image_token_index=self.config.image_token_index,
            add_special_tokens=should_add_special_tokens(self.MODEL_TYPE, self.processor),
        )

    def image_features(self, inputs: dict[str, Any]) -> mx.array:
        """mlx-vlm's `encode_images` on this add-on's modules (it reads only
        `vision_tower`, `pixel_unshuffle` and `multi_modal_projector`): one feature block
        per view, concatenated in view order."""
        from mlx_vlm.models.lfm2_vl import Model

        views = Model.encode_images(
            self,
            inputs["pixel_values"],
            spatial_shapes=inputs["spatial_shapes"],
            pixel_attention_mask=inputs["pixel_attention_mask"],
        )
        return mx.concatenate(list(views), axis=0)

    def merge_features(
        self, input_ids: mx.array, inputs_embeds: mx.array, features: mx.array
    ) -> mx.array:
        """mlx-vlm's merge: the features, in order, over the image-token rows."""
        from mlx_vlm.models.lfm2_vl import Model

        return Model.merge_input_ids_with_image_features(
            features, inputs_embeds, input_ids, self.config.image_token_index
        )
