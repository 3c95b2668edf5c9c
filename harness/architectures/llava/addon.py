"""LLaVA vision add-on for the unified path (mlx-lm llama text model + mlx-vlm CLIP tower and
projector), under mlx-engine's add-on contract. Bit-exact with native mlx-vlm 0.7.10 by
construction, with no patch of the text model:

- Neither library scales Llama embeddings, so the rows mlx-vlm's `get_input_embeddings`
  hands its decoder feed mlx-lm's llama decoder unchanged: token rows from mlx-lm's own
  table (the same weights), each `<image>` row replaced, in order, by one projected
  feature row.
- Features as native computes them: the CLIP tower runs on the processor's float32 pixels
  UNCAST (mlx-vlm's llava does not cast them: bf16 weights promote to float32, so tower and
  projector run in float32), the hidden state `vision_feature_layer` (-2: the penultimate
  layer, not the last) is selected, its CLS row dropped under the `default` strategy and
  kept under `full`, then the projector; the result is cast to the embeddings' dtype only
  in the merge (mlx-vlm's `_merge_input_ids_with_image_features`, reused here).
- Placeholder expansion is mlx-vlm's processor's: each `<image>` becomes
  (side / patch)^2 + num_additional_image_tokens (1, CLS) tokens, minus one under the
  `default` strategy, through the same `prepare_inputs` call native makes (and its BOS
  policy: `add_special_tokens=True` for llava).
- Attention is causal everywhere on both paths (LLaVA has no image-block attention).
- The processor is mlx-vlm's LlavaProcessor only once `mlx_vlm.models.llava` is imported
  (its AutoProcessor hook; otherwise transformers' own LlavaProcessor loads): the add-on
  imports it first, as `mlx_vlm.load` does. mlx-vlm 0.7.10's processor needs compat.py's
  kwarg-routing fix under transformers 5, applied to native and add-on alike.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlx.core as mx

from ...addons.common import load_images, load_vision_modules
from . import compat


class AddOn:
    """mlx-engine-compatible vision add-on for LLaVA (`model_type: llava`)."""

    MODEL_TYPE = "llava"

    def __init__(self, model_path: Path, trust_remote_code: bool = False) -> None:
        from mlx_vlm.models import llava as vlm
        from mlx_vlm.models.llava.llava import LlavaMultiModalProjector
        from mlx_vlm.utils import load_processor

        compat.fix_llava_processor()  # as the sessions apply it before loading (compat.py)
        self.model_path = Path(model_path)
        raw = json.loads((self.model_path / "config.json").read_text())
        # As mlx_vlm.load builds it: top-level fields (image_token_index, the feature
        # layer and strategy) from the top level only, then the module configs.
        self.config = vlm.ModelConfig.from_dict(raw)
        self.config.text_config = vlm.TextConfig.from_dict(raw["text_config"])
        self.config.vision_config = vlm.VisionConfig.from_dict(raw["vision_config"])
        self.vision_tower = vlm.VisionModel(self.config.vision_config)
        self.multi_modal_projector = LlavaMultiModalProjector(self.config)
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
        inputs_embeds = text_model.language_model.model.embed_tokens(input_ids)
        features = self.image_features(inputs["pixel_values"])
        embeddings = self.merge_features(input_ids, inputs_embeds, features)
        return input_ids[0], embeddings[0]

    def clear_prediction_state(self, text_model: Any) -> None:
        """Nothing is kept between prompts: the text model is not patched."""

    # -- the steps, each as mlx-vlm's LLaVA `get_input_embeddings` takes it --------------

    load_images = staticmethod(load_images)

    def processor_inputs(self, prompt: str, images: list[Any]) -> dict[str, Any]:
        """mlx-vlm's processor on the detokenized prompt, called as native calls it."""
        from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

        return prepare_inputs(
            self.processor,
            images=images,
            prompts=[prompt],
            image_token_index=self.config.image_token_index,
            add_special_tokens=should_add_special_tokens(self.MODEL_TYPE, self.processor),
        )

    def select_features(self, hidden_states: tuple[mx.array, ...]) -> mx.array:
        """The configured tower layer(s), concatenated along features when a list; CLS
        dropped under the `default` strategy."""
        layers = self.config.vision_feature_layer
        drop_cls = self.config.vision_feature_select_strategy == "default"
        chosen = [hidden_states[i] for i in (layers if isinstance(layers, list) else [layers])]
        chosen = [h[:, 1:] if drop_cls else h for h in chosen]
        return chosen[0] if len(chosen) == 1 else mx.concatenate(chosen, axis=-1)

    def image_features(self, pixel_values: mx.array) -> mx.array:
        """Tower on the processor's pixels as they are (float32), then the projector:
        [images, rows per image, hidden]."""
        *_, hidden_states = self.vision_tower(
            pixel_values.transpose(0, 2, 3, 1), output_hidden_states=True
        )
        return self.multi_modal_projector(self.select_features(hidden_states))

    def merge_features(
        self, input_ids: mx.array, inputs_embeds: mx.array, features: mx.array
    ) -> mx.array:
        """mlx-vlm's own merge: features cast to the embeddings' dtype, scattered over the
        `<image>` rows in order."""
        from mlx_vlm.models.llava import Model

        return Model._merge_input_ids_with_image_features(self, features, inputs_embeds, input_ids)
