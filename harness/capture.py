"""Turn what the taps recorded during a prompt's forward passes into a Capture."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import mlx.core as mx
import numpy as np

from .probes import LAYER_IN, LAYER_OUT, Recording
from .probes._masks import stacked_grids
from .records import DEEPSTACK_SCALE, Capture, decode_stage, deepstack_stage

# Capture.tokens holds at most this many decoded tokens (one decode call per token).
MAX_DECODED_TOKENS = 4096
MASK_STAGE = "attention_mask"

_WIDEN = {mx.bfloat16, mx.float16}


def to_numpy(array: mx.array) -> tuple[np.ndarray, str]:
    """Exact host copy: half-precision floats are widened to float32 (lossless)."""
    dtype = str(array.dtype).removeprefix("mlx.core.")
    if array.dtype in _WIDEN:
        array = array.astype(mx.float32)
    return np.array(array, copy=True), dtype


class StepLogits:
    """A logits processor that keeps every call's logits, in order: the first call's are
    those of the first generated token (after the whole prompt), the k-th call's those of
    decode step k. Both libraries' `generate_step` accept it."""

    def __init__(self) -> None:
        self.steps: list[mx.array] = []

    @property
    def logits(self) -> mx.array | None:
        return self.steps[0] if self.steps else None

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        self.steps.append(logits)
        return logits


FirstLogits = StepLogits  # the name paths written against earlier versions import


def token_id(step: Any) -> int:
    """The token of one generation step: `(token, logprobs)` from both libraries'
    `generate_step`, a response object with `.token` from their `stream_generate`."""
    token = step[0] if isinstance(step, tuple) else getattr(step, "token", step)
    return int(token.item() if hasattr(token, "item") else token)


def prompt_rows(calls: Sequence[mx.array], n_calls: int, prompt_len: int) -> mx.array:
    """The prompt's rows from the first `n_calls` per-call [1, n, ...] arrays.

    `generate_step` runs the first decode step before yielding, so later calls are dropped.
    Where a path computed only the last position of a layer (mlx-vlm trims KV-shared Gemma 4
    layers to the rows whose logits it keeps), only the final prompt position is returned.
    """
    if len(calls) < n_calls:
        raise RuntimeError(f"recorded {len(calls)} calls, expected {n_calls} prefill calls")
    rows = mx.concatenate(list(calls[:n_calls]), axis=1)[0]
    return rows if rows.shape[0] == prompt_len else rows[-1:]


def prefill_schedule(embedding_calls: Sequence[mx.array], prompt_len: int) -> tuple[int, ...]:
    """Lengths of the calls that covered the prompt, from what entered decoder layer 0."""
    lengths, total = [], 0
    for call in embedding_calls:
        if total >= prompt_len:
            break
        lengths.append(int(call.shape[1]))
        total += lengths[-1]
    if total != prompt_len:
        raise RuntimeError(f"decoder layer 0 saw {total} prompt rows, expected {prompt_len}")
    return tuple(lengths)


def decoded_tokens(tokenizer: Any, input_ids: mx.array) -> tuple[str, ...]:
    """Each input id decoded on its own (the first MAX_DECODED_TOKENS)."""
    if tokenizer is None:
        return ()
    ids = input_ids.reshape(-1)[:MAX_DECODED_TOKENS].tolist()
    return tuple(str(tokenizer.decode([int(i)])) for i in ids)


def mask_arrays(
    recording: Recording, n_calls: int, prompt_len: int
) -> tuple[dict[str, np.ndarray], tuple[str, ...]]:
    """The `attention_mask` stage, [L, n_types, L] uint8 (1 = may attend; query-major, so
    its rows are prompt positions), and a view `attention_mask.<type>` [L, L] per type."""
    if not recording.masks:
        return {}, ()
    types, stacked = stacked_grids(recording.masks, n_calls, prompt_len)
    arrays = {MASK_STAGE: stacked}
    arrays |= {f"{MASK_STAGE}.{kind}": stacked[:, i, :] for i, kind in enumerate(types)}
    return arrays, types


