"""Shared fixtures. Checkpoints are synthesized into a per-session cache, so the suite
starts from nothing exactly as a fresh clone does; heavy runs are session-scoped."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CASES = ROOT / "cases"

os.environ["HF_HUB_OFFLINE"] = "1"

# Test-only add-ons and paths (tests/mutants.py, crashers.py, logit_paths.py) are code
# outside the harness: like any such code, a run imports them only when allowed.
TEST_MODULES = ("mutants", "crashers", "logit_paths")
ALLOW_TEST_MODULES = [arg for m in TEST_MODULES for arg in ("--allow-import", m)]


@pytest.fixture(scope="session", autouse=True)
def synth_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("mlx-parity-cache")
    os.environ["MLX_PARITY_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def shipped_run(synth_cache: Path):
    """Every shipped case, run once for the whole session."""
    from harness.runner import run

    return run([CASES])


def verdict_of(run, case_id: str):
    matches = [v for v in run.verdicts if v.case_id == case_id]
    assert len(matches) == 1, f"{case_id}: {len(matches)} verdicts"
    return matches[0]


def run_cli(*args: object, pythonpath: Path) -> subprocess.CompletedProcess:
    """`python -m harness ...` in a fresh process, with `pythonpath` importable."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    return subprocess.run(
        [sys.executable, "-m", "harness", *map(str, args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
