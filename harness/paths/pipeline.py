"""Paths that drive a library's high-level generation API, as an engine does, instead of
`generate_step`: mlx-lm's `stream_generate` with a prompt cache, mlx-vlm's
`stream_generate`. Every sampling step's logits come from a logits processor, the prefill
schedule from the probes (what decoder layer 0 was called with); the capture's provenance
says how many prompt tokens the generation API reported as served from a cache. Exact
parity with a `generate_step` path holds only when both prefill schedules are equal: the
report prints both next to the verdict."""

from __future__ import annotations

import dataclasses
from typing import Any

from ..capture import capture_first_token
from ..cases import CaseSpec
from ..records import Capture
from .native import NativeSession
from .unified import PlainTextSession, UnifiedSession

CACHED = "cached_prompt_tokens"


class _CachedTokens:
    """Passes a generation API's responses through, remembering the cached-token count
    the first one reports (mlx-vlm's `cached_tokens`; mlx-lm reports none)."""

    def __init__(self, steps: Any) -> None:
        self._steps = iter(steps)
        self.cached: int | None = None

    def __iter__(self) -> _CachedTokens:
        return self

    def __next__(self) -> Any:
        step = next(self._steps)
        if self.cached is None:
            self.cached = int(getattr(step, "cached_tokens", 0) or 0)
        return step

    def close(self) -> None:
        close = getattr(self._steps, "close", None)
        if callable(close):
            close()


def _with_cached(capture: Capture, counter: _CachedTokens | None) -> Capture:
    cached = "0" if counter is None or counter.cached is None else str(counter.cached)
    return dataclasses.replace(capture, provenance={**capture.provenance, CACHED: cached})


class _MlxLmStream:
    """mlx-lm's `stream_generate` over the prepared ids / embeddings, with a fresh prompt
    cache of the engine's making (`make_prompt_cache`)."""

    def capture_prepared(
        self,
        case: CaseSpec,
        prompt: str,
        input_ids: Any,
        embeddings: Any,
        prompt_cache: list[Any] | None = None,
        prefix_len: int = 0,
    ) -> Capture:
        from mlx_lm import stream_generate
        from mlx_lm.models.cache import make_prompt_cache

        cache = prompt_cache if prompt_cache is not None else make_prompt_cache(self.model)
        counter: list[_CachedTokens] = []

        def start(processors: list[Any]) -> Any:
            kwargs = {} if embeddings is None else {"input_embeddings": embeddings}
            counter.append(
                _CachedTokens(
                    stream_generate(
                        self.model,
                        self.tokenizer,
                        input_ids,
                        max_tokens=case.decode_steps + 1,
                        prefill_step_size=case.prefill_step_size,
                        logits_processors=processors,
                        prompt_cache=cache,
                        **kwargs,
                    )
                )
            )
            return counter[0]

        capture = capture_first_token(
            self,
            case.id,
            input_ids,
            start,
            prompt_text=prompt,
            decode_steps=case.decode_steps,
            tokenizer=self.tokenizer,
            prompt_offset=prefix_len,
        )
        return _with_cached(capture, counter[0] if counter else None)


class MlxLmStreamSession(_MlxLmStream, PlainTextSession):
    name = "mlx-lm-stream"


class UnifiedStreamSession(_MlxLmStream, UnifiedSession):
    name = "unified-stream"


class VlmStreamSession(NativeSession):
    """mlx-vlm's `stream_generate` on the rendered prompt and the case's image files:
    mlx-vlm prepares the inputs itself (the ids recorded are those of the same
    `prepare_inputs` call)."""

    name = "mlx-vlm-stream"

    def capture(self, case: CaseSpec) -> Capture:
        from mlx_vlm import stream_generate

        prompt, images, inputs = self.prepare(case)
        counter: list[_CachedTokens] = []

        def start(processors: list[Any]) -> Any:
            counter.append(
                _CachedTokens(
                    stream_generate(
                        self.model,
                        self.processor,
                        prompt,
                        image=images,
                        max_tokens=case.decode_steps + 1,
                        temperature=0.0,
                        prefill_step_size=case.prefill_step_size,
                        logits_processors=processors,
                    )
                )
            )
            return counter[0]

        capture = capture_first_token(
            self,
            case.id,
            inputs["input_ids"],
            start,
            prompt_text=prompt,
            decode_steps=case.decode_steps,
            tokenizer=getattr(self.processor, "tokenizer", self.processor),
        )
        return _with_cached(capture, counter[0] if counter else None)
