"""Gemma 4 vision add-on for the unified path (mlx-lm text model + mlx-vlm vision tower).

Bit-exact with native mlx-vlm by construction:
- embeddings are built exactly as mlx-vlm builds them (token embeddings times
  `embed_scale`, image features scattered in) and the patched text model skips its own
  `embed_scale` multiplication for them, instead of dividing features by the scale and
  letting mlx-lm multiply back (a bf16 round trip that is exact only for powers of two);
- per-layer inputs come from the prompt's ids with image/audio/video tokens zeroed, sliced
  by the KV-cache offset so every prefill chunk gets its own rows;
- with `use_bidirectional_attention: vision`, tokens of one image block attend to each
  other both ways, as in mlx-vlm, and an image prompt is prefilled in one pass, as mlx-vlm
  does (it turns chunked prefill off for such prompts): the first prefill call of the
  engine's loop runs the whole prompt, the loop's later prefill calls are answered from
  that pass. The image-block mask is laid over the keys each cache actually holds (a
  rotating sliding-window cache may hold fewer than the prompt's positions).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm.models import gemma4_text

from ...addons.common import load_images, load_vision_modules


@dataclasses.dataclass(frozen=True)
class PromptState:
    """What the patched text model needs about the current prompt (a plain object, so MLX
    does not treat it as part of the module tree)."""

    per_layer_input_ids: mx.array | None  # [1, L], multimodal tokens replaced by 0
    vision_blocks: mx.array | None  # [1, L], image-block index per token, -1 elsewhere
    prescaled: bool = True  # embeddings already carry embed_scale: the decoder must not
    # The whole prompt as compute_embeddings returned it, for the one-pass prefill of
    # bidirectional image prompts (`UnifiedGemma4TextModel.runs_in_one_pass`).
    input_ids: mx.array | None = None  # [1, L]
    embeddings: mx.array | None = None  # [1, L, hidden]

    @property
    def length(self) -> int | None:
        for rows in (self.embeddings, self.per_layer_input_ids, self.vision_blocks):
            if rows is not None:
                return int(rows.shape[1])
        return None


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Prompt rows [start, stop) of the current call (a plain object, not a tuple: MLX
    would store a tuple in the module tree)."""

    start: int
    stop: int


@dataclasses.dataclass
class RunAhead:
    """Prompt rows a one-pass prefill computed before the caller's loop asked for them:
    rows [start, stop) of `hidden` are the decoder's outputs, the KV cache already holds
    them, and `served` is how far the caller's loop has got (a plain object)."""

    state: PromptState
    cache: Any  # the first layer cache the pass filled: a new cache is a new prompt
    hidden: mx.array  # [1, stop - start, hidden]
    start: int
    stop: int
    served: int

    def take(self, rows: int) -> mx.array:
        if self.served + rows > self.stop:
            raise ValueError(
                f"prefill call for prompt rows [{self.served}, {self.served + rows}) runs "
                f"past the {self.stop}-token prompt that the one-pass prefill computed"
            )
        begin = self.served - self.start
        self.served += rows
        return self.hidden[:, begin : begin + rows]


def _cache_offset(cache: Any) -> int:
    if not cache or cache[0] is None:
        return 0
    return int(cache[0].offset)


def vision_block_ids(is_vision: mx.array) -> mx.array:
    """Index of the contiguous image block each token belongs to; -1 for other tokens."""
    previous = mx.concatenate([mx.zeros_like(is_vision[:, :1]), is_vision[:, :-1]], axis=1)
    starts = is_vision & ~previous
    blocks = mx.cumsum(starts.astype(mx.int32), axis=1) - 1
    return mx.where(is_vision, blocks, -1)


def splits_block(blocks: mx.array, edge: int) -> bool:
    """Whether a chunk edge at prompt position `edge` falls inside an image block."""
    ids = blocks[0]
    if not 0 < edge < ids.shape[0]:
        return False
    before, after = int(ids[edge - 1]), int(ids[edge])
    return before >= 0 and before == after


