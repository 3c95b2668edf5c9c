"""The build steps every synthesizer shares: tokenizer, config, seeded random weights
(quantized when asked) and the JSON and chat-template files beside them."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from .tokenizer import build_bpe_tokenizer

__all__ = ["QUANT_GROUP", "build_checkpoint"]

QUANT_GROUP = 64


def build_checkpoint(
    spec: Any,
    out: Path,
    *,
    specials: list[str],
    end_of_turn: str,
    model_config: Callable[[Any, dict[str, int]], dict[str, Any]],
    lazy_model: Callable[[dict[str, Any]], Any],
    rule: Callable[[Any, Any], Any],
    files: Mapping[str, Callable[[Any], dict[str, Any]]],
    chat_template: str,
) -> None:
    """Write a checkpoint into the (existing, empty) directory `out`: the tokenizer of
    `specials`, `model_config(spec, ids)` (with the quantization when `spec.quantize_bits`
    is set), the weights of `lazy_model(config)` drawn from `spec.seed` as
    `rule(spec, model)` says, a generation config ending on <eos> or `end_of_turn`, each
    of `files` ({name: payload(spec)}) and the chat template."""
    import mlx.core as mx

    from .weights import write_random_weights

    ids = build_bpe_tokenizer(
        out, specials, spec.vocab_size, bos_token="<bos>" if spec.add_bos_token else None
    )
    config = model_config(spec, ids)
    # mlx-vlm's modules draw their init from the global key at construction.
    mx.random.seed(spec.seed)
    model = lazy_model(config)
    quantize = (QUANT_GROUP, spec.quantize_bits) if spec.quantize_bits is not None else None
    write_random_weights(
        model,
        out,
        seed=spec.seed,
        dtype=getattr(mx, spec.dtype),
        rule=rule(spec, model),
        quantize=quantize,
    )
    if quantize is not None:
        quant = {"group_size": QUANT_GROUP, "bits": spec.quantize_bits, "mode": "affine"}
        config["quantization"] = quant
        config["quantization_config"] = quant
    payloads = {
        "config.json": config,
        "generation_config.json": {
            "bos_token_id": ids["<bos>"],
            "eos_token_id": [ids["<eos>"], ids[end_of_turn]],
            "pad_token_id": ids["<pad>"],
        },
        **{name: payload(spec) for name, payload in files.items()},
    }
    for name, payload in payloads.items():
        (out / name).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    (out / "chat_template.jinja").write_text(chat_template)