def between_layers(stages: dict[str, mx.array]) -> dict[str, int]:
    """Replace each recorded layer input `layer_inputs.N+1` by `deepstack.N`: what was added
    to the hidden state after layer N's output and before layer N+1 (zero where nothing
    was), in float32. Measured from what the layers saw, so it holds however a path
    injects. Returns stage -> N."""
    injected = {}
    for key in [k for k in stages if k.startswith(LAYER_IN + ".")]:
        index = int(key.removeprefix(LAYER_IN + ".")) - 1
        after = stages.pop(key)
        before = stages.get(f"{LAYER_OUT}.{index}")
        if before is not None and before.shape == after.shape:
            stage = deepstack_stage(index)
            after, before = after.astype(mx.float32), before.astype(mx.float32)
            stages[stage] = after - before
            # The rounding of the addition is an ulp of the hidden state, not of what was
            # added: ulp-based checks of the difference take their spacing from here.
            stages[f"{DEEPSTACK_SCALE}.{index}"] = mx.maximum(mx.abs(after), mx.abs(before))
            injected[stage] = index
            injected[f"{DEEPSTACK_SCALE}.{index}"] = index
    return injected


def build_capture(
    path: str,
    case_id: str,
    input_ids: mx.array,
    recording: Recording,
    logits: mx.array | None,
    provenance: Mapping[str, Any],
    layer_tree: str = "",
    *,
    prompt_text: str = "",
    tokenizer: Any = None,
    decode_logits: Sequence[mx.array] = (),
    generated: Sequence[int] = (),
    prompt_offset: int = 0,
) -> Capture:
    """`decode_logits`: the logits of decode steps 1..N; `generated`: the greedy tokens the
    path chose after the prompt and after each decode step (the `tokens` stage)."""
    if logits is None:
        raise RuntimeError("the prompt's forward pass produced no logits")
    prompt_len = int(input_ids.size)
    chunks = prefill_schedule(recording.calls.get("embeddings", []), prompt_len)
    stages = {"input_ids": input_ids.reshape(-1)}
    for stage, calls in recording.calls.items():
        if stage in recording.final_call_only:
            # Only the final prompt call's last row: earlier calls stay unevaluated.
            stages[stage] = calls[len(chunks) - 1][0, -1:]
        else:
            stages[stage] = prompt_rows(calls, len(chunks), prompt_len)
    stages["logits"] = logits.reshape(-1)
    stages |= {decode_stage(k): step.reshape(-1) for k, step in enumerate(decode_logits, 1)}
    if generated:
        stages["tokens"] = mx.array(generated, dtype=mx.int32)
    injected = between_layers(stages)
    mx.eval(list(stages.values()))  # one evaluation for all stages, then cheap copies
    arrays: dict[str, np.ndarray] = {}
    dtypes: dict[str, str] = {}
    for stage, value in stages.items():
        arrays[stage], dtypes[stage] = to_numpy(value)
    # Differences are taken in float32; checks judge them in the hidden state's dtype.
    dtypes |= {stage: dtypes[f"{LAYER_OUT}.{index}"] for stage, index in injected.items()}
    masks, mask_types = mask_arrays(recording, len(chunks), prompt_offset + prompt_len)
    arrays |= masks
    dtypes |= dict.fromkeys(masks, "bool")
    provenance = {k: str(v) for k, v in provenance.items()}
    if mask_types:
        provenance["attention_mask_types"] = ",".join(mask_types)
    return Capture(
        path=path,
        case_id=case_id,
        arrays=arrays,
        dtypes=dtypes,
        prefill_chunks=chunks,
        provenance=provenance,
        layer_tree=layer_tree,
        prompt_text=prompt_text,
        tokens=decoded_tokens(tokenizer, input_ids),
    )


