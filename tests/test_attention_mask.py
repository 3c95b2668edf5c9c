"""The `attention_mask` stage: every form of mask the libraries pass to a decoder layer is
normalized to one "may attend" grid per layer type, so a mask bug is named
`attention_mask`, never blamed on a later layer. Also the layer-0 perturbation hook (for
noise envelopes) and the decoded tokens of a capture."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest
from conftest import CASES, TEST_MODULES

from harness.capture import MAX_DECODED_TOKENS, decoded_tokens, load_capture, save_capture
from harness.cases import load_case
from harness.models import resolve_model
from harness.paths import SessionOptions
from harness.paths.native import NativeSession
from harness.paths.unified import PlainTextSession, UnifiedSession
from harness.policy import ImportPolicy
from harness.probes._masks import (
    MaskCall,
    allowed,
    cache_width,
    key_width,
    layer_types,
    prompt_grid,
)
from harness.records import Status, stage_rank
from harness.runner import RunOptions, run_cases


def _causal(n: int, window: int | None = None) -> np.ndarray:
    q, k = np.arange(n)[:, None], np.arange(n)[None, :]
    return (k <= q) & (q - k < window) if window else k <= q


# --- normalization, on synthetic inputs -----------------------------------------------------


def test_causal_string_is_lower_right_aligned():
    # 2 queries at positions 3, 4 over 5 keys 0..4 (a chunk after 3 cached rows).
    expected = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=bool)
    np.testing.assert_array_equal(allowed("causal", 2, 5), expected)
    np.testing.assert_array_equal(allowed("causal", 4, 4), _causal(4))


def test_no_mask_attends_every_key():
    np.testing.assert_array_equal(allowed(None, 1, 7), np.ones((1, 7), bool))
    np.testing.assert_array_equal(allowed(None, 3, 3), np.ones((3, 3), bool))


def test_boolean_arrays_of_any_rank():
    from mlx_lm.models.base import create_causal_mask

    mask = create_causal_mask(3, offset=2, window_size=3)  # [3, 5]
    expected = np.array(mask)
    np.testing.assert_array_equal(allowed(mask, 3, 5), expected)
    np.testing.assert_array_equal(allowed(mask[None, None], 3, 5), expected)  # [B, H, N, W]
    np.testing.assert_array_equal(allowed(mx.array([True, False, True]), 1, 3), [[1, 0, 1]])
    with pytest.raises(ValueError, match="key columns"):
        allowed(mask, 3, 6)


@pytest.mark.parametrize("masked", [float("-inf"), -1e9, -65504.0, "min"])
@pytest.mark.parametrize("dtype", [mx.float32, mx.bfloat16, mx.float16])
def test_additive_arrays(masked, dtype):
    keep = mx.array(_causal(4))
    fill = mx.array(mx.finfo(dtype).min, dtype) if masked == "min" else mx.array(masked, dtype)
    additive = mx.where(keep, mx.array(0.0, dtype), fill).astype(dtype)
    np.testing.assert_array_equal(allowed(additive, 4, 4), _causal(4))
    # A bias that is not a mask value (ALiBi-like) still attends.
    biased = mx.where(keep, mx.array(-3.5, dtype), fill).astype(dtype)
    np.testing.assert_array_equal(allowed(biased, 4, 4), _causal(4))


def test_rotating_cache_width_and_grid():
    """A rotating window-4 cache prefilled in chunks of 3: attention sees at most 3 old keys
    plus the chunk (mlx-lm's make_mask numbers them from min(max_size - 1, offset)), and
    the last token alone sees the cache's last 4 positions with no mask at all."""
    from mlx_lm.models.cache import KVCache, RotatingKVCache

    window, chunks = 4, (3, 3, 3, 1)
    rotating, plain = RotatingKVCache(max_size=window), KVCache()
    calls, plain_widths, end = [], [], 0
    for index, n in enumerate(chunks):
        keys = mx.zeros((1, 1, n, 2))
        mask = rotating.make_mask(n, window_size=window)
        rotating.update_and_fetch(keys, keys)
        plain.update_and_fetch(keys, keys)
        end += n
        calls.append(MaskCall(index, end, n, key_width(mask, rotating, end), mask))
        plain_widths.append(cache_width(plain, end))
    assert [c.width for c in calls] == [3, 6, 6, 4]
    assert plain_widths == [3, 6, 9, 10]
    assert calls[-1].mask is None
    np.testing.assert_array_equal(prompt_grid(calls, len(chunks), 10), _causal(10, window))
    # Without the width, "no mask" on the last token would claim every earlier position.
    grid = prompt_grid([*calls[:-1], MaskCall(3, 10, 1, 10, None)], 4, 10)
    assert grid[9].all()


def test_grid_checks_its_calls():
    calls = [MaskCall(0, 3, 3, 3, "causal")]
    np.testing.assert_array_equal(prompt_grid(calls, 1, 3), _causal(3))
    with pytest.raises(RuntimeError, match="expected 2"):
        prompt_grid(calls, 2, 3)
    with pytest.raises(RuntimeError, match="does not fit"):
        prompt_grid([MaskCall(0, 3, 3, 4, "causal")], 1, 3)


def test_layer_types_fall_back_to_one_type():
    class Layer:
        pass

    class Typed:
        layer_type = "sliding_attention"

    assert layer_types(object(), [Layer(), Layer()]) == ["full", "full"]
    assert layer_types(object(), [Typed()]) == ["sliding_attention"]


# --- real captures ---------------------------------------------------------------------------


def _case(name: str, **update):
    case = load_case(CASES / f"{name}.yaml")
    return case.model_copy(update={"id": f"{name}-mask", **update}) if update else case


def _capture(session_class, case, layer_probes=True, **attributes):
    options = SessionOptions(addon="gemma4", layer_probes=layer_probes)
    session = session_class(resolve_model(case), options)
    for name, value in attributes.items():
        setattr(session, name, value)
    try:
        return session.capture(case)
    finally:
        session.close()


def _grids(capture):
    types = capture.provenance["attention_mask_types"].split(",")
    stacked = capture.arrays["attention_mask"]
    assert stacked.dtype == np.uint8 and stacked.shape[1] == len(types)
    for index, kind in enumerate(types):
        np.testing.assert_array_equal(capture.arrays[f"attention_mask.{kind}"], stacked[:, index])
    return {kind: stacked[:, index].astype(bool) for index, kind in enumerate(types)}


@pytest.mark.parametrize("layer_probes", [True, False])
def test_text_prompt_masks_are_equal_and_causal(layer_probes):
    case = _case("gemma4_text")
    grids = [
        _grids(_capture(cls, case, layer_probes))
        for cls in (NativeSession, UnifiedSession, PlainTextSession)
    ]
    n = grids[0]["full_attention"].shape[0]
    for grid in grids:
        assert sorted(grid) == ["full_attention", "sliding_attention"]
        np.testing.assert_array_equal(grid["full_attention"], _causal(n))
        np.testing.assert_array_equal(grid["sliding_attention"], _causal(n))  # window 512


def test_sliding_window_past_the_window_is_a_band():
    """Window 8, chunks of 5: rotating caches past the window, arrays from both libraries
    and "causal" for full attention after a prefix."""
    case = _case("gemma4_sliding_window_text", prefill_step_size=5)
    model = case.model.model_copy(update={"options": {**case.model.options, "sliding_window": 8}})
    case = case.model_copy(update={"model": model})
    for cls in (NativeSession, UnifiedSession):
        capture = _capture(cls, case)
        assert capture.prefill_chunks[:2] == (5, 5)
        grid = _grids(capture)
        n = grid["full_attention"].shape[0]
        np.testing.assert_array_equal(grid["full_attention"], _causal(n))
        np.testing.assert_array_equal(grid["sliding_attention"], _causal(n, 8))


def test_bidirectional_image_blocks_attend_both_ways():
    from harness.paths.loading import image_token_id_of

    case = _case("gemma4_bidirectional")
    capture = _capture(NativeSession, case)
    image = capture.arrays["input_ids"] == image_token_id_of(resolve_model(case))
    for kind, mask in _grids(capture).items():
        q, k = np.nonzero(np.triu(mask, 1))
        assert q.size, kind
        assert image[q].all() and image[k].all(), kind  # only image tokens look ahead


@pytest.fixture(scope="module")
def causal_vision_run():
    base = _case("gemma4_bidirectional")
    cases = [
        base.model_copy(
            update={
                "id": f"bidi--CausalVision--{profile}",
                "addon": "mutants:CausalVision",
                "profile": profile,
            }
        )
        for profile in ("exact", "image")
    ]
    cases.append(base.model_copy(update={"id": "bidi--control"}))
    return run_cases(cases, options=RunOptions(imports=ImportPolicy(TEST_MODULES)))


@pytest.mark.parametrize("profile", ["exact", "image"])
def test_causal_vision_mutant_is_named_attention_mask(causal_vision_run, profile):
    (v,) = [v for v in causal_vision_run.verdicts if v.case_id.endswith(f"CausalVision--{profile}")]
    assert v.status is Status.FAIL, v.reason
    assert v.first_divergence == "attention_mask"
    (mask,) = [c for c in v.checks if c.stage == "attention_mask"]
    assert not mask.passed and mask.gating and "elements differ" in mask.detail
    earlier = [c for c in v.checks if stage_rank(c.stage) < stage_rank("attention_mask")]
    assert {c.stage for c in earlier} >= {"input_ids", "embeddings"}
    assert all(c.passed for c in earlier)


def test_correct_addon_passes_the_mask_stage(causal_vision_run):
    (v,) = [v for v in causal_vision_run.verdicts if v.case_id == "bidi--control"]
    assert v.status is Status.PASS, v.reason
    (mask,) = [c for c in v.checks if c.stage == "attention_mask"]
    assert mask.passed and mask.value == 0.0
    assert v.provenance["attention_mask_types"] == "full_attention,sliding_attention"


# --- layer-0 perturbation hook ---------------------------------------------------------------


def _assert_identical(a, b):
    assert a.arrays.keys() == b.arrays.keys()
    for key in a.arrays:
        np.testing.assert_array_equal(a.arrays[key], b.arrays[key], err_msg=key)


@pytest.mark.parametrize("session_class", [NativeSession, UnifiedSession])
def test_zero_perturbation_changes_nothing(session_class):
    case = _case("gemma4_split_prefill")
    offsets = []

    def zero(x, offset):
        offsets.append(offset)
        return x + 0

    plain = _capture(session_class, case)
    perturbed = _capture(session_class, case, perturb_embeddings=zero)
    _assert_identical(plain, perturbed)
    chunks = perturbed.prefill_chunks
    assert offsets[: len(chunks)] == list(np.cumsum((0, *chunks[:-1])))


@pytest.mark.parametrize("session_class", [NativeSession, UnifiedSession])
def test_perturbing_one_row_changes_that_row_and_the_logits(session_class):
    case = _case("gemma4_split_prefill")  # chunks of 16: row 20 is in the second call
    row = 20

    def nudge(x, offset):
        local = row - offset
        if 0 <= local < x.shape[1]:
            return x.at[:, local].add(mx.array(1e-2, x.dtype))
        return x

    plain = _capture(session_class, case)
    perturbed = _capture(session_class, case, perturb_embeddings=nudge)
    changed = np.flatnonzero(
        (plain.arrays["embeddings"] != perturbed.arrays["embeddings"]).any(axis=1)
    )
    assert changed.tolist() == [row]
    assert not np.array_equal(plain.arrays["logits"], perturbed.arrays["logits"])
    np.testing.assert_array_equal(plain.arrays["input_ids"], perturbed.arrays["input_ids"])
    np.testing.assert_array_equal(
        plain.arrays["attention_mask"], perturbed.arrays["attention_mask"]
    )


# --- decoded tokens --------------------------------------------------------------------------


class _Tokenizer:
    def decode(self, ids):
        return f"<{ids[0]}>"


def test_decoded_tokens_are_capped():
    ids = mx.arange(MAX_DECODED_TOKENS + 10)
    tokens = decoded_tokens(_Tokenizer(), ids)
    assert len(tokens) == MAX_DECODED_TOKENS and tokens[:2] == ("<0>", "<1>")
    assert decoded_tokens(None, ids) == ()


def test_capture_keeps_prompt_and_tokens_through_save(tmp_path):
    capture = _capture(UnifiedSession, _case("gemma4_text"))
    assert len(capture.tokens) == capture.arrays["input_ids"].size
    assert capture.prompt_text and capture.tokens[0] in capture.prompt_text
    save_capture(capture, tmp_path / "c.safetensors")
    loaded = load_capture(tmp_path / "c.safetensors")
    assert loaded.tokens == capture.tokens and loaded.prompt_text == capture.prompt_text
    np.testing.assert_array_equal(loaded.arrays["attention_mask"], capture.arrays["attention_mask"])
