"""Prompt-cache restore: a request whose first rows come from a saved and reloaded prompt
cache must give what the same request gives in one shot.

The restored capture runs on the candidate's session (no model reload): the prompt's
first `prefix_chunks` prefill chunks are prefilled on the loop's schedule (mlx-lm's
`generate_step` chunking), the KV cache is saved with mlx-lm's `save_prompt_cache`
(safetensors) and loaded back into fresh cache objects, and the rest of the prompt is
prefilled on top of it and decoded. Every stage is compared with the one-shot capture on
the rows both hold; any difference fails `prompt_cache`. With the boundary a multiple of
`prefill_step_size`, both runs have the same chunk schedule, so exactness is the bar.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from .cases import CaseError, CaseSpec
from .differences import first_difference
from .records import Capture, CheckResult

STAGE = "prompt_cache"
PREFIX = "prompt_cache_prefix_tokens"


def _prefill(model: Any, ids: Any, embeddings: Any, cache: list[Any], step: int) -> None:
    import mlx.core as mx

    for start in range(0, ids.shape[0], step):
        rows = slice(start, start + step)
        if embeddings is None:
            model(ids[rows][None], cache=cache)
        else:
            model(ids[rows][None], cache=cache, input_embeddings=embeddings[rows][None])
        mx.eval([c.state for c in cache])


def _held(cache: list[Any]) -> int:
    return max((int(getattr(c, "offset", 0)) for c in cache), default=0)


def restored_capture(session: Any, case: CaseSpec) -> Capture:
    """The case through a saved and reloaded prompt cache of its first chunks."""
    from mlx_lm.models.cache import (
        can_trim_prompt_cache,
        load_prompt_cache,
        make_prompt_cache,
        save_prompt_cache,
        trim_prompt_cache,
    )

    from .paths import PathError

    if not callable(getattr(session, "capture_prepared", None)):
        raise PathError(f"path {session.name!r} cannot run a request on a restored prompt cache")
    prompt, input_ids, embeddings = session.prepare(case)
    ids = input_ids.reshape(-1)
    split = case.prompt_cache.prefix_chunks * case.prefill_step_size
    if not 0 < split < ids.shape[0]:
        raise CaseError(
            case.source,
            f"a prefix of {split} tokens leaves no suffix of the {ids.shape[0]}-token prompt",
            case.id,
            "prompt_cache.prefix_chunks",
        )
    cache = make_prompt_cache(session.model)
    _prefill(session.model, ids[:split], embeddings, cache, case.prefill_step_size)
    # A path that ran ahead past the prefix in one pass (bidirectional image blocks) holds
    # more rows than the prefix: the saved cache keeps the prefix only.
    extra = _held(cache) - split
    if extra > 0:
        if not can_trim_prompt_cache(cache):
            raise PathError(f"the prompt cache holds {extra} rows past the prefix and cannot trim")
        trim_prompt_cache(cache, extra)
    with tempfile.TemporaryDirectory(prefix="mlx-parity-cache-") as tmp:
        file = str(Path(tmp) / "prefix.safetensors")
        save_prompt_cache(file, cache, metadata={"prefix_tokens": str(split)})
        restored = load_prompt_cache(file)
    rest = None if embeddings is None else embeddings[split:]
    capture = session.capture_prepared(
        case, prompt, ids[split:], rest, prompt_cache=restored, prefix_len=split
    )
    return _with(capture, {PREFIX: str(split)})


def _with(capture: Capture, provenance: dict[str, str]) -> Capture:
    import dataclasses

    return dataclasses.replace(capture, provenance={**capture.provenance, **provenance})


def _suffix(name: str, one_shot: np.ndarray, restored: np.ndarray, split: int) -> np.ndarray:
    """The one-shot array on the rows the restored capture holds."""
    if name.startswith("attention_mask"):
        return one_shot[split:]
    if one_shot.ndim >= 1 and one_shot.shape[0] == restored.shape[0] + split:
        return one_shot[split:]
    return one_shot


def check(case_id: str, one_shot: Capture, restored: Capture) -> CheckResult:
    """One gating row: every array the restored capture holds equals the one-shot's."""
    split = int(restored.provenance.get(PREFIX, 0))
    names = [k for k in restored.arrays if k in one_shot.arrays]
    arrays = {
        k: (
            _suffix(k, one_shot.arrays[k], restored.arrays[k], split),
            restored.arrays[k][split:] if k.startswith("attention_mask") else restored.arrays[k],
            one_shot.dtypes.get(k, "float32"),
        )
        for k in names
    }
    found = first_difference(names, one_shot, restored, None, arrays)
    where = f"prefix of {split} tokens restored from a saved prompt cache"
    if found is None:
        value, detail = 0.0, f"identical to the one-shot request ({where})"
    else:
        value = found.max_abs if np.isfinite(found.max_abs) else float("inf")
        detail = f"{where}: {found.stage} differs from the one-shot request ({found.detail})"
    passed = value == 0.0
    return CheckResult(
        case_id, STAGE, "exact", "max_abs_diff", value, 0.0, passed,
        0.0 if passed else float("nan"), detail,
    )  # fmt: skip
