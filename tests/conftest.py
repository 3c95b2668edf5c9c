"""Shared fixtures. Checkpoints are synthesized into a per-session cache, so the suite
starts from nothing exactly as a fresh clone does; heavy runs are session-scoped."""

from __future__ import annotations

import importlib.util
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


# The shipped cases of the architecture at the top of cases/ (Gemma 4). Every other
# architecture's folder cases/<model_type>/ is run by its own test module with its mutants.
TOP_LEVEL_CASES = sorted(p for p in CASES.glob("*.yaml") if not p.name.startswith("_"))


@pytest.fixture(scope="session", autouse=True)
def synth_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if os.environ.get("PYTEST_XDIST_WORKER"):
        # One cache for all xdist workers of the session (builds are atomic renames).
        cache = tmp_path_factory.getbasetemp().parent / "mlx-parity-cache"
        cache.mkdir(exist_ok=True)
    else:
        cache = tmp_path_factory.mktemp("mlx-parity-cache")
    os.environ["MLX_PARITY_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def shipped_run(synth_cache: Path):
    """The top-level shipped cases, run once for the whole session as `make parity` runs
    them (a worker process per model group)."""
    from harness.runner import run

    return run(TOP_LEVEL_CASES)


# xdist work units (`make test` runs `--dist loadgroup`): a module is one unit, so its
# module-scoped run happens once; the modules sharing the session's `shipped_run` are one
# unit together. Grouped here, not by `xdist_group` marks: pytest >= 9.2 no longer lets
# xdist rewrite node ids, so its marks silently stop grouping (pytest-dev/pytest-xdist#1386).
SHIPPED_RUN_MODULES = {"test_shipped_cases", "test_report_cli", "test_gemma4_families"}

# Units handed out longest first (measured with --durations), so that no long unit starts
# last while the other worker idles; the rest follow in file order.
LONGEST_FIRST = (
    "shipped",
    "test_gemma3",
    "test_gemma3n",
    "test_verdicts",
    "test_llava",
    "test_lfm2_vl",
    "test_mistral3",
    "test_idefics3",
    "test_qwen3_vl",
    "test_untrusted",
    "test_isolation",
    "test_mutants",
    "test_pixtral",
    "test_attention_mask",
)


def _unit(nodeid: str) -> str:
    stem = Path(nodeid.split("::", 1)[0]).stem
    return "shipped" if stem in SHIPPED_RUN_MODULES else stem


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(_unit(item.nodeid), len(rank)))  # stable


if importlib.util.find_spec("xdist"):

    @pytest.hookimpl(optionalhook=True)  # pytest -p no:xdist: an unknown hook, ignored
    def pytest_xdist_make_scheduler(config: pytest.Config, log):
        if config.getvalue("dist") != "loadgroup":
            return None
        from xdist.scheduler import LoadScopeScheduling

        class ModuleUnits(LoadScopeScheduling):
            def _split_scope(self, nodeid: str) -> str:
                return _unit(nodeid)

        return ModuleUnits(config, log)


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
