"""Gemma 3n vision add-on for the unified path (mlx-lm text model + mlx-vlm vision tower),
under mlx-engine's add-on contract. Bit-exact with native mlx-vlm 0.7.10 on image prompts
by construction, with no patch of the text model:

- The embeddings are computed by mlx-vlm's own `Model.get_input_embeddings`, called on a
  stand-in whose language model is mlx-lm's (its embedding table and per-layer lookup)
  and whose towers and embedders are mlx-vlm's, loaded from the checkpoint: token rows
  as looked up (UNSCALED: see below), vision- and audio-vocabulary tokens (e.g.
  <end_of_image>, the first vision id) replaced by the embedders' hard embeddings, image
  rows the tower's soft tokens through `embed_vision`, cast to the table's dtype.
- mlx-lm's Gemma 3n decoder uses `input_embeddings` as given (no embed scale) and derives
  the per-layer inputs from the prompt ids the engine passes alongside, masking every id
  outside the per-layer table (vision and audio ids) to 0: what mlx-vlm computes from the
  same ids, chunk by chunk.
- Pixels enter the tower as the processor returns them (float32, as native feeds them);
  the features are cast to the embeddings' dtype only when merged.

Native mlx-vlm 0.7.10 deviates from Transformers here and the add-on follows native: its
`get_input_embeddings` never multiplies the text rows by sqrt(hidden_size)
(Transformers' Gemma3nTextScaledWordEmbedding does), and its decoder only scales ids it
embeds itself (decode steps). Text prompts on the unified path go through mlx-lm's own
token path, which scales: they are NOT exact against native (tests/test_gemma3n.py holds
that divergence).
"""

from __future__ import annotations

import json
import types
from pathlib import Path
from typing import Any

import mlx.core as mx

from ...addons.common import load_images, load_vision_modules


class AddOn:
    """mlx-engine-compatible vision add-on for Gemma 3n (`model_type: gemma3n`)."""

    MODEL_TYPE = "gemma3n"

    def __init__(self, model_path: Path, trust_remote_code: bool = False) -> None:
        from mlx_vlm.models import gemma3n as vlm
        from mlx_vlm.models.gemma3n.gemma3n import Gemma3nMultimodalEmbedder
        from mlx_vlm.utils import load_processor

        self.model_path = Path(model_path)
        raw = json.loads((self.model_path / "config.json").read_text())
        # As mlx_vlm.load builds it: top-level fields from the top level, then the modules.
        self.config = vlm.ModelConfig.from_dict(raw)
        self.config.text_config = vlm.TextConfig.from_dict(raw["text_config"])
        self.config.vision_config = vlm.VisionConfig.from_dict(raw["vision_config"])
        self.config.audio_config = vlm.AudioConfig.from_dict(raw["audio_config"])
        text = self.config.text_config
        self.vision_tower = vlm.VisionModel(self.config.vision_config)
        self.embed_vision = Gemma3nMultimodalEmbedder(self.config.vision_config, text)
        # Audio-vocabulary tokens (e.g. <end_of_audio>) typed into a prompt take their
        # embedding from here, as in native; the audio tower itself is not needed.
        self.embed_audio = Gemma3nMultimodalEmbedder(self.config.audio_config, text)
        self._load_weights(raw.get("quantization"))
        # mlx-vlm's load_processor passes trust_remote_code=True unless told otherwise.
        self.processor = load_processor(
            self.model_path, add_detokenizer=True, trust_remote_code=trust_remote_code
        )

    def _load_weights(self, quantization: dict[str, Any] | None) -> None:
        load_vision_modules(
            self.model_path,
            {
                "vision_tower": self.vision_tower,
                "embed_vision": self.embed_vision,
                "embed_audio": self.embed_audio,
            },
            quantization,
            strip_prefix="model.",  # Hugging Face key names, as mlx-vlm's sanitize strips
            sanitize=self.vision_tower.sanitize,  # MLX-layout convolutions: kept as stored
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
        embeddings = self.embeddings(text_model, input_ids, inputs["pixel_values"])
        return input_ids[0], embeddings[0]

    def clear_prediction_state(self, text_model: Any) -> None:
        """Nothing is kept between prompts: the text model is not patched."""

    # -- the steps -----------------------------------------------------------------------

    load_images = staticmethod(load_images)

    def processor_inputs(self, prompt: str, images: list[Any]) -> dict[str, Any]:
        """mlx-vlm's processor on the detokenized prompt, called as native mlx-vlm calls
        it: each <image_soft_token> expands to "\\n\\n<start_of_image>", 256 soft tokens
        and "<end_of_image>\\n\\n"."""
        from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

        return prepare_inputs(
            self.processor,
            images=images,
            prompts=[prompt],
            image_token_index=self.config.image_token_id,
            add_special_tokens=should_add_special_tokens(self.MODEL_TYPE, self.processor),
        )

    def embeddings(self, text_model: Any, input_ids: mx.array, pixel_values: mx.array) -> mx.array:
        """mlx-vlm's `get_input_embeddings`, run on mlx-lm's embedding table."""
        from mlx_vlm.models.gemma3n import Model

        stand_in = self.stand_in(text_model)
        return Model.get_input_embeddings(stand_in, input_ids, pixel_values).inputs_embeds

    def stand_in(self, text_model: Any) -> Any:
        """What `Model.get_input_embeddings` reads of `self`: mlx-lm's decoder (embedding
        table, per-layer lookup) as the language model, the add-on's towers, embedders and
        config, and mlx-vlm's own static helpers."""
        from mlx_vlm.models.gemma3n import Model

        decoder = text_model.model.language_model
        stand_in = types.SimpleNamespace(
            language_model=types.SimpleNamespace(model=decoder),
            vocab_size=self.config.text_config.vocab_size,
            vocab_size_per_layer_input=self.config.text_config.vocab_size_per_layer_input,
            config=self.config,
            vision_tower=self.vision_tower,
            embed_vision=self.embed_vision,
            embed_audio=self.embed_audio,
            get_image_features=self.image_features,
            merge_multimodal_and_text=Model.merge_multimodal_and_text,
        )
        stand_in.construct_special_modality_mask = types.MethodType(
            Model.construct_special_modality_mask, stand_in
        )
        return stand_in

    @staticmethod
    def image_features(
        pixel_values: mx.array, vision_tower: Any, config: Any, embed_vision: Any
    ) -> mx.array:
        """The tower on the pixels as given, then `embed_vision` (mlx-vlm's own)."""
        from mlx_vlm.models.gemma3n import Model

        return Model.get_image_features(pixel_values, vision_tower, config, embed_vision)
