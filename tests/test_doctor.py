"""`mlx-parity doctor` and the tested matrix: output fields, in / out of matrix on hand-given
version sets, pyproject's ranges against the tested points, recording a run. No model runs."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pandas as pd
import pytest
import tomllib
from conftest import ROOT
from packaging.requirements import Requirement
from packaging.version import Version

from harness import doctor
from harness.cli import main
from harness.matrix import GATED, MATRIX_FILE, MatrixError, Point, load, status
from harness.matrix.build import record
from harness.matrix.table import markdown

OLD = {"mlx": "0.32.2", "mlx-lm": "0.32.0", "mlx-vlm": "0.7.0", "transformers": "5.24.0"}
NEW = {"mlx": "0.32.4", "mlx-lm": "0.32.2", "mlx-vlm": "0.7.10", "transformers": "5.24.0"}
POINTS = [Point("oldest", OLD), Point("newest", NEW)]


def stack(**changes: str) -> dict[str, str]:
    return {**NEW, **{k.replace("_", "-"): v for k, v in changes.items()}}


# --- in / out of the matrix ---------------------------------------------------------------


def test_a_tested_point_is_exact_and_in_range():
    found = status(dict(OLD), POINTS)
    assert (found.exact, found.nearest, found.in_range, found.outside) == (
        "oldest",
        "oldest",
        True,
        {},
    )
    assert status(stack(), POINTS).exact == "newest"


def test_an_untested_combination_inside_the_range_names_the_nearest_point():
    found = status(stack(mlx_vlm="0.7.9"), POINTS)
    assert found.exact is None and found.in_range
    assert found.nearest == "newest"
    assert found.differs == {"mlx-vlm": "installed 0.7.9, tested 0.7.10"}
    assert doctor.exit_code({"matrix": {"status": found}}) == doctor.EXIT_OK
    assert doctor.matrix_lines(found)[0].startswith("within the tested range, an untested")
    assert status({**OLD, "mlx-vlm": "0.7.1"}, POINTS).nearest == "oldest"


@pytest.mark.parametrize(
    ("changes", "library", "words"),
    [
        ({"mlx_vlm": "0.6.9"}, "mlx-vlm", "older than the oldest tested (0.7.0)"),
        ({"mlx_lm": "0.33.0"}, "mlx-lm", "newer than the newest tested (0.32.2)"),
        ({"mlx": "absent"}, "mlx", "not installed"),
    ],
)
def test_a_library_outside_the_range_is_named(changes, library, words):
    found = status(stack(**changes), POINTS)
    assert not found.in_range and found.exact is None
    assert list(found.outside) == [library] and words in found.outside[library]
    facts = {"matrix": {"status": found}}
    assert doctor.exit_code(facts) == doctor.EXIT_UNTESTED
    assert doctor.matrix_lines(found)[0].startswith("OUTSIDE the tested range")


def test_transformers_alone_does_not_leave_the_matrix_but_is_noted():
    found = status(stack(transformers="5.20.0"), POINTS)
    assert found.exact == "newest" and found.in_range
    assert doctor.exit_code({"matrix": {"status": found}}) == doctor.EXIT_OK
    assert "transformers: installed 5.20.0, tested 5.24.0" in " ".join(doctor.matrix_lines(found))


def test_an_unreadable_matrix_is_one_line_naming_file_and_field(tmp_path):
    assert doctor.exit_code({"matrix": {"error": "unreadable"}}) == doctor.EXIT_UNTESTED
    bad = tmp_path / "tested.json"
    bad.write_text("{not json")
    with pytest.raises(MatrixError, match="tested.json: cannot be read"):
        load(bad)
    bad.write_text(json.dumps({"points": [{"name": "x", "versions": {"mlx": "1"}}]}))
    with pytest.raises(MatrixError, match=r"points\[0\]\.versions: needs mlx, mlx-lm"):
        load(bad)
    bad.write_text(json.dumps({"points": [{"name": "x", "versions": {**OLD, "mlx": "new"}}]}))
    with pytest.raises(MatrixError, match=r"points\[0\]\.versions\.mlx: not a version"):
        load(bad)


# --- pyproject's ranges are the tested range ------------------------------------------------


def _requirements(lines: list[str] | None = None) -> dict[str, list[Requirement]]:
    if lines is None:
        lines = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found: dict[str, list[Requirement]] = {}
    for line in lines:
        requirement = Requirement(line)
        found.setdefault(requirement.name, []).append(requirement)
    return found


def range_problems(requirements: dict[str, list[Requirement]], points: list[Point]) -> list[str]:
    """What is wrong with `requirements` as the tested range: a supported point it refuses,
    a release just past the oldest / newest supported one it admits, an unsupported point
    (one whose cases failed) it admits."""
    problems = []
    supported = [p for p in points if p.supported]
    for lib in GATED:
        tested = sorted(Version(p.versions[lib]) for p in supported)
        low, high = tested[0], tested[-1]
        outside = [Version(f"{high.major}.{high.minor}.{high.micro + 1}")]
        if low.micro > 0:
            outside.append(Version(f"{low.major}.{low.minor}.{low.micro - 1}"))
        for requirement in requirements.get(lib) or [Requirement(lib)]:  # mlx: per platform
            problems += [
                f"{requirement} refuses tested {v}"
                for v in tested
                if not requirement.specifier.contains(v)
            ]
            problems += [
                f"{requirement} admits untested {v}"
                for v in outside
                if requirement.specifier.contains(v)
            ]
    for point in (p for p in points if not p.supported):
        if all(
            r.specifier.contains(point.versions[lib])
            for lib in GATED
            for r in requirements.get(lib, [])
        ):
            problems.append(f"pyproject admits {point.name}, whose cases failed")
    return problems


def test_pyproject_ranges_are_exactly_the_tested_range():
    points = load()
    assert range_problems(_requirements(), points) == []
    assert not any(status(p.versions, points).in_range for p in points if not p.supported)


@pytest.mark.parametrize(
    ("lines", "words"),
    [
        (
            ["mlx>=0.32.2", "mlx-lm>=0.32.0,<=0.32.2", "mlx-vlm>=0.7.4,<=0.7.10"],
            "mlx>=0.32.2 admits untested 0.32.5",
        ),
        (
            ["mlx>=0.32.2,<=0.32.4", "mlx-lm==0.32.2", "mlx-vlm>=0.7.4,<=0.7.10"],
            "mlx-lm==0.32.2 refuses tested 0.32.0",
        ),
        (
            ["mlx>=0.32.2,<=0.32.4", "mlx-lm>=0.32.0,<=0.32.2", "mlx-vlm>=0.6,<=0.7.10"],
            "admits untested 0.7.3",
        ),
    ],
)
def test_a_range_that_is_not_the_tested_one_is_caught(lines, words):
    points = [
        Point("oldest", {**OLD, "mlx-vlm": "0.7.4"}),
        Point("newest", NEW),
        Point("broken", {**OLD, "mlx-vlm": "0.6.9"}, supported=False),
    ]
    problems = range_problems(_requirements(lines), points)
    assert any(words in problem for problem in problems), problems
    if "0.6" in lines[2]:
        assert "pyproject admits broken, whose cases failed" in problems


def test_the_shipped_matrix_has_an_oldest_and_a_newest_point_that_ran():
    points = load()
    names = {p.name for p in points}
    assert {"oldest", "newest"} <= names
    for point in points:
        if point.build:
            assert point.cases, f"{point.name} was never run"
    assert (MATRIX_FILE.with_name("tested.md")).read_text() == markdown(points)


# --- the doctor's output -----------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    done = root / "synth" / "gemma4-0123456789abcdef"
    done.mkdir(parents=True)
    (done / ".mlx-parity-complete").write_text("")
    (done / "model.safetensors").write_bytes(b"\0" * 2048)
    unfinished = root / "synth" / "gemma4-fedcba9876543210"
    unfinished.mkdir()  # no marker: not a checkpoint
    # A staging dir of a dead builder on this host: stale. (PID far above pid_max.)
    from harness.synth import _builder_id

    (root / "synth" / f".gemma4-0000000000000000.{_builder_id()}.99999999.x").mkdir()
    (root / "synth" / f".gemma4-1111111111111111.{_builder_id()}.{os.getpid()}.y").mkdir()
    monkeypatch.setenv("MLX_PARITY_CACHE", str(root))
    return root


def test_doctor_prints_every_field(cache, capsys):
    code = main(["doctor"])
    out = capsys.readouterr().out
    labels = [line.split()[0] for line in out.splitlines() if not line.startswith(" ")]
    assert labels == [
        "python",
        "mlx",
        "mlx-lm",
        "mlx-vlm",
        "transformers",
        "tokenizers",
        "backend",
        "matrix",
        "synth",
        "hf",
    ]
    assert f"python        {sys.version.split()[0]}" in out
    assert "metal available: " in out and "Device(" in out
    assert f"{cache / 'synth'}: 1 checkpoint(s), 0.0 MiB, 2 staging dir(s) (1 stale)" in out
    assert "offline (HF_HUB_OFFLINE)" in out  # conftest sets it
    found = status(doctor.collect()["versions"], load())
    assert code == (0 if found.in_range else 1)
    assert doctor.matrix_lines(found)[0] in out


def test_doctor_reports_a_missing_cache_and_an_online_hub(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_PARITY_CACHE", str(tmp_path / "nowhere"))
    monkeypatch.delenv("HF_HUB_OFFLINE")
    lines = doctor.render(doctor.collect())
    assert any("nowhere/synth: missing (built on first use)" in line for line in lines)
    assert any("online allowed" in line for line in lines)


# --- recording a run --------------------------------------------------------------------------


def test_record_writes_each_case_outcome_and_the_table(tmp_path):
    matrix = tmp_path / "tested.json"
    matrix.write_text(json.dumps({"points": [p.to_json() for p in POINTS]}))
    report = tmp_path / "report"
    report.mkdir()
    rows = [
        {"case_id": "gemma3_text", "status": "pass", "architecture": "gemma3", "reason": ""},
        {"case_id": "gemma3_text", "status": "pass", "architecture": "gemma3", "reason": ""},
        {
            "case_id": "gemma3_one_image",
            "status": "fail",
            "architecture": "gemma3",
            "reason": "layer.1 differs first",
        },
        {"case_id": "llava_text", "status": "skip", "architecture": "", "reason": "too old"},
        {"case_id": "lfm2_vl_text", "status": "pass", "architecture": "lfm2-vl", "reason": ""},
    ]
    pd.DataFrame(rows).to_parquet(report / "parity.parquet")
    point = record("oldest", report, matrix)
    assert point.cases == {
        "gemma3_one_image": {
            "status": "fail",
            "architecture": "gemma3",
            "reason": "layer.1 differs first",
        },
        "gemma3_text": {"status": "pass", "architecture": "gemma3"},
        "llava_text": {"status": "skip", "architecture": "llava", "reason": "too old"},
        "lfm2_vl_text": {"status": "pass", "architecture": "lfm2_vl"},  # its folder's name
    }
    assert load(matrix)[0].cases == point.cases and load(matrix)[1].cases == {}
    table = markdown(load(matrix))
    assert (tmp_path / "tested.md").read_text() == table  # beside its tested.json
    assert "| **gemma3** | 1/2 pass (1 fail) | - |" in table
    assert "| **llava** | 0/1 pass (1 skip) | - |" in table
    assert "- `oldest` gemma3_one_image: fail: layer.1 differs first" in table
