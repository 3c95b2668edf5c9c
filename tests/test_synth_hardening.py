"""Safe on an untrusted pull request, honest exits: killed builds leave no staging behind,
corrupt safetensors headers get a named error, a missing local checkpoint is a config
error, synthesizer options that cannot build are refused naming the option, and a
non-finite capture is one report row per (stage, metric)."""

from __future__ import annotations

import json
import math
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from harness import synth
from harness.architectures.gemma4.spec import MIN_VOCAB, SUPPORTED_SOFT_TOKENS, Spec
from harness.cases import CaseError, load_cases
from harness.compare import compare, verdict
from harness.models import CheckpointError, resolve_model, validate_checkpoint
from harness.records import Capture, Status
from harness.synth import SynthesisError, cache_root, ensure_checkpoint, remove_stale_staging

# -- 1. staging directories of killed builds ------------------------------------------------


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _staging(root: Path, pid: int, builder: str | None = None, target: str = "") -> Path:
    target = target or "gemma4-0123456789abcdef"
    builder = builder or synth._builder_id()
    path = root / f".{target}.{builder}.{pid}.abc_123"
    path.mkdir(parents=True)
    (path / "model.safetensors").write_bytes(b"half written")
    return path


def test_a_dead_builders_staging_is_removed_and_a_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_PARITY_CACHE", str(tmp_path))
    root = cache_root()
    dead = _staging(root, _dead_pid())
    live = _staging(root, os.getpid(), target="gemma4-fedcba9876543210")
    ensure_checkpoint("gemma4", {"seed": 7})  # a build cleans up first
    assert not dead.exists()
    assert live.exists() and (live / "model.safetensors").exists()


def test_unverifiable_staging_is_removed_only_when_old(tmp_path):
    other_host = _staging(tmp_path, 1, builder="00000000")  # pid 1 elsewhere: unknowable
    legacy = tmp_path / ".gemma4-0123456789abcdef-k3j4h5"  # the old mkdtemp layout
    legacy.mkdir()
    unrelated = tmp_path / ".not-a-staging-dir"
    unrelated.mkdir()
    assert remove_stale_staging(tmp_path) == []
    old = 3 * synth.STALE_AFTER_SECONDS
    for path in (other_host, other_host / "model.safetensors", legacy, unrelated):
        os.utime(path, (os.path.getmtime(path) - old,) * 2)
    assert sorted(remove_stale_staging(tmp_path)) == sorted([other_host, legacy])
    assert unrelated.exists()


def test_a_build_stages_under_its_own_pid(tmp_path, monkeypatch):
    """The name carries what the next build needs to tell live from dead."""
    monkeypatch.setenv("MLX_PARITY_CACHE", str(tmp_path))
    seen = []
    real_build = synth.synthesizer("gemma4").build

    def spy(spec, out):
        seen.append(synth._STAGING.match(out.name))
        assert not remove_stale_staging(out.parent)  # never our own, mid-build
        real_build(spec, out)

    monkeypatch.setattr(synth.synthesizer("gemma4"), "build", spy)
    ensure_checkpoint("gemma4", {"seed": 8})
    (match,) = seen
    assert match and int(match["pid"]) == os.getpid() and match["builder"] == synth._builder_id()
    assert not [p for p in os.listdir(tmp_path / "synth") if p.startswith(".")]


# -- 2. corrupt safetensors headers ---------------------------------------------------------


def _shard(directory: Path, header: object, data: bytes = b"\0" * 16, length: int | None = None):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text('{"model_type": "gemma4"}')
    blob = header if isinstance(header, bytes) else json.dumps(header).encode()
    size = len(blob) if length is None else length
    (directory / "model.safetensors").write_bytes(struct.pack("<Q", size) + blob + data)
    return directory


