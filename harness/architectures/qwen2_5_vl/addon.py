"""Qwen2.5-VL vision add-on for the unified path (mlx-lm text model + mlx-vlm vision tower),
under mlx-engine's add-on contract plus one optional extension (M-RoPE positions, below).
Bit-exact with native mlx-vlm 0.7.10 (bf16, float32 and 4-bit; chunked prefill, decode
steps and a restored prompt cache included; measured on the shipped cases).

Embeddings: exactly mlx-vlm's `get_input_embeddings`: token rows from mlx-lm's embedding
table, pixels cast to the patch weight's dtype, mlx-vlm's vision tower (window attention,
2x2 merger), the features scattered over the `<|image_pad|>` rows by mlx-vlm's own
`merge_input_ids_with_image_features`. No scaling anywhere (Qwen2 does not scale
embeddings).

Positions. mlx-lm 0.32.2 loads `qwen2_5_vl` as a plain Qwen2 with a 1-D RoPE: image rows
would be rotated by their sequence index and every later token would be off by
`rope_deltas` (first-token logits 1.4 off on the shipped tiny checkpoint). So the add-on
patches the loaded mlx-lm INSTANCE (`patch_text_model`; no library class is replaced): its
decoder, decoder layers and attention modules get subclasses whose attention rotates by
mlx-vlm's M-RoPE (`Qwen2RotaryEmbedding`, cos/sin computed once per forward call from layer
0's rotary as native does, applied with mlx-vlm's `apply_multimodal_rotary_pos_emb`), and
whose decoder passes every layer a `position_ids` argument [3, B, n]:
- image prompts: the rows of the positions stored by `compute_embeddings`, sliced by the
  KV cache offset (`[:, :, offset : offset + n]`: chunked prefill gets each chunk's rows);
- rows past the stored prompt (decode steps): `offset + rope_deltas` on all 3 sections, as
  mlx-vlm does;
- no stored positions (text prompts, which mlx-engine runs through the plain token path):
  `offset + arange(n)` on all 3 sections, equal to a 1-D RoPE's positions (and computed by
  the same mlx-vlm rotary as native, hence exact in float32 too); under mlx-lm's batch
  generator (one offset per left-padded sequence) each sequence's own index.

Optional contract extension (M-RoPE): an M-RoPE add-on returns positions by storing them on
the text model it is given. `compute_embeddings(text_model, ...)` computes the prompt's
`position_ids` [3, 1, L] and `rope_deltas` [1, 1] with mlx-vlm's own `get_rope_index` (from
the processor's input_ids, `image_grid_thw` and attention mask) and stores them as
`text_model.language_model.model.mrope` (`PromptPositions`); `prompt_positions(text_model)`
reads them back for an engine that drives its own decoder. The patched decoder consumes
them as above; `clear_prediction_state(text_model)` (called before every prediction)
drops them, so an image request's positions never reach the next text prompt. An engine
that restores a prompt cache must store the positions of the whole prompt and prefill the
suffix at the cache offset: the slicing by offset does the rest.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mlx.core as mx
from mlx_lm.models import qwen2
from mlx_lm.models.base import create_attention_mask, scaled_dot_product_attention

from ...addons.common import load_images, load_vision_modules


@dataclasses.dataclass(frozen=True)
class PromptPositions:
    """A prompt's M-RoPE positions [3, 1, L] and the shift of the positions after it
    [1, 1]. A plain object (not an array attribute): MLX would keep arrays set on a module
    in its parameter tree."""

    position_ids: mx.array
    rope_deltas: mx.array


class MRopeAttention(qwen2.Attention):
    """mlx-lm's Qwen2 attention (projections, cache, attention kernel) with mlx-vlm's
    M-RoPE rotary in place of the 1-D RoPE. `rotary_emb` is set by the patch."""

    def __call__(
        self,
        x: mx.array,
        mask: Any = None,
        cache: Any = None,
        position_ids: mx.array | None = None,
        position_embeddings: tuple[mx.array, mx.array] | None = None,
    ) -> mx.array:
        from mlx_vlm.models.qwen2_5_vl.language import apply_multimodal_rotary_pos_emb

        B, L, _ = x.shape
        queries, keys, values = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        queries = queries.reshape(B, L, self.n_heads, -1).transpose(0, 2, 1, 3)
        keys = keys.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        values = values.reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        if position_embeddings is not None:  # what native passes on CPU (no fused kernel)
            queries, keys = apply_multimodal_rotary_pos_emb(
                queries, keys, *position_embeddings, unqueeze_dim=1
            )
        else:
            if position_ids is None:
                position_ids = text_positions(cache.offset if cache is not None else 0, B, L)
            queries, keys = self.rotary_emb.apply_rotary(
                queries, keys, position_ids, unsqueeze_dim=1
            )
        if cache is not None:
            keys, values = cache.update_and_fetch(keys, values)
        output = scaled_dot_product_attention(
            queries, keys, values, cache=cache, scale=self.scale, mask=mask
        )
        return self.o_proj(output.transpose(0, 2, 1, 3).reshape(B, L, -1))


class MRopeBlock(qwen2.TransformerBlock):
    """mlx-lm's decoder layer, taking the positions as mlx-vlm's layers do."""

    def __call__(
        self,
        x: mx.array,
        mask: Any = None,
        cache: Any = None,
        position_ids: mx.array | None = None,
        position_embeddings: tuple[mx.array, mx.array] | None = None,
    ) -> mx.array:
        r = self.self_attn(self.input_layernorm(x), mask, cache, position_ids, position_embeddings)
        h = x + r
        return h + self.mlp(self.post_attention_layernorm(h))


def text_positions(offset: int, batch: int, rows: int) -> mx.array:
    """A text prompt's positions: the sequence index on all 3 sections, [3, B, rows]."""
    return mx.broadcast_to(mx.arange(offset, offset + rows)[None, None], (3, batch, rows))


