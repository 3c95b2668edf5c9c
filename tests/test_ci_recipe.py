"""examples/ci/: the GitHub Actions recipe for an add-on repository is a valid workflow (the
github-workflows JSON schema vendored by check-jsonschema; actionlint too where it is
installed), has what the README promises, and its shell steps build one comment that fits
GitHub's limit from the reports the gate writes."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from harness.records import CheckResult, Status, Verdict
from harness.report_md import markdown
from harness.runner import RunResult

WORKFLOWS = sorted((ROOT / "examples" / "ci").glob("*.yml"))


def _schema_check(*paths: Path) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.skip("check-jsonschema is not installed (pip install -e '.[dev]')")
    command = [sys.executable, "-m", "check_jsonschema", "--builtin-schema",
               "vendor.github-workflows", *map(str, paths)]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def _workflow() -> dict:
    (path,) = WORKFLOWS
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _steps(job: dict) -> list[dict]:
    return job["steps"]


def _step(name: str) -> dict:
    job = _workflow()["jobs"]["parity" if name != "Compose one comment" else "comment"]
    (step,) = [s for s in _steps(job) if s.get("name") == name]
    return step


def test_workflows_match_the_github_schema():
    assert WORKFLOWS, "examples/ci/ holds no workflow"
    result = _schema_check(*WORKFLOWS)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_fails_on_a_broken_workflow(tmp_path):
    text = WORKFLOWS[0].read_text(encoding="utf-8")
    broken = tmp_path / "broken.yml"
    broken.write_text(text.replace("    runs-on: ${{ matrix.os }}\n", "    run-on: x\n"))
    result = _schema_check(broken)
    assert result.returncode != 0 and "run-on" in result.stdout + result.stderr


def test_actionlint_when_installed():
    actionlint = shutil.which("actionlint")
    if actionlint is None:
        pytest.skip("actionlint is not on PATH (its PyPI wrapper builds from source here)")
    result = subprocess.run([actionlint, *map(str, WORKFLOWS)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_recipe_has_what_it_promises():
    workflow = _workflow()
    parity, comment = workflow["jobs"]["parity"], workflow["jobs"]["comment"]
    runners = {entry["id"]: entry["os"] for entry in parity["strategy"]["matrix"]["include"]}
    assert runners == {"linux-cpu": "ubuntu-latest", "macos-metal": "macos-14"}
    uses = [s.get("uses", "") for s in _steps(parity)]
    caches = [s["with"]["path"] for s in _steps(parity) if s.get("uses") == "actions/cache@v4"]
    assert "~/.cache/huggingface/hub" in caches and "~/.cache/mlx-parity" in caches
    assert "actions/upload-artifact@v4" in uses
    gate = _step("Run the gate")
    assert "mlx-parity run" in gate["run"] and "||" not in gate["run"]
    assert "continue-on-error" not in gate and "if" not in gate  # its exit code decides
    assert gate["env"]["HF_HUB_OFFLINE"] == "1"
    for name in ("Upload the report", "Summary for the comment and the job page"):
        assert _step(name)["if"].startswith("always()")
    sticky = [s for s in _steps(comment) if "sticky-pull-request-comment" in s.get("uses", "")]
    assert len(sticky) == 1 and sticky[0]["with"]["header"] == "mlx-parity"
    assert comment["permissions"] == {"pull-requests": "write"}
    assert workflow["permissions"] == {"contents": "read"}


def _run_md(cases: int) -> str:
    """Every 50th case fails; ids are long, so passing rows fill whatever room is left."""
    checks = (CheckResult("c", "logits", "exact", "max_abs_diff", 1.0, 0.0, False, 1.0, "x" * 300),)
    verdicts = tuple(
        Verdict(f"case_{i:04d}_" + "long" * 25, "c.yaml", Status.PASS if i % 50 else Status.FAIL,
                () if i % 50 else checks, first_divergence=None if i % 50 else "logits",
                first_failure=None if i % 50 else "logits", first_failure_detail="y" * 300)
        for i in range(cases)
    )  # fmt: skip
    return markdown(RunResult(verdicts, "2025-01-01", "2025-01-01", {"commit": "abc"}))


def _bash(script: str, cwd: Path, **env: str) -> None:
    subprocess.run(["bash", "-e", "-c", script], cwd=cwd, check=True, timeout=60,
                   env={**os.environ, **env})  # fmt: skip


@pytest.mark.parametrize(("cases", "limit"), [(3, None), (1500, None), (1500, "65000")])
def test_the_shell_steps_build_one_comment_that_fits(tmp_path, monkeypatch, cases, limit):
    """The workflow's MLX_PARITY_MD_LIMIT keeps both reports whole in one comment; with
    full-size reports the compose step cuts the comment and says so."""
    summary = _step("Summary for the comment and the job page")["run"]
    compose = _step("Compose one comment")["run"]
    monkeypatch.setenv("MLX_PARITY_MD_LIMIT", limit or _workflow()["env"]["MLX_PARITY_MD_LIMIT"])
    for job, title in (("linux-cpu", "Linux CPU"), ("macos-metal", "macOS arm64")):
        work = tmp_path / job
        (work / "parity-report").mkdir(parents=True)
        (work / "parity-report" / "parity.md").write_text(_run_md(cases), encoding="utf-8")
        (work / "parity-report" / "diff.md").write_text("## mlx-parity diff\n\n**no change**\n")
        _bash(summary, work, TITLE=title, GITHUB_STEP_SUMMARY=str(work / "summary.md"))
        section = (work / "parity-report" / "comment.md").read_text(encoding="utf-8")
        assert section.startswith(f"### {title}\n") and "## mlx-parity" not in section
        assert "**FAIL**" in section and "**no change**" in section
        assert (work / "summary.md").read_text(encoding="utf-8") == section
        target = tmp_path / "comment" / "reports" / f"parity-report-{job}"
        target.mkdir(parents=True)
        shutil.copy(work / "parity-report" / "comment.md", target)
    _bash(compose, tmp_path / "comment", RESULT="failure", RUN_URL="https://example.invalid")
    text = (tmp_path / "comment" / "comment.md").read_text(encoding="utf-8")
    assert len(text) < 65_000 and text.startswith("## mlx-parity\n") and "**failure**" in text
    assert text.count("### Linux CPU") == 1
    cut = "Cut to fit one comment" in text
    assert cut == (limit is not None)
    assert text.count("### macOS arm64") == (0 if cut else 1)
