"""The stages Qwen VL models need, on hand-built layers and captures (no checkpoint):
`position_ids` records the rotary positions decoder layer 0 is really given (or the plain
RoPE's implicit ones), `deepstack.N` what is added between layer N and N+1 however a path
adds it; both rank in data-flow order and fail on deliberately broken inputs."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from harness.capture import between_layers
from harness.cases import CaseSpec
from harness.compare import verdict
from harness.probes import Recording, tap_layers
from harness.records import Capture, Status, stage_rank


class MRopeLayer:
    """A decoder layer that takes positions 4th, as mlx-vlm's Qwen VL layers do."""

    def __call__(self, x, mask=None, cache=None, position_ids=None, position_embeddings=None):
        return x + 1


class PlainLayer:
    """An mlx-lm layer: its RoPE offset comes from the cache; no positions argument."""

    def __call__(self, x, mask=None, cache=None):
        return x * 2


class Model:
    def __init__(self, layers):
        self.layers = layers


def _run(model, calls, **kwargs):
    recording = Recording(positions=True, between_layers=True)
    with tap_layers(model, recording):
        for x, extra in calls:
            h = x
            for layer in model.layers:
                h = layer(h, None, None, *extra, **kwargs)
                if layer is model.layers[0]:
                    h = h + 0.5  # an injection after layer 0 (DeepStack-like)
    return recording


def test_rank_follows_the_data_flow():
    order = ["input_ids", "position_ids", "embeddings", "layer.0", "deepstack.0", "layer.1"]
    order += ["deepstack.1", "layer.10", "logits"]
    assert sorted(reversed(order), key=stage_rank) == order


@pytest.mark.parametrize("rows", [(5,), (2, 3), (1, 1, 3)])
def test_explicit_positions_are_recorded_per_call_as_given(rows):
    model = Model([MRopeLayer(), MRopeLayer()])
    calls, start = [], 0
    for n in rows:
        positions = mx.stack([mx.arange(start, start + n) * k for k in (1, 2, 3)])[:, None]
        calls.append((mx.zeros((1, n, 4)), (positions,)))
        start += n
    recording = _run(model, calls)
    got = mx.concatenate(recording.calls["position_ids"], axis=1)[0]
    assert got.shape == (sum(rows), 3)
    assert np.array_equal(np.array(got[:, 2]), 3 * np.arange(sum(rows)))


def test_implicit_positions_follow_the_cache_offset():
    model = Model([PlainLayer(), PlainLayer()])
    recording = _run(model, [(mx.zeros((1, 2, 4)), ()), (mx.zeros((1, 3, 4)), ())])
    got = np.array(mx.concatenate(recording.calls["position_ids"], axis=1)[0])
    assert got.shape == (5, 1) and got[:, 0].tolist() == [0, 1, 2, 3, 4]


def test_between_layers_is_what_was_added_after_each_layer():
    model = Model([PlainLayer(), PlainLayer(), PlainLayer()])
    recording = _run(model, [(mx.ones((1, 3, 4)), ())])
    stages = {k: v[0][0] for k, v in recording.calls.items()}
    injected = between_layers(stages)
    assert injected == {
        "deepstack.0": 0,
        "deepstack.1": 1,
        "deepstack_scale.0": 0,
        "deepstack_scale.1": 1,
    }
    # Layer 0 doubles the ones (2.0), 0.5 is added: the hidden state around it is 2.5.
    assert np.all(np.array(stages["deepstack_scale.0"]) == 2.5)
    assert np.all(np.array(stages["deepstack.0"]) == 0.5)
    assert np.all(np.array(stages["deepstack.1"]) == 0.0)
    assert not any(k.startswith("layer_inputs") for k in stages)


def _capture(path, positions, deepstack, logits):
    arrays = {
        "input_ids": np.arange(4),
        "position_ids": positions,
        "embeddings": np.zeros((4, 2), np.float32),
        "layer_outputs.0": np.ones((4, 2), np.float32),
        "layer_outputs.1": np.ones((4, 2), np.float32),
        "deepstack.0": deepstack,
        "logits": logits,
    }
    dtypes = dict.fromkeys(arrays, "float32") | {"input_ids": "int32", "position_ids": "int32"}
    return Capture(path, "c", arrays, dtypes, (4,))


CASE = CaseSpec.model_validate(
    {
        "id": "c",
        "source": "t.yaml",
        "model": {"path": "/nonexistent"},
        "messages": [{"role": "user", "content": "hi"}],
    }
)
MROPE = np.array([[0, 0, 0], [1, 1, 1], [2, 2, 3], [4, 4, 4]])
TEXT = np.array([[0], [1], [2], [3]])
FEATURES = np.full((4, 2), 0.25, np.float32)
LOGITS = np.linspace(-3, 3, 32).astype(np.float32)


@pytest.mark.parametrize("profile", ["exact", "image"])
def test_equal_captures_pass_and_a_text_rope_matches_identical_sections(profile):
    case = CASE.model_copy(update={"profile": profile})
    ref = _capture("ref", np.repeat(TEXT, 3, axis=1), FEATURES, LOGITS)
    for positions in (TEXT, np.repeat(TEXT, 3, axis=1)):
        v = verdict(case, ref, _capture("cand", positions, FEATURES, LOGITS))
        assert v.status is Status.PASS and v.first_difference is None


@pytest.mark.parametrize("profile", ["exact", "image"])
@pytest.mark.parametrize(
    ("positions", "features", "stage"),
    [
        (TEXT, FEATURES, "position_ids"),  # M-RoPE positions lost: plain 1-D RoPE
        (MROPE[:, [0, 2, 1]], FEATURES, "position_ids"),  # sections swapped
        (MROPE, np.zeros_like(FEATURES), "deepstack.0"),  # DeepStack dropped
        (MROPE, FEATURES.astype(np.float64) * (1 + 1e-2), "deepstack.0"),
        (MROPE, np.full_like(FEATURES, np.nan), "deepstack.0"),
    ],
)
def test_broken_positions_or_injections_fail_at_their_stage(profile, positions, features, stage):
    case = CASE.model_copy(update={"profile": profile})
    ref = _capture("ref", MROPE, FEATURES, LOGITS)
    v = verdict(case, ref, _capture("cand", positions, features.astype(np.float32), LOGITS))
    assert v.status is Status.FAIL
    assert v.first_divergence == stage and v.first_failure == stage


def test_a_stage_one_path_lacks_fails_and_neither_having_it_adds_no_row():
    ref = _capture("ref", MROPE, FEATURES, LOGITS)
    cand = _capture("cand", MROPE, FEATURES, LOGITS)
    del cand.arrays["deepstack.0"]  # type: ignore[attr-defined]
    v = verdict(CASE, ref, cand)
    assert v.status is Status.FAIL and v.first_failure == "deepstack.0"
    for capture in (ref, cand):
        capture.arrays.pop("position_ids")  # type: ignore[attr-defined]
        capture.arrays.pop("deepstack.0", None)  # type: ignore[attr-defined]
    v = verdict(CASE, ref, cand)
    assert v.status is Status.PASS
    assert not {"position_ids", "deepstack"} & {c.stage.split(".")[0] for c in v.checks}
