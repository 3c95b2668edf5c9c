"""Capture hooks live on the loaded instance only and vanish afterwards; the add-on's
patch changes nothing without images; bidirectional image prompts run in one pass
whatever the step."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import CASES

from harness.cases import PathPair, load_case
from harness.models import resolve_model
from harness.paths import SessionOptions
from harness.paths.native import NativeSession
from harness.paths.unified import PlainTextSession, UnifiedSession
from harness.records import Status
from harness.runner import run_cases


@pytest.fixture(scope="module")
def image_case():
    return load_case(CASES / "gemma4_one_image.yaml")


def _assert_clean(model):
    decoder = model.language_model.model
    assert type(model.layers[0]).__name__ == "DecoderLayer"
    assert not {"project_per_layer_inputs", "_project_per_layer_inputs"} & set(vars(decoder))


@pytest.mark.parametrize("session_class", [NativeSession, UnifiedSession])
def test_hooks_are_removed_and_repeat_captures_are_identical(session_class, image_case):
    session = session_class(resolve_model(image_case), SessionOptions(addon="gemma4"))
    try:
        first = session.capture(image_case)
        _assert_clean(session.model)
        second = session.capture(image_case)
        _assert_clean(session.model)
    finally:
        session.close()
    assert first.arrays.keys() == second.arrays.keys()
    for stage in first.arrays:
        np.testing.assert_array_equal(first.arrays[stage], second.arrays[stage])


def test_patch_is_scoped_to_the_instance(image_case):
    from mlx_lm.models import gemma4_text

    unified = UnifiedSession(resolve_model(image_case), SessionOptions(addon="gemma4"))
    plain = PlainTextSession(resolve_model(image_case), SessionOptions())
    try:
        assert type(unified.model.language_model.model).__name__ == "UnifiedGemma4TextModel"
        assert type(plain.model.language_model.model) is gemma4_text.Gemma4TextModel
        assert gemma4_text.Gemma4TextModel.__call__.__qualname__ == "Gemma4TextModel.__call__"
    finally:
        unified.close()
        plain.close()


def test_plain_mlx_lm_path_refuses_images(image_case):
    case = image_case.model_copy(
        update={"id": "plain-with-image", "paths": PathPair(candidate="mlx-lm")}
    )
    (v,) = run_cases([case]).verdicts
    assert v.status is Status.ERROR and "takes text prompts only" in v.reason


def test_bidirectional_chunk_splitting_an_image_runs_in_one_pass():
    # Native mlx-vlm turns chunked prefill off for bidirectional image prompts; the
    # add-on follows it whatever step mlx-lm's loop asks for.
    base = load_case(CASES / "gemma4_bidirectional.yaml")
    case = base.model_copy(update={"id": "bidi-split", "prefill_step_size": 32})
    (v,) = run_cases([case]).verdicts
    assert v.status is Status.PASS, v.reason
    chunks = v.provenance["candidate_prefill_chunks"]
    assert chunks == v.provenance["reference_prefill_chunks"] and "," not in chunks


def test_capture_records_the_prompt_only(image_case):
    session = UnifiedSession(resolve_model(image_case), SessionOptions(addon="gemma4"))
    try:
        capture = session.capture(image_case)
    finally:
        session.close()
    n = capture.arrays["input_ids"].shape[0]
    assert capture.arrays["embeddings"].shape[0] == n
    assert capture.arrays["per_layer_inputs"].shape[:2] == (n, 4)
    assert sum(capture.prefill_chunks) == n and capture.prefill_chunks[-1] == 1
    assert capture.dtypes["embeddings"] == "bfloat16"
    assert capture.arrays["logits"].shape == (512,)


def test_probes_do_not_change_results(image_case):
    """Logits with every layer probed == logits with probes off == a bare generate_step."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step

    from harness.capture import FirstLogits

    logits = {}
    for probed in (True, False):
        options = SessionOptions(addon="gemma4", layer_probes=probed)
        session = UnifiedSession(resolve_model(image_case), options)
        try:
            capture = session.capture(image_case)
            if not probed:
                assert not [k for k in capture.arrays if k.startswith("layer_")]
                prompt = mx.array(session.prompt_tokens(session.render_prompt(image_case)))
                ids, embeddings = session.embeddings(image_case, prompt)
                bare = FirstLogits()
                steps = generate_step(
                    ids,
                    session.model,
                    max_tokens=1,
                    input_embeddings=embeddings,
                    logits_processors=[bare],
                )
                next(steps)
                steps.close()
                logits["bare"] = np.array(bare.logits.astype(mx.float32)).ravel()
        finally:
            session.close()
        logits[probed] = capture.arrays["logits"]
    np.testing.assert_array_equal(logits[True], logits[False])
    np.testing.assert_array_equal(logits[True], logits["bare"])


def test_unmatched_layer_trees_are_named_and_the_rest_still_compares(image_case):
    from harness.compare import compare
    from harness.records import Capture

    def capture(path, n_layers, tree):
        arrays = {
            "input_ids": np.arange(4),
            "embeddings": np.ones((4, 8), np.float32),
            "logits": np.linspace(0, 1, 16, dtype=np.float32),
        }
        arrays |= {f"layer_outputs.{i}": np.ones((4, 8), np.float32) for i in range(n_layers)}
        return Capture(path, "c", arrays, {}, (4,), layer_tree=tree)

    results = compare(
        image_case,
        capture("mlx-vlm", 4, "vlm.Layer x 4 (model.layers)"),
        capture("unified", 3, "lm.Layer x 3 (model.layers)"),
    )
    (mismatch,) = [r for r in results if r.stage == "layers"]
    assert not mismatch.passed and not mismatch.gating
    assert "vlm.Layer x 4" in mismatch.detail and "lm.Layer x 3" in mismatch.detail
    assert {r.stage for r in results} >= {"input_ids", "embeddings", "logits"}
    assert all(r.passed for r in results if r.stage != "layers")


def test_kept_tensors_round_trip(tmp_path, image_case):
    from harness.capture import load_capture, save_capture

    session = NativeSession(resolve_model(image_case), SessionOptions())
    try:
        capture = session.capture(image_case)
    finally:
        session.close()
    save_capture(capture, tmp_path / "c.safetensors")
    loaded = load_capture(tmp_path / "c.safetensors")
    assert loaded.arrays.keys() == capture.arrays.keys()
    for key in capture.arrays:
        np.testing.assert_array_equal(loaded.arrays[key], capture.arrays[key])
    assert loaded.dtypes == capture.dtypes and loaded.prefill_chunks == capture.prefill_chunks
    assert loaded.provenance == capture.provenance