def call_positions(stored: PromptPositions | None, offset: int, batch: int, rows: int):
    """The positions of the rows [offset, offset + rows) of the current forward call:
    the stored prompt's rows there, `index + rope_deltas` past the prompt (decode)."""
    if stored is None:
        return text_positions(offset, batch, rows)
    prompt = stored.position_ids
    end, parts = offset + rows, []
    if offset < prompt.shape[-1]:
        parts.append(prompt[:, :, offset:end])
    start = max(offset, prompt.shape[-1])
    if start < end:
        after = mx.arange(start, end)[None] + stored.rope_deltas  # [1, n]
        parts.append(mx.broadcast_to(after[None], (3, prompt.shape[1], end - start)))
    positions = parts[0] if len(parts) == 1 else mx.concatenate(parts, axis=-1)
    return mx.broadcast_to(positions, (3, batch, rows))


class MRopeDecoder(qwen2.Qwen2Model):
    """mlx-lm's Qwen2 decoder passing every layer M-RoPE `position_ids` (see the module
    docstring). `mrope` holds the current prompt's positions (None: a text prompt)."""

    mrope: PromptPositions | None = None

    def positions(self, offset: int, batch: int, rows: int) -> mx.array:
        return call_positions(self.mrope, offset, batch, rows)

    def batch_positions(self, offsets: mx.array, rows: int) -> mx.array:
        """A batch cache (mlx-lm's batch generator: left-padded token prompts) keeps one
        offset per sequence, negative over its padding: each row's own sequence index,
        on all 3 sections, as mlx-lm's RoPE takes an array offset."""
        if self.mrope is not None:
            raise NotImplementedError("batched requests with stored image positions")
        positions = offsets[:, None] + mx.arange(rows)[None]
        return mx.broadcast_to(positions[None], (3, *positions.shape))

    def __call__(
        self, inputs: mx.array, cache: Any = None, input_embeddings: mx.array | None = None
    ) -> mx.array:
        if self.pipeline_size > 1:
            raise NotImplementedError("the M-RoPE patch does not support pipeline parallelism")
        h = self.embed_tokens(inputs) if input_embeddings is None else input_embeddings
        if cache is None:
            cache = [None] * len(self.layers)
        mask = create_attention_mask(h, cache[0])
        offset = cache[0].offset if cache[0] is not None else 0
        if isinstance(offset, mx.array):
            position_ids = self.batch_positions(offset, h.shape[1])
        else:
            position_ids = self.positions(offset, h.shape[0], h.shape[1])
        # As mlx-vlm's Qwen2Model: cos/sin once per call unless the rotary has a fused
        # kernel (Metal), in which case each attention applies it from the positions.
        rotary = self.layers[0].self_attn.rotary_emb
        position_embeddings = None if rotary.fused_apply else rotary(h, position_ids)
        for layer, c in zip(self.layers, cache, strict=True):
            h = layer(
                h, mask, c, position_ids=position_ids, position_embeddings=position_embeddings
            )
        return self.norm(h)


