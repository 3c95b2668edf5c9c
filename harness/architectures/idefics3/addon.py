"""Idefics3 vision add-on for the unified path (mlx-lm Llama text model + mlx-vlm vision
tower and connector), under mlx-engine's add-on contract, plus the text-model loader that
`mlx_lm.load` lacks for this model_type. Bit-exact with native mlx-vlm 0.7.10:

- `load_text_model` returns what `mlx_lm.load` returns for a supported Llama checkpoint:
  `mlx_lm.models.llama.Model` built, sanitized, quantized (mlx-lm's own quantize
  predicate) and loaded by `mlx_lm.utils.load_model`, and mlx-lm's `TokenizerWrapper` from
  `mlx_lm.utils.load_tokenizer` (eos ids from generation_config.json, as `mlx_lm.load`).
  The model arguments are `text_config` with the values native mlx-vlm's decoder actually
  uses where the two libraries read the same config differently (`native_text_args`):
  rope_theta (mlx-vlm's default 1e6 where the config has none; mlx-lm's is 1e4), an
  untied head, no rope_scaling, head_dim = hidden / heads, no biases, full attention.
- Text weights are found by mlx-vlm's own key mapping (`Model.sanitize`: HF names
  `model.text_model.*` / `lm_head.*` and mlx-vlm's converted `language_model.*` alike),
  then renamed to mlx-lm's llama names (`model.*`, `lm_head.*`).
- Image embeddings are computed by mlx-vlm's own `Model.get_input_embeddings`, run on a
  view holding this add-on's vision tower and connector and mlx-lm's token embedding
  table: the same padding-image removal, patch mask, vision tower on float32 pixels
  (cast to the tower's dtype after the patch embedding), pooler output cast back to the
  pixels' dtype, pixel-shuffle connector in float32 with the stored (bf16) weights, and
  scatter into the bf16 token embeddings (which rounds the features to bf16).
- mlx-vlm's language model casts `inputs_embeds` to its norm dtype; the merged embeddings
  already have the token table's dtype, so mlx-lm's decoder sees the same array.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlx.core as mx
from mlx_vlm.models.idefics3 import Model as _VlmModel

from ...addons.common import load_images, load_vision_modules

# Text-config fields mlx-lm's llama reads but native mlx-vlm's Idefics3 decoder does not:
# pinned to what the native decoder does.
NATIVE_FIXED = {
    "tie_word_embeddings": False,  # mlx-vlm always applies its stored lm_head
    "rope_scaling": None,  # mlx-vlm's nn.RoPE ignores it
    "attention_bias": False,
    "mlp_bias": False,
    "layer_types": None,  # full attention on every layer: no sliding window
    "sliding_window": None,
}


def native_text_args(text_config: dict[str, Any]) -> dict[str, Any]:
    """`text_config` as mlx-lm model arguments that build native mlx-vlm's decoder."""
    from mlx_vlm.models.idefics3 import TextConfig

    native = TextConfig.from_dict(text_config)
    args = {k: v for k, v in text_config.items() if k not in ("quantization", "eos_token_id")}
    args |= NATIVE_FIXED
    args |= {
        "rope_theta": native.rope_theta,
        "num_hidden_layers": native.num_hidden_layers,
        "num_key_value_heads": native.num_key_value_heads,
        "head_dim": native.hidden_size // native.num_attention_heads,
        "rope_traditional": native.rope_traditional,
    }
    return args


