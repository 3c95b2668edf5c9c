"""Gemma 3 vision add-on for the unified path (mlx-lm text model + mlx-vlm vision tower),
under mlx-engine's add-on contract. Bit-exact with native mlx-vlm 0.7.10 by construction,
for any hidden size, and with no patch of the text model:

- mlx-vlm's `get_input_embeddings` hands its language model UNSCALED embeddings: token
  embeddings as looked up, image features divided by sqrt(hidden), pad tokens zeroed; its
  language model then multiplies everything by bf16(sqrt(hidden)). mlx-lm's Gemma 3 text
  model multiplies `input_embeddings` by the same bf16(sqrt(hidden)). So the add-on computes
  exactly what `get_input_embeddings` computes, with mlx-vlm's own functions (vision tower,
  projector, `prepare_inputs_for_multimodal`), from mlx-lm's embedding table, and mlx-lm's
  own multiplication does the rest: the same rounding in the same order on both paths.
- The divisor is mlx-vlm's `ModelConfig.hidden_size` (the TOP-LEVEL config value, default
  2048), not the text model's: the add-on follows native even where native deviates from
  Transformers (a config without a top-level hidden_size).
- Pixels enter the vision tower in the embeddings' dtype, as mlx-vlm casts them (float32
  pixels through tower and projector move layer 0 by 0.06-0.08: mlx-engine's bug).
- Attention stays causal over image tokens: mlx-vlm's `get_input_embeddings` also returns
  a 4-D mask (`attention_mask_4d`, the outer product of the padding mask: no causal or
  image-block structure) which `generate_step` passes to the language model as a keyword
  its `__call__` swallows (it reads `mask`), so native attends causally everywhere;
  Transformers makes each image block bidirectional. The reference follows native: no
  image-block mask.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx

from ...addons.common import load_images, load_vision_modules


class AddOn:
    """mlx-engine-compatible vision add-on for Gemma 3 (`model_type: gemma3`)."""

    MODEL_TYPE = "gemma3"

    def __init__(self, model_path: Path, trust_remote_code: bool = False) -> None:
        from mlx_vlm.models import gemma3 as vlm
        from mlx_vlm.models.gemma3.gemma3 import Gemma3MultiModalProjector
        from mlx_vlm.utils import load_processor

        self.model_path = Path(model_path)
        raw = json.loads((self.model_path / "config.json").read_text())
        # As mlx_vlm.load builds it: top-level fields from the top level only (hidden_size,
        # pad_token_id, image_token_index keep their defaults when absent), then the
        # module configs.
        self.config = vlm.ModelConfig.from_dict(raw)
        self.config.text_config = vlm.TextConfig.from_dict(raw["text_config"])
        self.config.vision_config = vlm.VisionConfig.from_dict(raw["vision_config"])
        self.vision_tower = vlm.VisionModel(self.config.vision_config)
        self.multi_modal_projector = Gemma3MultiModalProjector(self.config)
        self._load_vision_weights(raw.get("quantization"))
        # mlx-vlm's load_processor passes trust_remote_code=True unless told otherwise.
        self.processor = load_processor(
            self.model_path, add_detokenizer=True, trust_remote_code=trust_remote_code
        )

    def _load_vision_weights(self, quantization: dict[str, Any] | None) -> None:
        load_vision_modules(
            self.model_path,
            {
                "vision_tower": self.vision_tower,
                "multi_modal_projector": self.multi_modal_projector,
            },
            quantization,
            sanitize=self.vision_tower.sanitize,  # PyTorch-layout patch conv, if any
        )

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
        embed_tokens = text_model.language_model.model.embed_tokens
        inputs_embeds = embed_tokens(input_ids)
        features = self.image_features(inputs["pixel_values"], inputs_embeds.dtype)
        embeddings = self.merge_features(input_ids, inputs_embeds, features, inputs)
        return input_ids[0], embeddings[0]

    def clear_prediction_state(self, text_model: Any) -> None:
        """Nothing is kept between prompts: the text model is not patched."""

    # -- the steps, each as mlx-vlm's Gemma 3 `get_input_embeddings` takes it ------------

    load_images = staticmethod(load_images)

    def processor_inputs(self, prompt: str, images: list[Any]) -> dict[str, Any]:
        """mlx-vlm's processor on the detokenized prompt, called as native mlx-vlm calls
        it: each <start_of_image> expands to "\\n\\n<start_of_image>", mm_tokens_per_image
        soft tokens and "<end_of_image>\\n\\n". On <bos>: the rendered prompt holds the
        template's; mlx-vlm 0.7.10 forwards `add_special_tokens` only to processors whose
        signature names it, and Gemma3Processor takes it through **kwargs, so a tokenizer
        that adds <bos> (as the published Gemma 3 ones do) adds a second one here, exactly as
        in native (whatever the flag says: native passes True, its processor having no
        chat template)."""
        from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

        return prepare_inputs(
            self.processor,
            images=images,
            prompts=[prompt],
            image_token_index=self.config.image_token_index,
            add_special_tokens=should_add_special_tokens(self.MODEL_TYPE, self.processor),
        )

    def image_features(self, pixel_values: mx.array, dtype: mx.Dtype) -> mx.array:
        """Vision tower on pixels cast to the embeddings' dtype, then the projector
        (average pool, soft-embedding norm, projection), which returns that dtype."""
        hidden, _, _ = self.vision_tower(
            pixel_values.transpose(0, 2, 3, 1).astype(dtype), output_hidden_states=True
        )
        return self.multi_modal_projector(hidden)

    def merge_features(
        self,
        input_ids: mx.array,
        inputs_embeds: mx.array,
        features: mx.array,
        inputs: dict[str, Any],
    ) -> mx.array:
        """mlx-vlm's own merge: text rows as looked up, pad rows zero, image rows the
        features divided by sqrt(ModelConfig.hidden_size); unscaled (the decoder scales)."""
        from mlx_vlm.models.gemma3 import Model

        merged, _ = Model.prepare_inputs_for_multimodal(
            self.config.hidden_size,
            self.config.pad_token_id,
            self.config.image_token_index,
            features,
            inputs_embeds,
            input_ids,
            inputs["attention_mask"],
        )
        return merged