class UnifiedGemma4TextModel(gemma4_text.Gemma4TextModel):
    """mlx-lm's Gemma 4 decoder, reading the add-on's PromptState when called with
    `input_embeddings`. Without a state it is the unpatched class, call for call.

    Prefill schedule. Native mlx-vlm 0.7.10 turns chunked prefill off for a Gemma 4 prompt
    with image (or video) tokens when the text config has `use_bidirectional_attention:
    vision` (`LanguageModel.chunked_prefill_policy`, read by `_chunked_prefill_enabled` in
    `mlx_vlm/generate/ar.py`): the whole prompt goes through the decoder in one call, so
    every image block sees all of itself. mlx-lm's `generate_step` (the engine's loop)
    always chunks: `min(prefill_step_size, remaining - 1)` rows per call, then the last
    token alone. So for such a prompt, the first prefill call here runs the rest of the
    prompt in one pass, as native does (filling the KV cache), and the loop's later calls
    for rows already computed are answered from that pass without running the decoder
    again. Prompts without image tokens, and every prompt of a causal config, keep the
    loop's schedule (native chunks them the same way)."""

    prompt_state: PromptState | None = None
    _chunk: Chunk | None = None
    _ahead: RunAhead | None = None

    def __call__(self, inputs=None, cache=None, input_embeddings=None, per_layer_inputs=None):
        state = self.prompt_state
        if state is None or input_embeddings is None:
            return super().__call__(inputs, cache, input_embeddings, per_layer_inputs)
        rows = input_embeddings.shape[1]
        ahead = self._ahead
        if ahead is not None:
            first = cache[0] if cache else None
            self._ahead = None  # served below, or another prompt / cache: start afresh
            same_prompt = ahead.state is state and ahead.cache is first
            if same_prompt and (first is None or int(first.offset) == ahead.stop):
                return self._serve(ahead, rows)
        start = self.prompt_position(cache)
        stop = start + rows
        if per_layer_inputs is None and self.runs_in_one_pass(state, start, stop):
            total = state.length
            hidden = self._forward(
                state,
                None if state.input_ids is None else state.input_ids[:, start:total],
                cache,
                state.embeddings[:, start:total],
                None,
                start,
                total,
            )
            ahead = RunAhead(state, cache[0] if cache else None, hidden, start, total, start)
            return self._serve(ahead, rows)
        return self._forward(state, inputs, cache, input_embeddings, per_layer_inputs, start, stop)

    def _serve(self, ahead: RunAhead, rows: int) -> mx.array:
        """The next `rows` rows of a one-pass prefill; kept until the loop has them all."""
        out = ahead.take(rows)
        self._ahead = ahead if ahead.served < ahead.stop else None
        return out

    @staticmethod
    def prompt_position(cache: Any) -> int:
        """Where this call's rows start in the prompt: the KV cache's offset (every token
        it has seen; a rotating sliding-window cache holds fewer, never less offset)."""
        return _cache_offset(cache)

    def runs_in_one_pass(self, state: PromptState, start: int, stop: int) -> bool:
        """A prefill call that stops short of the prompt's end runs the rest of the prompt
        in one pass when native mlx-vlm would not chunk it: bidirectional vision attention
        and image tokens in the prompt. Recognised by the KV-cache offset and the prompt's
        length, whatever the call's length (a one-token chunk is a prefill chunk too)."""
        total = state.length
        return (
            state.vision_blocks is not None
            and state.embeddings is not None
            and total is not None
            and start < stop < total
            and bool(mx.any(state.vision_blocks >= 0))
        )

    def _forward(self, state, inputs, cache, input_embeddings, per_layer_inputs, start, stop):
        ids = state.per_layer_input_ids
        if per_layer_inputs is None and self.hidden_size_per_layer_input and ids is not None:
            per_layer_inputs = self._get_per_layer_inputs(self.per_layer_rows(ids, start, stop))
        scale = self.embed_scale
        if state.prescaled:
            self.embed_scale = 1.0
        self._chunk = Chunk(start, stop)
        try:
            return super().__call__(inputs, cache, input_embeddings, per_layer_inputs)
        finally:
            self.embed_scale, self._chunk = scale, None

    @staticmethod
    def per_layer_rows(ids: mx.array, start: int, stop: int) -> mx.array:
        """The rows of this prefill chunk (the KV-cache offset says where it starts)."""
        return ids[:, start:stop]

    def _make_masks(self, h, cache):
        blocks = self.prompt_state.vision_blocks if self.prompt_state else None
        if blocks is None or self._chunk is None:
            return super()._make_masks(h, cache)
        start, stop = self._chunk.start, self._chunk.stop
        chunk_blocks = blocks[:, start:stop]
        if not bool(mx.any(chunk_blocks >= 0)):
            return super()._make_masks(h, cache)
        self._refuse_split_blocks(blocks, start, stop)
        if stop - start == 1:
            return super()._make_masks(h, cache)  # a block of one token: causal already
        from mlx_lm.models.base import create_attention_mask

        masks, by_type = [], {}
        for layer, c in zip(self.layers, cache, strict=False):
            kind = layer.layer_type
            if kind not in by_type:
                window = self.window_size if kind == "sliding_attention" else None
                base = create_attention_mask(h, c, window_size=window, return_array=True)
                same = self.same_block(blocks, start, stop, base.shape[-1])
                by_type[kind] = base | same[:, None]
            masks.append(by_type[kind])
        return masks

    @staticmethod
    def same_block(blocks: mx.array, start: int, stop: int, width: int) -> mx.array:
        """[1, stop - start, width]: query row and key column in the same image block.

        The key columns are the keys the layer's cache hands attention: the last `width`
        prompt positions before `stop` (a rotating sliding-window cache keeps at most its
        window before the chunk, in temporal order after a multi-token update). As in
        mlx-vlm, a key of the query's own block is attended even beyond the window."""
        if not 0 < width <= stop:
            raise ValueError(
                f"cannot lay the bidirectional image mask over {width} keys for prompt "
                f"rows [{start}, {stop})"
            )
        queries = blocks[:, start:stop]
        keys = blocks[:, stop - width : stop]
        return (queries[..., :, None] == keys[:, None, :]) & (queries[..., :, None] >= 0)

    @staticmethod
    def _refuse_split_blocks(blocks: mx.array, start: int, stop: int) -> None:
        for edge in (start, stop):
            if splits_block(blocks, edge):
                raise ValueError(
                    f"prefill chunk [{start}, {stop}) splits image block "
                    f"{int(blocks[0, edge])} at token {edge}: bidirectional vision "
                    "attention needs each image block inside one call. The one-pass "
                    "prefill covers this when the add-on's compute_embeddings set the "
                    "prompt (PromptState.embeddings); otherwise choose a case "
                    "`prefill_step_size` whose chunk edges fall outside image blocks"
                )