GOOD = {"w": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 16]}}
BAD_HEADERS = {
    "a list": ([1, 2], "not an object"),
    "a string": ("weights", "not an object"),
    "a number": (3, "not an object"),
    "non-dict entry": ({"w": [0, 16]}, "tensor 'w' is a JSON list"),
    "no data_offsets": ({"w": {"dtype": "F32", "shape": [4]}}, "has no data_offsets"),
    "no dtype": ({"w": {"shape": [4], "data_offsets": [0, 16]}}, "has no dtype"),
    "no shape": ({"w": {"dtype": "F32", "data_offsets": [0, 16]}}, "has no shape"),
    "offsets not a pair": (
        {"w": {"dtype": "F32", "shape": [4], "data_offsets": [16]}},
        "data_offsets",
    ),
    "offsets negative": (
        {"w": {"dtype": "F32", "shape": [0], "data_offsets": [-4, -4]}},
        "data_offsets",
    ),
    "offsets reversed": (
        {"w": {"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}},
        "data_offsets",
    ),
    "offsets not ints": (
        {"w": {"dtype": "F32", "shape": [4], "data_offsets": ["0", 16.0]}},
        "data_offsets",
    ),
    "offsets booleans": (
        {"w": {"dtype": "U8", "shape": [1], "data_offsets": [False, True]}},
        "data_offsets",
    ),
    "offsets past the end": (
        {"w": {"dtype": "F32", "shape": [400], "data_offsets": [0, 1600]}},
        "truncated",
    ),
    "shape not a list": ({"w": {"dtype": "F32", "shape": 4, "data_offsets": [0, 16]}}, "shape"),
    "negative dim": ({"w": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, "shape"),
    "dtype not a name": ({"w": {"dtype": 4, "shape": [4], "data_offsets": [0, 16]}}, "dtype"),
    "size disagrees with shape": (
        {"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}},
        "holds 16 bytes",
    ),
    "metadata not strings": ({"__metadata__": {"format": 1}, **GOOD}, "__metadata__"),
    "deeply nested": (b"[" * 100_000 + b"]" * 100_000, "corrupt header"),
    "not utf-8": (b"\xff\xfe{}", "corrupt header"),
}


@pytest.mark.parametrize("name", sorted(BAD_HEADERS))
def test_malformed_headers_get_a_named_error(tmp_path, name):
    header, fragment = BAD_HEADERS[name]
    with pytest.raises(CheckpointError, match="model.safetensors") as caught:
        validate_checkpoint(_shard(tmp_path / "ckpt", header))
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("length", [2**64 - 1, 2**63, 200_000_000])
def test_absurd_header_lengths_are_refused_without_reading(tmp_path, length):
    path = _shard(tmp_path / "ckpt", GOOD, length=length)
    if length < 2**40:  # a file that long (sparse): only the safetensors limit refuses it
        with (path / "model.safetensors").open("r+b") as handle:
            handle.truncate(8 + length + 16)
    with pytest.raises(CheckpointError, match="header") as caught:
        validate_checkpoint(path)
    assert str(length) in str(caught.value)


def test_a_good_header_passes(tmp_path):
    validate_checkpoint(_shard(tmp_path / "ckpt", {"__metadata__": {"format": "mlx"}, **GOOD}))


def test_a_directory_named_like_a_shard_is_a_named_error(tmp_path):
    path = _shard(tmp_path / "ckpt", GOOD)
    (path / "extra.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="extra.safetensors cannot be read"):
        validate_checkpoint(path)


# -- 3. a missing local checkpoint is a config error ----------------------------------------


def _case_file(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "case.yaml"
    path.write_text(
        textwrap.dedent(body) + "messages: [{role: user, content: Hello.}]\nprofile: exact\n"
    )
    return path


def test_a_missing_local_checkpoint_is_a_config_error(tmp_path):
    path = _case_file(tmp_path / "cases", "model: {path: ../nowhere}\n")
    (case,), errors = load_cases([path])
    assert not errors
    with pytest.raises(CaseError) as caught:
        resolve_model(case)
    assert caught.value.field == "model.path"
    assert "nowhere does not exist" in str(caught.value)


def test_a_missing_local_checkpoint_exits_two(tmp_path):
    path = _case_file(tmp_path / "cases", "model: {path: /no/such/checkpoint}\n")
    done = run_cli("run", path, "--report-dir", tmp_path / "report", pythonpath=ROOT)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "model.path" in done.stdout + done.stderr


# -- 4. synthesizer options that cannot build are refused, naming the option -----------------


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"kv_shared_layers": 3}, "kv_shared_layers"),  # was KeyError: 'full_attention'
        ({"kv_shared_layers": 4}, "kv_shared_layers"),  # every layer shared
        ({"soft_tokens": 40}, "soft_tokens"),  # was "missing preprocessor_config.json"
        ({"head_dim": 5}, "head_dim"),
        ({"global_head_dim": 12}, "global_head_dim"),  # mlx-lm and mlx-vlm logits differ
        ({"vision_head_dim": 6}, "vision_head_dim"),
        ({"vocab_size": MIN_VOCAB - 1}, "vocab_size"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**64}, "seed"),
        ({"logit_scale": math.inf}, "logit_scale"),
        ({"logit_scale": 1e6}, "logit_scale"),
        ({"preset": "e2b", "num_layers": 8}, "kv_shared_layers"),
    ],
)
def test_options_that_cannot_build_are_refused_naming_the_option(options, field):
    with pytest.raises(ValidationError) as caught:
        ensure_checkpoint("gemma4", options)
    assert caught.value.errors()[0]["loc"] == (field,)


def test_a_refused_option_is_a_case_error_naming_model_options(tmp_path):
    body = "model: {synth: gemma4, options: {hidden_size: 48, soft_tokens: 40}}\n"
    (case,), _ = load_cases([_case_file(tmp_path, body)])
    with pytest.raises(CaseError) as caught:
        resolve_model(case)
    assert caught.value.field == "model.options.soft_tokens"
    assert "70, 140, 280, 560, 1120" in caught.value.message


def test_supported_soft_tokens_are_the_processors():
    from mlx_vlm.models.gemma4 import processing_gemma4

    assert SUPPORTED_SOFT_TOKENS == processing_gemma4._SUPPORTED_SOFT_TOKENS


def test_a_failing_build_names_the_model_type_and_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_PARITY_CACHE", str(tmp_path))

    def broken(spec, out):
        raise KeyError("full_attention")

    monkeypatch.setattr(synth.synthesizer("gemma4"), "build", broken)
    with pytest.raises(SynthesisError) as caught:
        ensure_checkpoint("gemma4", {"hidden_size": 48})
    message = str(caught.value)
    assert "gemma4 synthesizer" in message and '"hidden_size": 48' in message
    assert "KeyError: 'full_attention'" in message
    assert not [p for p in os.listdir(tmp_path / "synth") if p.startswith(".")]


@pytest.mark.parametrize("name", ["tokenizer", "weights", "gemma4_spec"])
def test_helper_modules_are_not_synthesizers(name):
    with pytest.raises(synth.UnknownSynthesizerError):
        ensure_checkpoint(name, {})


def _any_int(top: int) -> st.SearchStrategy:
    return st.integers(-2, top)


# Small valid values per option (never the e2b preset: gigabytes), and anything else.
VALID = {
    "hidden_size": st.sampled_from([16, 17, 32, 48, 64]),
    "num_layers": st.integers(2, 5),
    "full_attention_every": st.integers(1, 5),
    "kv_shared_layers": st.integers(0, 3),
    "per_layer_input_size": st.sampled_from([0, 1, 8, 16]),
    "vocab_size": st.sampled_from([MIN_VOCAB, 400, 512]),
    "soft_tokens": st.sampled_from([70, 140]),
    "num_heads": st.integers(1, 3),
    "head_dim": st.sampled_from([2, 8, 16]),
    "global_head_dim": st.sampled_from([2, 8, 10, 16, 32]),
    "intermediate_size": st.sampled_from([1, 16, 64]),
    "vision_hidden_size": st.sampled_from([8, 16, 32]),
    "vision_layers": st.integers(1, 2),
    "vision_heads": st.integers(1, 2),
    "vision_head_dim": st.sampled_from([4, 8, 16]),
    "vision_intermediate_size": st.sampled_from([1, 16]),
    "vision_position_embeddings": st.sampled_from([16, 64]),
    "quantize_bits": st.sampled_from([None, 4, 8]),
    "sliding_window": st.sampled_from([1, 4, 512]),
    "bidirectional": st.sampled_from(["none", "vision"]),
    "dtype": st.sampled_from(["bfloat16", "float32", "float16"]),
    "logit_scale": st.sampled_from([0.5, 1.0, 4.0, 1000.0]),
    "seed": st.sampled_from([0, 1, 2**64 - 1]),
}
ANY = {
    **{name: _any_int(70) for name in VALID},
    "soft_tokens": st.sampled_from([0, 9, 40, 69, 71, 139, 1121]),
    "vocab_size": _any_int(MIN_VOCAB),
    "quantize_bits": st.sampled_from([0, 2, 3, 16, "4"]),
    "bidirectional": st.sampled_from(["both", "", None]),
    "dtype": st.sampled_from(["float64", "int8", "bf16"]),
    "logit_scale": st.sampled_from([0.0, -1.0, math.nan, math.inf, 1e4]),
    "seed": st.sampled_from([-1, 2**64, 1.5, "0"]),
    "preset": st.sampled_from(["huge", None, 3]),
    "hiddensize": st.just(64),
}
VALID_OPTIONS = st.fixed_dictionaries({}, optional=VALID)
OPTIONS = st.one_of(
    VALID_OPTIONS,
    st.tuples(VALID_OPTIONS, st.sampled_from(sorted(ANY)), st.data()).map(
        lambda t: {**t[0], t[1]: t[2].draw(ANY[t[1]])}
    ),
)
PROMPT = "Describe the picture in one sentence."
IMAGE = ROOT / "cases" / "images" / "red_square_400x300.png"


def _forward_both(path: Path) -> None:
    """Load with both libraries, run a text prompt through both language models (same
    logits: the parity gate compares them) and an image prompt through mlx-vlm."""
    import mlx.core as mx
    import mlx_lm
    import mlx_vlm
    from mlx_vlm.utils import prepare_inputs

    from harness.paths.loading import load_quietly

    text_model, tokenizer = load_quietly(mlx_lm.load, str(path))
    ids = mx.array([tokenizer.encode(PROMPT)])
    lm_logits = text_model(ids)
    vlm_model, processor = load_quietly(mlx_vlm.load, str(path))
    vlm_logits = vlm_model.language_model(inputs=ids).logits
    mx.eval(lm_logits, vlm_logits)
    assert bool(mx.all(mx.isfinite(lm_logits)).item())
    assert bool(mx.array_equal(lm_logits, vlm_logits).item())
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": PROMPT}]}]
    prompt = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    token = vlm_model.config.image_token_id
    inputs = prepare_inputs(
        processor, images=[str(IMAGE)], prompts=[prompt], image_token_index=token
    )
    input_ids = inputs.pop("input_ids")
    out = vlm_model(input_ids, inputs.pop("pixel_values"), inputs.pop("attention_mask"), **inputs)
    mx.eval(out.logits)
    assert bool(mx.all(mx.isfinite(out.logits)).item())
    assert int((input_ids == token).sum().item()) > 0


@pytest.mark.slow
@settings(max_examples=14, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(OPTIONS)
def test_random_options_are_refused_by_name_or_load_and_run_in_both_libraries(options):
    try:
        path = ensure_checkpoint("gemma4", options)
    except ValidationError as exc:
        for error in exc.errors():
            assert error["loc"] and (
                error["loc"][0] in Spec.model_fields or error["loc"][0] in options
            ), error
        return
    _forward_both(path)


# -- 5. one row per (case, stage, metric) ---------------------------------------------------

MANY_CHECKS = """
model: {synth: gemma4}
messages: [{role: user, content: Hello.}]
tolerances:
  input_ids: [{check: exact}, {check: allclose, atol: 0}]
  embeddings: [{check: exact}, {check: allclose, atol: 0.01}, {check: ulp, ulps: 1}]
  layers: [{check: stats}, {check: stats, max_abs: 1.0, gate: false}]
  logits: [{check: exact}, {check: allclose, atol: 0}, {check: topk, k: 3}, {check: kl}]
"""
STAGES = ("input_ids", "embeddings", "layer_outputs.0", "layer_per_layer_inputs.1", "logits")


def _capture(path: str, arrays: dict[str, np.ndarray]) -> Capture:
    return Capture(path, "case", arrays, dict.fromkeys(arrays, "float32"), (4,))


def _arrays(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"input_ids": np.arange(4), "embeddings": rng.normal(size=(4, 8))}
    for index in range(2):
        arrays[f"layer_outputs.{index}"] = rng.normal(size=(4, 8)).astype(np.float32)
        arrays[f"layer_per_layer_inputs.{index}"] = rng.normal(size=(4, 2)).astype(np.float32)
    arrays["logits"] = rng.normal(size=32).astype(np.float32)
    return arrays


@pytest.fixture(scope="module")
def many_checks_case(tmp_path_factory):
    path = tmp_path_factory.mktemp("unique") / "case.yaml"
    path.write_text(MANY_CHECKS)
    (case,), errors = load_cases([path])
    assert not errors
    return case


def _keys(results) -> list[tuple[str, str, str]]:
    return [(r.case_id, r.stage, r.metric) for r in results]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(STAGES), st.booleans(), st.sampled_from([np.nan, np.inf])),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, 3),
)
def test_non_finite_captures_give_one_row_per_stage_and_metric(many_checks_case, breaks, seed):
    reference, candidate = _arrays(seed), _arrays(seed)
    for stage, in_reference, value in breaks:
        side = reference if in_reference else candidate
        if stage == "input_ids":
            side[stage] = side[stage].astype(np.float64)
        side[stage] = side[stage].copy()
        side[stage].flat[seed] = value
    result = verdict(many_checks_case, _capture("ref", reference), _capture("test", candidate))
    keys = _keys(result.checks)
    assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)
    assert result.status is Status.FAIL
    broken = {"layer." + s.rsplit(".", 1)[1] if s.startswith("layer") else s for s, _, _ in breaks}
    for stage in broken:
        rows = [r for r in result.checks if r.stage == stage and "non_finite" in r.metric]
        assert rows and not any(r.passed for r in rows)


