"""Mistral 3 vision add-on for the unified path (mlx-lm text model + mlx-vlm vision tower),
under mlx-engine's add-on contract. Bit-exact with native mlx-vlm 0.7.10 by construction,
with no patch of the text model:

- Neither library scales embeddings (no `embed_scale` in Mistral), so the rows mlx-vlm's
  `get_input_embeddings` hands its decoder feed mlx-lm's llama decoder unchanged: token
  rows from mlx-lm's own table (the same weights), `[IMG]` rows replaced by the projected
  image features in order, `[IMG_BREAK]` / `[IMG_END]` rows left as looked up.
- The vision tower runs on all images at once, as native runs it: pixels padded to the
  largest image, each image's patch grid cut back to its own `image_sizes` entry, a
  block-diagonal mask keeping the images apart, 2-D RoPE by row and column. The tower casts
  pixels to its patch-conv dtype itself; the projector (RMSNorm, 2x2 patch merger, GELU MLP)
  then stays in the checkpoint's dtype, as native.
- `image_sizes` is vision-side only: the decoder uses plain 1-D positions on both paths.
- BOS: the template renders `<bos>`; mlx-vlm 0.7.10 tokenizes mistral3 prompts with
  `add_special_tokens=True` (should_add_special_tokens) and Mistral3Processor takes that
  flag through **kwargs, so its tokenizer's default applies: a tokenizer that adds BOS
  (as Mistral's do) gives `<bos><bos>`. The add-on re-tokenizes through the same call and
  matches native on image prompts; the model expects one BOS (see cases/mistral3).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx

from ...addons.common import load_images, load_vision_modules


class AddOn:
    """mlx-engine-compatible vision add-on for Mistral 3 (`model_type: mistral3`)."""

    MODEL_TYPE = "mistral3"

    def __init__(self, model_path: Path, trust_remote_code: bool = False) -> None:
        from mlx_vlm.utils import load_processor

        self.model_path = Path(model_path)
        raw = json.loads((self.model_path / "config.json").read_text())
        self.config = self._model_config(raw)
        self.vision_tower, self.multi_modal_projector = self._vision_modules()
        load_vision_modules(
            self.model_path,
            {
                "vision_tower": self.vision_tower,
                "multi_modal_projector": self.multi_modal_projector,
            },
            raw.get("quantization"),
            sanitize=self.vision_tower.sanitize,  # PyTorch-layout patch conv, if any
        )
        # mlx-vlm's load_processor passes trust_remote_code=True unless told otherwise.
        self.processor = load_processor(
            self.model_path, add_detokenizer=True, trust_remote_code=trust_remote_code
        )

    # -- what differs between Mistral 3 and Pixtral ----------------------------------------

    @staticmethod
    def _vlm() -> Any:
        from mlx_vlm.models import mistral3

        return mistral3

    def _model_config(self, raw: dict[str, Any]) -> Any:
        """As mlx_vlm.load builds it: top-level fields from the top level, then the module
        configs."""
        vlm = self._vlm()
        config = vlm.ModelConfig.from_dict(raw)
        config.text_config = vlm.TextConfig.from_dict(raw["text_config"])
        config.vision_config = vlm.VisionConfig.from_dict(raw["vision_config"])
        return config

    def _vision_modules(self) -> tuple[Any, Any]:
        from mlx_vlm.models.mistral3.mistral3 import Mistral3MultiModalProjector

        tower = self._vlm().VisionModel(self.config.vision_config)
        return tower, Mistral3MultiModalProjector(self.config)

    def project(self, selected: mx.array, image_sizes: Any) -> mx.array:
        """Mistral 3's projector: RMSNorm, patch merger over each image's own grid, MLP."""
        if selected.ndim == 3 and selected.shape[0] == 1:
            selected = selected.squeeze(0)
        return self.multi_modal_projector(selected, image_sizes)

    # -- the contract ------------------------------------------------------------------------

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
        inputs_embeds = text_model.language_model.model.embed_tokens(input_ids)
        features = self.image_features(inputs["pixel_values"], inputs.get("image_sizes"))
        embeddings = self.merge_features(input_ids, inputs_embeds, features)
        return input_ids[0], embeddings[0]

    def clear_prediction_state(self, text_model: Any) -> None:
        """Nothing is kept between prompts: the text model is not patched."""

    # -- the steps, each as mlx-vlm's `get_input_embeddings` takes it ----------------------

    load_images = staticmethod(load_images)

    def processor_inputs(self, prompt: str, images: list[Any]) -> dict[str, Any]:
        """mlx-vlm's processor on the detokenized prompt, called as native calls it: each
        `[IMG]` expands into rows of `[IMG]` separated by `[IMG_BREAK]`, closed by
        `[IMG_END]`, one row per merged patch row of that image."""
        from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

        return prepare_inputs(
            self.processor,
            images=images,
            prompts=[prompt],
            image_token_index=self.config.image_token_index,
            add_special_tokens=should_add_special_tokens(self.MODEL_TYPE, self.processor),
        )

    def image_features(self, pixel_values: mx.array, image_sizes: Any) -> mx.array:
        """The vision tower on every image at once (NHWC; it casts pixels to its own
        dtype), the configured hidden layer, then the projector."""
        if pixel_values.ndim == 3:
            pixel_values = pixel_values[None]
        *_, hidden_states = self.vision_tower(
            pixel_values.transpose(0, 2, 3, 1),
            output_hidden_states=True,
            image_sizes=image_sizes,
        )
        return self.project(hidden_states[self.config.vision_feature_layer], image_sizes)

    def merge_features(
        self, input_ids: mx.array, inputs_embeds: mx.array, features: mx.array
    ) -> mx.array:
        """mlx-vlm's own merge: the n-th `[IMG]` row takes the n-th feature row."""
        return self._vlm().Model.merge_input_ids_with_image_features(
            self.config.image_token_index, features, inputs_embeds, input_ids
        )