class AddOn:
    """mlx-engine-compatible vision add-on for Gemma 4 (`model_type: gemma4`)."""

    def __init__(self, model_path: Path, trust_remote_code: bool = False) -> None:
        from mlx_vlm.models import gemma4 as vlm
        from mlx_vlm.models.gemma4.gemma4 import MultimodalEmbedder
        from mlx_vlm.utils import load_processor

        self.model_path = Path(model_path)
        config = json.loads((self.model_path / "config.json").read_text())
        self.config = vlm.ModelConfig.from_dict(config)
        vision_config = vlm.VisionConfig.from_dict(config["vision_config"])
        text_config = vlm.TextConfig.from_dict(config["text_config"])
        self.vision_tower = vlm.VisionModel(vision_config)
        self.embed_vision = MultimodalEmbedder(
            embedding_dim=vision_config.hidden_size,
            text_hidden_size=text_config.hidden_size,
            eps=vision_config.rms_norm_eps,
        )
        self.bidirectional = text_config.use_bidirectional_attention == "vision"
        self._load_vision_weights(config.get("quantization"))
        # mlx-vlm's load_processor passes trust_remote_code=True unless told otherwise.
        self.processor = load_processor(
            self.model_path, add_detokenizer=True, trust_remote_code=trust_remote_code
        )
        self.multimodal_token_ids = [
            t
            for t in (
                self.config.image_token_id,
                self.config.audio_token_id,
                getattr(self.config, "video_token_id", None),
            )
            if t is not None
        ]

    def _load_vision_weights(self, quantization: dict[str, Any] | None) -> None:
        load_vision_modules(
            self.model_path,
            {"vision_tower": self.vision_tower, "embed_vision": self.embed_vision},
            quantization,
            strip_prefix="model.",
            exclude=("rotary_emb",),
        )

    def patch_text_model(self, text_model: Any) -> None:
        decoder = text_model.language_model.model
        if not isinstance(decoder, UnifiedGemma4TextModel):
            decoder.__class__ = UnifiedGemma4TextModel

    def clear_prediction_state(self, text_model: Any) -> None:
        decoder = text_model.language_model.model
        decoder.prompt_state = None
        decoder._ahead = None

    def compute_embeddings(
        self,
        text_model: Any,
        prompt_tokens: mx.array,
        images_b64: list[str],
        max_size: tuple[int, int] | None,
    ):
        if not images_b64:
            raise ValueError("compute_embeddings needs at least one image")
        images = self.load_images(images_b64, max_size)
        prompt = self.processor.tokenizer.decode(prompt_tokens.tolist())
        inputs = self.processor_inputs(prompt, images)
        input_ids = inputs["input_ids"]
        features = self.embed_vision(
            self.vision_tower(inputs["pixel_values"], inputs.get("image_position_ids"))
        )
        decoder = text_model.language_model.model
        embeddings = self.merge_features(decoder, input_ids, features)
        decoder.prompt_state = dataclasses.replace(
            self.prompt_state(input_ids), input_ids=input_ids, embeddings=embeddings
        )
        decoder._ahead = None
        return input_ids[0], embeddings[0]

    load_images = staticmethod(load_images)

    def processor_inputs(self, prompt: str, images: list[Any]) -> dict[str, Any]:
        """mlx-vlm's processor on the detokenized prompt: image placeholders expanded,
        pixel values, patch positions; the same call, with the same arguments, as native
        mlx-vlm makes (`should_add_special_tokens` is False for Gemma 4 with a chat
        template: the rendered prompt holds the template's <bos>). mlx-vlm 0.7.10 does not
        forward that False to Gemma4Processor (it takes it through **kwargs), so a
        tokenizer that adds <bos> adds a second one here exactly as in native."""
        from mlx_vlm.utils import prepare_inputs

        return prepare_inputs(
            self.processor,
            images=images,
            prompts=[prompt],
            image_token_index=self.config.image_token_id,
            add_special_tokens=False,
        )

    def merge_features(self, decoder: Any, input_ids: mx.array, features: mx.array) -> mx.array:
        """Token embeddings with image features scattered in, exactly as mlx-vlm's
        `get_input_embeddings` computes them (scaled: the decoder's input space)."""
        from mlx_vlm.models.gemma4.gemma4 import masked_scatter

        embeddings = decoder.embed_tokens(input_ids) * decoder.embed_scale
        is_image = mx.expand_dims(input_ids == self.config.image_token_id, -1)
        return masked_scatter(
            embeddings,
            mx.broadcast_to(is_image, embeddings.shape),
            features.astype(embeddings.dtype),
        )

    def per_layer_input_ids(self, input_ids: mx.array) -> mx.array | None:
        multimodal = mx.zeros(input_ids.shape, dtype=mx.bool_)
        for token in self.multimodal_token_ids:
            multimodal = multimodal | (input_ids == token)
        return mx.where(multimodal, 0, input_ids)

    def prompt_state(self, input_ids: mx.array) -> PromptState:
        blocks = vision_block_ids(input_ids == self.config.image_token_id)
        return PromptState(
            per_layer_input_ids=self.per_layer_input_ids(input_ids),
            vision_blocks=blocks if self.bidirectional else None,
        )