class AddOn:
    """mlx-engine-compatible vision add-on for Qwen2.5-VL (`model_type: qwen2_5_vl`)."""

    MODEL_TYPE = "qwen2_5_vl"

    def __init__(self, model_path: Path, trust_remote_code: bool = False) -> None:
        from mlx_vlm.models import qwen2_5_vl as vlm
        from mlx_vlm.utils import load_processor

        self.model_path = Path(model_path)
        raw = json.loads((self.model_path / "config.json").read_text())
        # As mlx_vlm.load builds it: ModelConfig.from_dict copies the root (text) fields
        # into text_config; then the module configs.
        self.config = vlm.ModelConfig.from_dict(json.loads(json.dumps(raw)))
        self.config.text_config = vlm.TextConfig.from_dict(self.config.text_config)
        self.config.vision_config = vlm.VisionConfig.from_dict(raw["vision_config"])
        self.vision_tower = vlm.VisionModel(self.config.vision_config)
        load_vision_modules(
            self.model_path,
            {"vision_tower": self.vision_tower},
            raw.get("quantization"),
            sanitize=self.vision_tower.sanitize,  # PyTorch-layout 5-D patch weight
        )
        # mlx-vlm's load_processor passes trust_remote_code=True unless told otherwise.
        self.processor = load_processor(
            self.model_path, add_detokenizer=True, trust_remote_code=trust_remote_code
        )

    # -- the contract ------------------------------------------------------------------

    def patch_text_model(self, text_model: Any) -> None:
        """Make this mlx-lm instance's decoder rotate by M-RoPE positions (instance
        classes only: other models of the process keep mlx-lm's classes)."""
        from mlx_vlm.models.qwen2_5_vl.language import Qwen2RotaryEmbedding

        decoder = text_model.language_model.model
        if not isinstance(decoder, qwen2.Qwen2Model):
            raise TypeError(f"expected mlx-lm's Qwen2 decoder, got {type(decoder).__name__}")
        args = self.config.text_config
        rotary = Qwen2RotaryEmbedding(
            args.hidden_size // args.num_attention_heads,
            max_position_embeddings=args.max_position_embeddings,
            base=args.rope_theta,
            rope_scaling=args.rope_scaling,
        )
        decoder.__class__ = MRopeDecoder
        for layer in decoder.layers:
            layer.__class__ = MRopeBlock
            layer.self_attn.__class__ = MRopeAttention
            layer.self_attn.rotary_emb = rotary

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
        input_ids, grid = inputs["input_ids"], inputs["image_grid_thw"]
        inputs_embeds = text_model.language_model.model.embed_tokens(input_ids)
        features = self.image_features(inputs["pixel_values"], grid)
        embeddings = self.merge_features(input_ids, inputs_embeds, features)
        self.store_positions(text_model, self.rope_index(input_ids, grid, inputs))
        return input_ids[0], embeddings[0]

    def clear_prediction_state(self, text_model: Any) -> None:
        """Drop the previous prompt's positions: the next prompt may be text only."""
        text_model.language_model.model.mrope = None

    @staticmethod
    def prompt_positions(text_model: Any) -> PromptPositions | None:
        """The positions `compute_embeddings` stored (contract extension)."""
        return getattr(text_model.language_model.model, "mrope", None)

    # -- the steps, each as mlx-vlm's Qwen2.5-VL `get_input_embeddings` takes it ---------

    load_images = staticmethod(load_images)

    def processor_inputs(self, prompt: str, images: list[Any]) -> dict[str, Any]:
        """mlx-vlm's processor on the detokenized prompt, called as native calls it: each
        <|image_pad|> expands to grid_h * grid_w / 4 copies."""
        from mlx_vlm.utils import prepare_inputs, should_add_special_tokens

        return prepare_inputs(
            self.processor,
            images=images,
            prompts=[prompt],
            image_token_index=self.config.image_token_id,
            add_special_tokens=should_add_special_tokens(self.MODEL_TYPE, self.processor),
        )

    def image_features(self, pixel_values: mx.array, grid_thw: mx.array) -> mx.array:
        """The vision tower on pixels cast to its patch weight's dtype, as native casts
        them; [image tokens, hidden] in that dtype."""
        dtype = self.vision_tower.patch_embed.proj.weight.dtype
        return self.vision_tower(pixel_values.astype(dtype), grid_thw, output_hidden_states=False)

    def merge_features(
        self, input_ids: mx.array, inputs_embeds: mx.array, features: mx.array
    ) -> mx.array:
        from mlx_vlm.models.qwen2_5_vl import Model

        return Model.merge_input_ids_with_image_features(
            self.config.image_token_id,
            self.config.video_token_id,
            features,
            inputs_embeds,
            input_ids,
        )

    def rope_index(
        self, input_ids: mx.array, grid_thw: mx.array, inputs: dict[str, Any]
    ) -> PromptPositions:
        """mlx-vlm's own `get_rope_index` (it reads only `self.config`), with the
        processor's attention mask as native passes it."""
        from mlx_vlm.models.qwen2_5_vl.language import LanguageModel

        owner = SimpleNamespace(config=self.config)
        position_ids, deltas = LanguageModel.get_rope_index(
            owner, input_ids, grid_thw, None, inputs.get("attention_mask")
        )
        return PromptPositions(position_ids, deltas)

    @staticmethod
    def store_positions(text_model: Any, positions: PromptPositions) -> None:
        text_model.language_model.model.mrope = positions
