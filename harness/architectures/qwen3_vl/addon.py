"""Qwen3-VL vision add-on for the unified path (mlx-lm text model + mlx-vlm vision tower),
under mlx-engine's add-on contract, bit-exact with native mlx-vlm 0.7.10.

mlx-lm 0.32.2 loads `qwen3_vl` as a plain `qwen3` text model: 1-D RoPE on sequence
positions and no DeepStack. Embeddings alone therefore cannot reach parity. Measured on the
tiny checkpoint (tests/qwen3_vl_mutants.py): M-RoPE positions without DeepStack, 0.91 off
after layer 1 and 3.6 on the logits; DeepStack on 1-D positions, 0.21 after layer 0 and 4.7
on the logits; Qwen2.5's chunked M-RoPE layout instead of the interleaved one, 0.053 after
layer 0 and 0.94 on the logits.

Contract extension: two OPTIONAL hooks, which the unified path calls when present:

- `patch_text_model(text_model)`, once after `mlx_lm.load`: swaps the class of the loaded
  INSTANCES (the decoder, its layers and their attention; library classes are untouched)
  for subclasses that run mlx-vlm's own code on mlx-lm's weights:
  - the decoder runs mlx-vlm's `Qwen3VLModel.__call__` (same mask, one cos/sin table from
    mlx-vlm's interleaved `Qwen3VLRotaryEmbedding` shared by all layers, DeepStack added
    by mlx-vlm's `_deepstack_process` after decoder layer k for k < number of features);
  - every decoder layer takes `position_ids` (and the cos/sin table) and runs mlx-vlm's
    `Qwen3VLDecoderLayer.__call__`, whose attention is mlx-vlm's `Attention.__call__`
    (interleaved M-RoPE applied by `apply_multimodal_rotary_pos_emb`);
  - without a cos/sin table a layer runs mlx-lm's own code (plain RoPE), unchanged.
- `clear_prediction_state(text_model)`, before every prompt: forgets the stored prompt.

`compute_embeddings` computes, with mlx-vlm's own functions: input_ids (mlx-vlm's
processor), the embeddings (mlx-lm's table, mlx-vlm's vision tower and `masked_scatter`),
the interleaved M-RoPE positions [3, 1, L] and `rope_deltas` (`get_rope_index`), the
DeepStack features and the visual-row mask; it stores them on the text model
(`text_model.language_model.model.vl_prompt`). Each forward call then takes the rows of
the current call from the KV-cache offset, as mlx-vlm's `LanguageModel.__call__` does:
positions `[offset : offset + n]`; DeepStack features of the image rows inside the call
only (chunked prefill splitting an image span gets the right features on each side);
after the prompt (decode), positions `offset + rope_deltas` on all three axes. A text
prompt (nothing stored) gets positions `arange(offset, offset + n)` through the same
M-RoPE code, as native gives it `get_rope_index` of a text prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models import qwen3
from mlx_vlm.models.qwen3_vl import language as vlm_language

from ...addons.common import load_images, load_vision_modules


@dataclass(frozen=True)
class PromptState:
    """What `compute_embeddings` computed for the whole prompt (a plain object: MLX would
    keep array attributes of a module in its parameter tree)."""

    position_ids: mx.array | None  # [3, 1, L] interleaved M-RoPE positions, or None
    rope_deltas: mx.array | None  # [1, 1]: decode position = offset + rope_deltas
    deepstack: tuple[mx.array, ...] = ()  # per text layer k: [n_visual, hidden]
    visual_mask: mx.array | None = None  # [1, L] bool: the rows DeepStack adds to
    visual_columns: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def length(self) -> int:
        return 0 if self.position_ids is None else int(self.position_ids.shape[-1])


def call_positions(state: PromptState | None, start: int, n: int) -> mx.array | None:
    """[3, 1, n] positions of the rows [start, start + n): the stored prompt's, then
    offset + rope_deltas past its end; arange for a text prompt (nothing stored)."""
    if state is None:
        return mx.broadcast_to(mx.arange(start, start + n)[None, None], (3, 1, n))
    if state.position_ids is None:
        return None
    stored = state.position_ids[:, :, start : start + n]
    rest = n - stored.shape[-1]
    if rest <= 0:
        return stored
    first = max(start, state.length)
    later = mx.arange(first, first + rest)[None] + state.rope_deltas  # [1, rest]
    later = mx.broadcast_to(later[None], (3, 1, rest)).astype(stored.dtype)
    return mx.concatenate([stored, later], axis=-1)


def call_deepstack(
    state: PromptState | None, start: int, n: int
) -> tuple[mx.array | None, list[mx.array] | None]:
    """The visual mask and DeepStack features of the rows [start, start + n), sliced as
    mlx-vlm's `LanguageModel.__call__` slices them for a chunk: the features of the image
    rows inside the call, in prompt order."""
    if state is None or not state.deepstack or start >= state.visual_mask.shape[-1]:
        return None, None
    mask = state.visual_mask[:, start : start + n]
    if mask.shape[-1] < n:  # a call running past the prompt's end
        mask = mx.concatenate([mask, mx.zeros((1, n - mask.shape[-1]), mx.bool_)], axis=1)
    columns = state.visual_columns
    rows = mx.array(np.flatnonzero((columns >= start) & (columns < start + n)), mx.uint32)
    return mask, [features[rows] for features in state.deepstack]


class Qwen3VLAttention(qwen3.Attention):
    """mlx-lm's attention; with a cos/sin table, mlx-vlm's (M-RoPE) code on its weights."""

    def __call__(
        self,
        x: mx.array,
        mask: Any = None,
        cache: Any = None,
        position_ids: mx.array | None = None,
        position_embeddings: tuple[mx.array, mx.array] | None = None,
    ) -> mx.array:
        if position_embeddings is None and position_ids is None:
            return super().__call__(x, mask, cache)
        return vlm_language.Attention.__call__(
            self, x, mask, cache, position_ids, position_embeddings
        )


class Qwen3VLBlock(qwen3.TransformerBlock):
    """mlx-lm's decoder layer, taking `position_ids` as mlx-vlm's does (4th argument)."""

    def __call__(
        self,
        x: mx.array,
        mask: Any = None,
        cache: Any = None,
        position_ids: mx.array | None = None,
        position_embeddings: tuple[mx.array, mx.array] | None = None,
    ) -> mx.array:
        if position_embeddings is None and position_ids is None:
            return super().__call__(x, mask, cache)
        return vlm_language.Qwen3VLDecoderLayer.__call__(
            self, x, mask, cache, position_ids, position_embeddings
        )


class Qwen3VLTextModel(qwen3.Qwen3Model):
    """mlx-lm's decoder running mlx-vlm's `Qwen3VLModel.__call__` with the current call's
    rows of the stored prompt state."""

    vl_prompt: PromptState | None = None
    # mlx-vlm's own DeepStack addition (a method that reads nothing from the model).
    _deepstack_process = vlm_language.Qwen3VLModel._deepstack_process

    def call_offset(self, cache: Any) -> int:
        return 0 if not cache or cache[0] is None else int(cache[0].offset)

    def call_positions(self, start: int, n: int) -> mx.array | None:
        return call_positions(self.vl_prompt, start, n)

    def call_deepstack(self, start: int, n: int) -> tuple[Any, Any]:
        return call_deepstack(self.vl_prompt, start, n)

    def __call__(
        self, inputs: mx.array, cache: Any = None, input_embeddings: mx.array | None = None
    ) -> mx.array:
        h = self.embed_tokens(inputs) if input_embeddings is None else input_embeddings
        start, n = self.call_offset(cache), h.shape[1]
        visual_mask, deepstack = self.call_deepstack(start, n)
        return vlm_language.Qwen3VLModel.__call__(
            self,
            inputs,
            inputs_embeds=h,
            cache=cache,
            position_ids=self.call_positions(start, n),
            visual_pos_masks=visual_mask,
            deepstack_visual_embeds=deepstack,
        )


def patch_decoder(
    decoder: Any,
    text_config: Any,
    rotary_class: Any = vlm_language.Qwen3VLRotaryEmbedding,
    decoder_class: type = Qwen3VLTextModel,
) -> None:
    """Swap the classes of one loaded mlx-lm qwen3 decoder's instances; give each attention
    the rotary embedding mlx-vlm builds per layer (`rotary_emb`, the name mlx-vlm's decoder
    reads) and the `head_dim` mlx-vlm's attention reads."""
    decoder.__class__ = decoder_class
    for layer in decoder.layers:
        layer.__class__ = Qwen3VLBlock
        attention = layer.self_attn
        attention.__class__ = Qwen3VLAttention
        attention.head_dim = text_config.head_dim
        attention.rotary_emb = rotary_class(
            text_config.head_dim,
            max_position_embeddings=text_config.max_position_embeddings,
            base=text_config.rope_theta,
            rope_scaling=text_config.rope_scaling,
        )


