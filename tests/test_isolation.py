"""A crash, an abort, a hang or an interruption costs one case, never the run's results."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pandas as pd
import pytest
from conftest import ALLOW_TEST_MODULES, CASES, ROOT, TEST_MODULES, run_cli

from harness.cases import load_case
from harness.policy import ImportPolicy
from harness.records import Status
from harness.runner import RunOptions, run_cases

BASE = load_case(CASES / "gemma4_one_image.yaml")
TEXT = load_case(CASES / "gemma4_text.yaml")


def _with(addon: str, case_id: str, base=BASE):
    return base.model_copy(update={"id": case_id, "addon": addon})


def _image_case_with_addon(directory, addon: str):
    """A case file (outside cases/) running the tiny image case with `addon`."""
    path = directory / f"{addon.rpartition(':')[2]}.yaml"
    image = CASES / "images" / "gradient_256.png"
    path.write_text(
        f"include: {CASES / '_gemma4_tiny.yaml'}\naddon: '{addon}'\n"
        f"messages: [{{role: user, content: [{{type: image, image: {image}}}]}}]\n"
    )
    return path


def _run(cases, **options):
    options = RunOptions(imports=ImportPolicy(TEST_MODULES), **options)
    return {v.case_id: v for v in run_cases(cases, options=options).verdicts}


@pytest.mark.parametrize(
    ("addon", "death"),
    [
        ("crashers:AbortsInCapture", "killed by SIGABRT"),
        ("crashers:ExitsInCapture", "exited with code 7"),
    ],
)
def test_a_case_that_kills_its_worker_fails_alone(addon, death):
    verdicts = _run(
        [_with("gemma4", "before"), _with(addon, "crasher"), _with("gemma4", "after"), TEXT]
    )
    assert verdicts["crasher"].status is Status.ERROR
    assert verdicts["crasher"].reason == f"{BASE.source}: candidate path unified: worker {death}"
    for case_id in ("before", "after", TEXT.id):
        assert verdicts[case_id].status is Status.PASS, verdicts[case_id].reason


def test_a_worker_dying_while_loading_fails_only_that_sessions_cases():
    verdicts = _run([_with("crashers:ExitsWhileLoading", "doomed"), _with("gemma4", "fine")])
    assert verdicts["doomed"].status is Status.ERROR
    assert verdicts["doomed"].reason == (
        f"{BASE.source}: loading path unified: worker exited with code 3"
    )
    assert verdicts["fine"].status is Status.PASS


def test_a_hanging_case_times_out_and_the_rest_run():
    verdicts = _run([_with("crashers:Hangs", "hangs"), _with("gemma4", "fine")], timeout=15)
    assert verdicts["hangs"].status is Status.ERROR
    assert verdicts["hangs"].reason == (
        f"{BASE.source}: candidate path unified: timed out after 15 s"
    )
    assert verdicts["fine"].status is Status.PASS


def test_in_process_isolation_gives_the_same_verdicts_as_workers():
    cases = [BASE, TEXT]
    in_workers = _run(cases)
    in_process = _run(cases, isolation="none")
    assert {k: v.status for k, v in in_workers.items()} == {
        k: v.status for k, v in in_process.items()
    }
    for case_id, v in in_workers.items():
        assert [(c.stage, c.metric, c.value) for c in v.checks] == [
            (c.stage, c.metric, c.value) for c in in_process[case_id].checks
        ]


def test_sigterm_leaves_a_report_of_finished_cases_marked_incomplete(tmp_path):
    first = tmp_path / "first.yaml"
    first.write_text(
        textwrap.dedent(f"""
        include: {CASES / "_gemma4_tiny.yaml"}
        model: {{options: {{hidden_size: 48}}}}
        messages: [{{role: user, content: "Hello, how are you today?"}}]
    """)
    )
    cancelled = _image_case_with_addon(tmp_path, "crashers:SendsSigterm")
    result = run_cli(
        "run",
        first,
        cancelled,
        "--isolation",
        "none",
        "--report-dir",
        tmp_path / "r",
        "--allow-include",
        CASES,
        *ALLOW_TEST_MODULES,
        pythonpath=ROOT / "tests",
    )
    assert result.returncode == 130, result.stdout + result.stderr
    frame = pd.read_parquet(tmp_path / "r" / "parity.parquet")
    assert set(frame.case_id) == {"first"}
    assert (frame.status == "pass").all() and not frame.run_complete.any()
    assert "INCOMPLETE" in (tmp_path / "r" / "parity.md").read_text()
    assert not [p for p in (tmp_path / "r").iterdir() if p.name.startswith(".")]


def test_workers_exit_when_the_parent_is_killed(tmp_path):
    import signal
    import time

    import psutil

    case = _image_case_with_addon(tmp_path, "crashers:Hangs")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests")}
    parent = subprocess.Popen(
        [sys.executable, "-m", "harness", "run", str(case), "--report-dir", str(tmp_path / "r")]
        + ["--allow-include", str(CASES), *ALLOW_TEST_MODULES],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    workers = []
    while time.monotonic() < deadline and not workers:
        time.sleep(0.5)
        workers = [
            p
            for p in psutil.Process(parent.pid).children()
            if "spawn_main" in " ".join(p.cmdline())
        ]
    assert workers, "no worker started"
    time.sleep(12)  # past the worker's imports and model load: inside the hanging case
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    gone, alive = psutil.wait_procs(workers, timeout=15)
    assert not alive, f"orphaned workers still running: {alive}"