def text_weights(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """The decoder's weights under mlx-lm's llama names, found by mlx-vlm's own mapping
    (`model.text_model.X` / `language_model.X` -> `model.X`, head -> `lm_head`)."""
    named = _VlmModel.sanitize(None, weights)  # uses no state
    out = {}
    for key, value in named.items():
        if key.startswith("language_model.lm_head."):
            out[key.removeprefix("language_model.")] = value
        elif key.startswith("language_model."):
            out["model." + key.removeprefix("language_model.")] = value
    return out


class _NativeView:
    """What mlx-vlm's `Model.get_input_embeddings` reads from `self`: the config, vision
    tower, connector, token embeddings and its scatter."""

    get_input_embeddings = _VlmModel.get_input_embeddings
    _prepare_inputs_for_multimodal = _VlmModel._prepare_inputs_for_multimodal

    def __init__(self, config: Any, vision_model: Any, connector: Any, embed_tokens: Any):
        self.config = config
        self.vision_model = vision_model
        self.connector = connector
        self.language_model = SimpleNamespace(embed_tokens=embed_tokens)


class AddOn:
    """mlx-engine-compatible vision add-on for Idefics3 (`model_type: idefics3`)."""

    MODEL_TYPE = "idefics3"
    VIEW = _NativeView

    def __init__(self, model_path: Path, trust_remote_code: bool = False) -> None:
        from mlx_vlm.models import idefics3 as vlm
        from mlx_vlm.models.idefics3.idefics3 import Idefics3Connector
        from mlx_vlm.utils import load_processor

        self.model_path = Path(model_path)
        raw = json.loads((self.model_path / "config.json").read_text())
        # As mlx_vlm.load builds it: top-level fields, then the module configs.
        self.config = vlm.ModelConfig.from_dict(raw)
        self.config.text_config = vlm.TextConfig.from_dict(raw["text_config"])
        self.config.vision_config = vlm.VisionConfig.from_dict(raw["vision_config"])
        self.vision_model = vlm.VisionModel(self.config.vision_config)
        self.connector = Idefics3Connector(self.config)
        load_vision_modules(
            self.model_path,
            {"vision_model": self.vision_model, "connector": self.connector},
            raw.get("quantization"),
            strip_prefix="model.",  # HF names; mlx-vlm's converted names have none
            sanitize=self.vision_model.sanitize,  # PyTorch-layout patch convolution
        )
        self.processor = load_processor(
            self.model_path, add_detokenizer=True, trust_remote_code=trust_remote_code
        )

    # -- the text model (mlx_lm.load rejects model_type idefics3) -------------------------

    def text_args(self, text_config: dict[str, Any]) -> dict[str, Any]:
        return native_text_args(text_config)

    def load_text_model(self, model_path: Path) -> tuple[Any, Any]:
        """(model, tokenizer) as `mlx_lm.load` returns them for a Llama checkpoint."""
        from mlx_lm.utils import _get_classes, load_config, load_model, load_tokenizer

        model_path = Path(model_path)
        config = load_config(model_path)

        def classes(config: dict[str, Any]) -> tuple[Any, Any]:
            model_class, args_class = _get_classes(config)

            def build(args: Any) -> Any:
                model = model_class(args)
                # load_model sanitizes through the instance: map the checkpoint's names
                # first (an instance attribute, removed once the weights are in).
                own = model.sanitize
                object.__setattr__(model, "sanitize", lambda w: own(text_weights(w)))
                return model

            return build, args_class

        # The text arguments override the top level; `quantization` stays top-level.
        model, _ = load_model(
            model_path,
            model_config=self.text_args(config["text_config"]),
            get_model_classes=classes,
        )
        object.__delattr__(model, "sanitize")
        tokenizer = load_tokenizer(model_path, eos_token_ids=config.get("eos_token_id"))
        return model, tokenizer

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
        input_ids = inputs.pop("input_ids")
        pixel_values = inputs.pop("pixel_values")
        mask = inputs.pop("attention_mask", None)
        view = self.VIEW(
            self.config, self.vision_model, self.connector, text_model.model.embed_tokens
        )
        features = view.get_input_embeddings(input_ids, pixel_values, mask=mask, **inputs)
        return input_ids[0], features.inputs_embeds[0]

    def clear_prediction_state(self, text_model: Any) -> None:
        """Nothing is kept between prompts: the text model is not patched."""

    load_images = staticmethod(load_images)

    def processor_inputs(self, prompt: str, images: list[Any]) -> dict[str, Any]:
        """mlx-vlm's processor on the detokenized prompt, called as native calls it: each
        `<image>` becomes its tiles' `<row_i_col_j>` blocks and the global image."""
        from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

        return dict(
            prepare_inputs(
                self.processor,
                images=images,
                prompts=[prompt],
                image_token_index=self.config.image_token_index,
                add_special_tokens=should_add_special_tokens(self.MODEL_TYPE, self.processor),
            )
        )
