"""`make bench`, every architecture and past the first token: per-architecture wall time
and peak RSS of its shipped cases and the overhead of one image case over its bare forward
passes; the cost of one decode step against bare greedy decoding (target <= 1.15x); the
cost of the session-state check and of a prompt-cache restore in plain captures. Logic
in harness/bench_arch.py."""

from __future__ import annotations

from conftest import ROOT
from test_overhead import _case

from harness.bench import harness_command, measure
from harness.bench_arch import architecture_suite, decode_suite, same_path_suite

STEP_TARGET = 1.15


def test_every_architecture(benchmark, tmp_path):
    results = architecture_suite(ROOT / "cases", tmp_path)
    for name, values in results.items():
        benchmark.extra_info.update({f"{name}.{k}": round(v, 3) for k, v in values.items()})
    benchmark.extra_info["parity_wall_s"] = sum(v["all_cases_wall_s"] for v in results.values())
    one = next(iter(results))
    benchmark.pedantic(measure, args=(harness_command([ROOT / "cases"], tmp_path / "all"),))
    assert len(results) >= 2, one


def test_decode_step_cost(benchmark, tmp_path):
    template = _case(tmp_path, {"logit_scale": 4.0})
    results = decode_suite(template, tmp_path, steps=32)
    benchmark.extra_info.update(results)
    benchmark.pedantic(measure, args=(harness_command([template], tmp_path / "r"),), rounds=1)
    assert results["step_ratio"] <= STEP_TARGET, results


def test_same_path_check_cost(benchmark, tmp_path):
    template = _case(tmp_path, {"logit_scale": 4.0})
    results = same_path_suite(template, tmp_path)
    benchmark.extra_info.update(results)
    benchmark.pedantic(measure, args=(harness_command([template], tmp_path / "r"),), rounds=1)
    # Three warm-up prompts and the second capture, no model reload: a few captures' worth;
    # the restore re-prefills the prompt in two parts: about one capture.
    assert results["session_state_in_captures"] < 8, results
    assert results["prompt_cache_in_captures"] < 2, results
