"""Batching: a request generated in a batch with another request (mlx-lm's
`batch_generate`, left-padded prompts in one forward pass) must generate the same tokens
as alone; the selected tokens' log-probabilities may move by the case's stated tolerance
(batched shapes change floating-point reduction order).

mlx-lm's batch generator takes token prompts only: the check runs on paths that generate
from tokens (mlx-lm, and the unified path on text prompts). mlx-vlm 0.7.10 has no batch
generator in its public API: on that path the check reports that it cannot run."""

from __future__ import annotations

import numpy as np

from .cases import CaseSpec, Message
from .records import Capture, CheckResult

STAGE = "batch"
# The other request of the batch: a prompt of another length than most cases', so that
# one of the two is left-padded.
COMPANION = "Write three short sentences about the sea, the wind and the harbour at night."


def batched_capture(session, case: CaseSpec) -> Capture:
    from mlx_lm.generate import batch_generate

    from .paths import PathError

    if case.has_images or not callable(getattr(session, "prompt_tokens", None)):
        raise PathError(f"path {session.name!r} cannot batch this request (token prompts only)")
    own = session.prompt_tokens(session.render_prompt(case))
    companion = Message.model_validate({"role": "user", "content": COMPANION})
    other_case = case.model_copy(update={"messages": [companion]})
    other = session.prompt_tokens(session.render_prompt(other_case))
    clear = getattr(session.addon, "clear_prediction_state", None)
    if callable(clear):
        clear(session.model)
    out = batch_generate(
        session.model,
        session.tokenizer,
        [own, other],
        max_tokens=case.decode_steps + 1,
        return_token_ids=True,
        return_logprobs=True,
        prefill_step_size=case.prefill_step_size,
    )
    arrays = {
        "tokens": np.array(out.token_ids[0], dtype=np.int32),
        "selected_logprobs": np.array(out.logprobs[0], dtype=np.float32),
    }
    provenance = {"batch_sizes": f"{len(own)},{len(other)}"}
    return Capture(session.name, case.id, arrays, {}, (), provenance=provenance)


def _selected_logprobs(capture: Capture, tokens: np.ndarray) -> np.ndarray:
    steps = ["logits", *(f"decode.{k}" for k in range(1, len(tokens)))]
    values = []
    for stage, token in zip(steps, tokens, strict=False):
        logits = capture.arrays[stage].astype(np.float64)
        top = logits.max()
        values.append(logits[token] - top - np.log(np.exp(logits - top).sum()))
    return np.array(values)


def check(case_id: str, alone: Capture, batched: Capture, tolerance: float) -> CheckResult:
    ids, own = batched.arrays["tokens"], alone.arrays.get("tokens")
    sizes = batched.provenance.get("batch_sizes", "")
    if own is None or not np.array_equal(ids, own[: len(ids)]) or len(ids) != len(own):
        return CheckResult(
            case_id, STAGE, "exact", "tokens_differ", 1.0, 0.0, False, float("nan"),
            f"batched with a {sizes.split(',')[-1]}-token prompt: generated "
            f"{ids.tolist()}, alone {None if own is None else own.tolist()}",
        )  # fmt: skip
    diff = np.abs(_selected_logprobs(alone, ids) - batched.arrays["selected_logprobs"])
    value = float(diff.max()) if diff.size else 0.0
    passed = bool(np.isfinite(value) and value <= tolerance)
    return CheckResult(
        case_id, STAGE, "allclose", "selected_logprob_max_abs_diff", value, tolerance,
        passed, value if np.isfinite(value) else float("nan"),
        f"tokens equal batched with a {sizes.split(',')[-1]}-token prompt (prompt lengths "
        f"{sizes}); selected-token logprobs within {tolerance:g}",
    )  # fmt: skip