def capture_first_token(
    session: Any,
    case_id: str,
    input_ids: mx.array,
    start_steps: Callable[[list[Any]], Iterator[Any]],
    *,
    prompt_text: str = "",
    tokenizer: Any = None,
    decode_steps: int = 0,
    prompt_offset: int = 0,
) -> Capture:
    """Run a path's own generation loop with the probes installed: the prompt, the first
    token, and `decode_steps` greedy decode steps after it.

    `session` has `name`, `model`, `model_type`, `layer_probes` and `provenance`, and may
    have `perturb_embeddings(x, offset)` (what enters decoder layer 0 is replaced by its
    result; see `probes.install`); `start_steps(logits_processors)` starts the path's
    `generate_step` for at least `decode_steps + 1` tokens. With a `tokenizer`, the
    capture's `tokens` are the ids decoded one by one. `prompt_offset`: prompt rows a
    restored prompt cache already holds (`input_ids` are the rest); masks then cover the
    whole prompt, the rows before it empty."""
    from . import probes

    step_logits = StepLogits()
    generated: list[int] = []
    with probes.install(
        session.model,
        session.model_type,
        session.layer_probes,
        perturb_embeddings=getattr(session, "perturb_embeddings", None),
        offset=prompt_offset,
    ) as recording:
        steps = start_steps([step_logits])
        for _ in range(decode_steps + 1):
            step = next(steps, None)
            if step is None:  # the path stopped early (an end-of-sequence token)
                break
            generated.append(token_id(step))
        steps.close()
    # generate_step computes the next step before yielding: keep the yielded ones.
    decode_logits = step_logits.steps[1 : len(generated)]
    return build_capture(
        session.name,
        case_id,
        input_ids,
        recording,
        step_logits.logits,
        session.provenance,
        probes.layer_tree(session.model),
        prompt_text=prompt_text,
        tokenizer=tokenizer,
        decode_logits=decode_logits,
        generated=generated,
        prompt_offset=prompt_offset,
    )


def save_capture(capture: Capture, path: Path) -> None:
    """Full captured tensors as safetensors (no pickle), metadata alongside in its header."""
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    # One JSON string: safetensors writes separate metadata keys in hash order, which would
    # make identical captures differ byte-wise.
    metadata = {
        "path": capture.path,
        "case_id": capture.case_id,
        "prefill_chunks": list(capture.prefill_chunks),
        "dtypes": dict(capture.dtypes),
        "layer_tree": capture.layer_tree,
        "provenance": dict(capture.provenance),
        "prompt_text": capture.prompt_text,
        "tokens": list(capture.tokens),
    }
    if capture.digests or capture.recording:  # a replayed recording (harness.golden)
        from .digests import digest_json

        metadata |= {
            "digests": {k: digest_json(d) for k, d in capture.digests.items()},
            "recording": capture.recording,
            "environment": dict(capture.environment),
        }
    tensors = {k: np.ascontiguousarray(v) for k, v in capture.arrays.items()}
    save_file(tensors, str(path), metadata={"mlx_parity": json.dumps(metadata, sort_keys=True)})


def load_capture(path: Path) -> Capture:
    from safetensors import safe_open

    from .digests import digest_from_json

    with safe_open(str(path), framework="numpy") as handle:
        metadata = json.loads(handle.metadata()["mlx_parity"])
        arrays = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    return Capture(
        path=metadata["path"],
        case_id=metadata["case_id"],
        arrays=arrays,
        dtypes=metadata["dtypes"],
        prefill_chunks=tuple(metadata["prefill_chunks"]),
        provenance=metadata["provenance"],
        layer_tree=metadata["layer_tree"],
        prompt_text=metadata.get("prompt_text", ""),
        tokens=tuple(metadata.get("tokens", ())),
        digests={k: digest_from_json(d) for k, d in metadata.get("digests", {}).items()},
        recording=metadata.get("recording", ""),
        environment=metadata.get("environment", {}),
    )