def test_checks_reporting_the_same_metric_keep_it_unique(many_checks_case):
    reference, candidate = _arrays(0), _arrays(0)
    candidate["logits"] = candidate["logits"] + 1e-3
    results = compare(many_checks_case, _capture("ref", reference), _capture("test", candidate))
    keys = _keys(results)
    assert len(keys) == len(set(keys))
    logits = {r.metric: r for r in results if r.stage == "logits"}
    # exact and allclose(atol=0) both report max_abs_diff: the second is numbered.
    assert logits["max_abs_diff"].check == "exact" and logits["max_abs_diff#2"].check == "allclose"
    layer = [r.metric for r in results if r.stage == "layer.0"]
    assert "max_abs_diff" in layer and "max_abs_diff#2" in layer
    assert "per_layer_input_max_abs_diff#2" in layer


def test_a_shape_mismatch_is_one_row_per_stage(many_checks_case):
    reference, candidate = _arrays(0), _arrays(0)
    candidate["logits"] = candidate["logits"][:-1]
    results = compare(many_checks_case, _capture("ref", reference), _capture("test", candidate))
    (shape,) = [r for r in results if r.stage == "logits"]
    assert (
        shape.metric == "shape" and not shape.passed and "(31,) vs reference (32,)" in shape.detail
    )
