"""pytest-benchmark plugin glue only: provenance on every saved result. The measuring
logic lives in harness/bench.py."""

from __future__ import annotations

from pathlib import Path

from harness import provenance

ROOT = Path(__file__).resolve().parents[1]


def pytest_benchmark_update_json(config, benchmarks, output_json):
    output_json["mlx_parity"] = {
        "commit": provenance.git_commit(),
        **provenance.machine(),
        **{f"version_{k}": v for k, v in provenance.library_versions().items()},
    }
