"""Gemma 4 taps: the per-layer inputs computed from token ids, before they are mixed with
the projection of the embeddings (both libraries pass them as the second argument of
their projection method, after any chunk slicing)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ...probes import LAYER_OUT, Recording, wrap_method

# Stages this architecture adds to the common ones (listed by `mlx-parity list
# --architectures`).
STAGES = ("per_layer_inputs",)

# mlx-vlm names the method publicly, mlx-lm privately.
_PROJECTION_METHODS = ("project_per_layer_inputs", "_project_per_layer_inputs")


def _unused_in_prefill(text_model: Any) -> range:
    """Layers whose outputs no KV cache needs during prefill: the KV-shared layers and the
    last layer before them (its output only feeds shared layers)."""
    config = text_model.config
    first_shared = config.num_hidden_layers - (getattr(config, "num_kv_shared_layers", 0) or 0)
    if first_shared >= config.num_hidden_layers:
        return range(config.num_hidden_layers - 1, config.num_hidden_layers)
    return range(max(first_shared - 1, 0), config.num_hidden_layers)


@contextlib.contextmanager
def taps(model: Any, recording: Recording) -> Iterator[None]:
    text_model = model.language_model.model
    recording.final_call_only |= {f"{LAYER_OUT}.{i}" for i in _unused_in_prefill(text_model)}
    if not text_model.hidden_size_per_layer_input:
        yield
        return
    name = next(m for m in _PROJECTION_METHODS if hasattr(text_model, m))

    def record(_embeddings: Any, per_layer_inputs: Any = None) -> None:
        if per_layer_inputs is not None:
            recording.add("per_layer_inputs", per_layer_inputs)

    with wrap_method(text_model, name, record):
        yield
