"""The checkpoint synthesizer: deterministic, cached, validated."""

from __future__ import annotations

import os

import pytest
from pydantic import ValidationError

from harness.synth import COMPLETE_MARKER, UnknownSynthesizerError, ensure_checkpoint


def _files(directory):
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def test_same_spec_and_seed_give_byte_identical_checkpoints(tmp_path, monkeypatch):
    builds = []
    for name in ("a", "b"):
        monkeypatch.setenv("MLX_PARITY_CACHE", str(tmp_path / name))
        builds.append(ensure_checkpoint("gemma4", {"hidden_size": 48, "quantize_bits": 4}))
    first, second = (_files(b) for b in builds)
    assert first.keys() == second.keys() and "model.safetensors" in first
    assert first == second


def test_cache_is_reused_and_keyed_by_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_PARITY_CACHE", str(tmp_path))
    path = ensure_checkpoint("gemma4", {})
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert ensure_checkpoint("gemma4", {}) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    assert (path / COMPLETE_MARKER).exists()
    other = ensure_checkpoint("gemma4", {"seed": 1})
    assert other != path
    assert _files(other)["model.safetensors"] != _files(path)["model.safetensors"]
    assert not [p for p in os.listdir(tmp_path / "synth") if p.startswith(".")]


def test_unknown_options_and_bad_values_are_rejected():
    with pytest.raises(ValidationError, match="hidden"):
        ensure_checkpoint("gemma4", {"hiddensize": 64})
    with pytest.raises(ValidationError, match="quantize_bits"):
        ensure_checkpoint("gemma4", {"quantize_bits": 3})


def test_unknown_architecture_names_the_missing_file():
    with pytest.raises(UnknownSynthesizerError, match="harness/architectures/llama9/synth.py"):
        ensure_checkpoint("llama9", {})


def test_checkpoint_loads_in_both_libraries_with_the_expected_shapes():
    import mlx_lm
    import mlx_vlm

    path = ensure_checkpoint("gemma4", {"hidden_size": 48, "per_layer_input_size": 0})
    text_model, tokenizer = mlx_lm.load(str(path))
    vlm_model, processor = mlx_vlm.load(str(path))
    assert text_model.language_model.model.embed_tokens.weight.shape == (512, 48)
    assert not text_model.language_model.model.hidden_size_per_layer_input
    assert processor.image_token_id == vlm_model.config.image_token_id
    assert len(tokenizer.encode("<|image|>", add_special_tokens=False)) == 1


# --- the warm builder behind a run's cache misses -------------------------------------------


def test_a_warm_builder_builds_the_bytes_a_fresh_one_builds(tmp_path, monkeypatch):
    """Builds of a run share one builder process (its imports paid once): a checkpoint
    built after other architectures' builds there is byte-identical to one built by a
    fresh builder, and the builder is reused."""
    import harness.synth as synth

    synth._drop_builder()
    wanted = ("llava", {"seed": 3, "quantize_bits": 4})
    monkeypatch.setenv("MLX_PARITY_CACHE", str(tmp_path / "fresh"))
    fresh = synth.ensure_checkpoint_within(*wanted, timeout=600)
    pid = synth._builder[0].pid
    monkeypatch.setenv("MLX_PARITY_CACHE", str(tmp_path / "warm"))
    for other in (("gemma3", {"seed": 5}), ("qwen3_vl", {}), ("llava", {"seed": 4})):
        synth.ensure_checkpoint_within(*other, timeout=600)
    warm = synth.ensure_checkpoint_within(*wanted, timeout=600)
    assert synth._builder[0].pid == pid
    assert warm.parent == tmp_path / "warm" / "synth"  # the cache the parent names now
    assert _files(fresh) == _files(warm) and "model.safetensors" in _files(warm)


def test_a_build_over_its_timeout_costs_only_that_build(tmp_path, monkeypatch):
    import harness.synth as synth

    monkeypatch.setenv("MLX_PARITY_CACHE", str(tmp_path))
    with pytest.raises(synth.SynthesisTimeout, match="longer than 0.01 s"):
        synth.ensure_checkpoint_within("gemma3", {"seed": 7}, timeout=0.01)
    assert synth._builder is None  # stopped mid-build: never handed another build
    path = synth.ensure_checkpoint_within("gemma3", {"seed": 7}, timeout=600)
    assert (path / COMPLETE_MARKER).exists()