class AddOn:
    """mlx-engine-compatible vision add-on for Qwen3-VL (`model_type: qwen3_vl`)."""

    MODEL_TYPE = "qwen3_vl"
    ROTARY: type = vlm_language.Qwen3VLRotaryEmbedding
    TEXT_MODEL: type = Qwen3VLTextModel

    def __init__(self, model_path: Path, trust_remote_code: bool = False) -> None:
        from mlx_vlm.models import qwen3_vl as vlm
        from mlx_vlm.utils import load_processor

        self.model_path = Path(model_path)
        # As mlx_vlm.load builds it (TextConfig renames rope_type to type in the dict).
        raw = json.loads((self.model_path / "config.json").read_text())
        self.config = vlm.ModelConfig.from_dict(raw)
        self.config.text_config = vlm.TextConfig.from_dict(raw["text_config"])
        self.config.vision_config = vlm.VisionConfig.from_dict(raw["vision_config"])
        self.vision_tower = vlm.VisionModel(self.config.vision_config)
        load_vision_modules(
            self.model_path,
            {"vision_tower": self.vision_tower},
            raw.get("quantization"),
            sanitize=self.vision_tower.sanitize,  # PyTorch-layout 5-D patch conv
        )
        # mlx-vlm's load_processor passes trust_remote_code=True unless told otherwise.
        self.processor = load_processor(
            self.model_path, add_detokenizer=True, trust_remote_code=trust_remote_code
        )

    # -- optional hooks ----------------------------------------------------------------

    def patch_text_model(self, text_model: Any) -> None:
        decoder = text_model.language_model.model
        patch_decoder(decoder, self.config.text_config, self.ROTARY, self.TEXT_MODEL)

    def clear_prediction_state(self, text_model: Any) -> None:
        text_model.language_model.model.vl_prompt = None

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
        features, deepstack = self.image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        embeddings = self.merge_features(input_ids, inputs_embeds, features)
        state = self.prompt_state(input_ids, inputs, deepstack)
        text_model.language_model.model.vl_prompt = state
        return input_ids[0], embeddings[0]

    # -- the steps, each as mlx-vlm's Qwen3-VL `get_input_embeddings` takes it ----------

    load_images = staticmethod(load_images)

    def processor_inputs(self, prompt: str, images: list[Any]) -> dict[str, Any]:
        """mlx-vlm's processor on the detokenized prompt, called as native calls it: each
        <|image_pad|> expands to (grid_h * grid_w) / merge_size**2 image tokens."""
        from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

        return prepare_inputs(
            self.processor,
            images=images,
            prompts=[prompt],
            image_token_index=self.config.image_token_id,
            add_special_tokens=should_add_special_tokens(self.MODEL_TYPE, self.processor),
        )

    def image_features(
        self, pixel_values: mx.array, grid_thw: mx.array
    ) -> tuple[mx.array, list[mx.array]]:
        """Vision tower on pixels cast to the patch convolution's dtype (as native): the
        merged features and one DeepStack feature per `deepstack_visual_indexes` block."""
        dtype = self.vision_tower.patch_embed.proj.weight.dtype
        return self.vision_tower(pixel_values.astype(dtype), grid_thw)

    def merge_features(
        self, input_ids: mx.array, inputs_embeds: mx.array, features: mx.array
    ) -> mx.array:
        """mlx-vlm's own scatter of the features into the image-token rows."""
        from mlx_vlm.models.qwen3_vl.qwen3_vl import masked_scatter

        mask = input_ids == self.config.image_token_index
        return masked_scatter(
            inputs_embeds, mx.broadcast_to(mask[..., None], inputs_embeds.shape), features
        )

    def prompt_state(
        self, input_ids: mx.array, inputs: dict[str, Any], deepstack: list[mx.array]
    ) -> PromptState:
        """M-RoPE positions and rope_deltas from mlx-vlm's `get_rope_index` (it reads only
        the model config), the DeepStack features as mlx-vlm merges them, the visual rows."""
        from mlx_vlm.models.qwen3_vl import Model

        owner = SimpleNamespace(config=self.config)
        position_ids, rope_deltas = vlm_language.LanguageModel.get_rope_index(
            owner, input_ids, inputs["image_grid_thw"], None, inputs["attention_mask"]
        )
        merged = Model._merge_deepstack_features(owner, input_ids, deepstack, None)
        visual = (input_ids == self.config.image_token_index) | (
            input_ids == self.config.video_token_index
        )
        mx.eval(position_ids, rope_deltas, merged, visual)
        return PromptState(
            position_ids=position_ids,
            rope_deltas=rope_deltas,
            deepstack=tuple(merged or ()),
            visual_mask=visual,
            visual_columns=np.flatnonzero(np.array(visual[0])),
        )
