"""Random weights for a lazily built MLX model, streamed tensor by tensor (large tensors
row-chunk by row-chunk) into safetensors shards: memory stays bounded by one tensor's
quantized form, never the full-precision model.

Every chunk is drawn from a key derived from (seed, tensor name, chunk index), so a
checkpoint is byte-identical for the same spec whatever order tensors are written in.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlx.core as mx

CHUNK_ELEMENTS = 1 << 24  # ~32 MB of bf16 per generated chunk
SHARD_BYTES = 1 << 30

# (name, shape, key) -> values, or None to keep the model's own initialisation.
Rule = Callable[[str, tuple[int, ...], mx.array], "mx.array | None"]


def chunk_key(seed: int, name: str, chunk: int) -> mx.array:
    digest = hashlib.sha256(f"{seed}:{name}:{chunk}".encode()).digest()
    return mx.random.key(int.from_bytes(digest[:4], "little"))


def default_values(shape: tuple[int, ...], key: mx.array, embedding: bool) -> mx.array:
    """MLX's own init distributions: embeddings N(0, 1/dim), linears U(+-1/sqrt(in))."""
    if embedding:
        return mx.random.normal(shape, key=key) * math.sqrt(1 / shape[-1])
    bound = 1 / math.sqrt(shape[-1])
    return mx.random.uniform(-bound, bound, shape, key=key)


class ShardWriter:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.pending: dict[str, mx.array] = {}
        self.pending_bytes = 0
        self.shards: list[tuple[str, list[str]]] = []
        self.total_bytes = 0

    def add(self, name: str, array: mx.array) -> None:
        self.pending[name] = array
        self.pending_bytes += array.nbytes
        self.total_bytes += array.nbytes
        if self.pending_bytes >= SHARD_BYTES:
            self._flush()

    def _flush(self) -> None:
        if not self.pending:
            return
        name = f".shard-{len(self.shards):05d}.safetensors"
        mx.save_safetensors(str(self.out / name), self.pending, metadata={"format": "mlx"})
        self.shards.append((name, sorted(self.pending)))
        self.pending, self.pending_bytes = {}, 0

    def close(self) -> list[str]:
        self._flush()
        count = len(self.shards)
        weight_map, files = {}, []
        for index, (temp, names) in enumerate(self.shards):
            final = (
                "model.safetensors"
                if count == 1
                else f"model-{index + 1:05d}-of-{count:05d}.safetensors"
            )
            (self.out / temp).rename(self.out / final)
            files.append(final)
            weight_map.update({n: final for n in names})
        index = {
            "metadata": {"total_size": self.total_bytes},
            "weight_map": dict(sorted(weight_map.items())),
        }
        (self.out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return files


def _chunks(shape: tuple[int, ...]) -> Iterator[tuple[int, int]]:
    row = math.prod(shape[1:]) if len(shape) > 1 else 1
    step = max(1, CHUNK_ELEMENTS // row)
    for start in range(0, shape[0], step):
        yield start, min(shape[0], start + step)


def _materialize(
    name: str,
    lazy: mx.array,
    seed: int,
    rule: Rule,
    dtype: mx.Dtype,
    quantize: tuple[int, int] | None,
    embedding: bool,
) -> dict[str, mx.array]:
    base = name.removesuffix(".weight")
    parts: dict[str, list[mx.array]] = {}
    big = lazy.size > CHUNK_ELEMENTS and lazy.ndim >= 2
    spans = list(_chunks(lazy.shape)) if big else [(0, lazy.shape[0] if lazy.ndim else 1)]
    for index, (start, stop) in enumerate(spans):
        shape = (stop - start, *lazy.shape[1:]) if big else tuple(lazy.shape)
        key = chunk_key(seed, name, index)
        values = rule(name, shape, key)
        if values is None:
            values = default_values(shape, key, embedding) if big else lazy
        values = values.astype(dtype) if mx.issubdtype(values.dtype, mx.floating) else values
        if quantize is not None:
            group, bits = quantize
            wq, scales, biases = mx.quantize(values, group_size=group, bits=bits)
            produced = {name: wq, f"{base}.scales": scales, f"{base}.biases": biases}
        else:
            produced = {name: values}
        mx.eval(produced)
        for key_name, array in produced.items():
            parts.setdefault(key_name, []).append(array)
    return {k: v[0] if len(v) == 1 else mx.concatenate(v, axis=0) for k, v in parts.items()}


def write_random_weights(
    model: Any,
    out: Path,
    *,
    seed: int,
    dtype: mx.Dtype,
    rule: Rule,
    quantize: tuple[int, int] | None,
) -> list[str]:
    """Write every parameter of `model` (built lazily: nothing evaluated yet) to shards.
    `quantize=(group, bits)` quantizes the weights of quantizable modules (linear and
    embedding layers) whose input dimension is a multiple of the group size."""
    import mlx.nn as nn
    from mlx.utils import tree_flatten

    modules = dict(model.named_modules())
    quantizable = {f"{p}.weight" for p, m in modules.items() if hasattr(m, "to_quantized")}
    embeddings = {f"{p}.weight" for p, m in modules.items() if isinstance(m, nn.Embedding)}
    writer = ShardWriter(out)
    for name, lazy in tree_flatten(model.parameters()):
        q = (
            quantize
            if (quantize and name in quantizable and lazy.shape[-1] % quantize[0] == 0)
            else None
        )
        parts = _materialize(name, lazy, seed, rule, dtype, q, name in embeddings)
        for part, array in parts.items():
            writer.add(part, array)
    return writer.close()
