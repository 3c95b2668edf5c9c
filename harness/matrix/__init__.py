"""The tested matrix: which mlx / mlx-lm / mlx-vlm versions the shipped cases were RUN
under, and what each case gave there (harness/matrix/tested.json, written by
`python -m harness.matrix.build`; the table in tested.md is generated from it).

pyproject.toml's version ranges span exactly these points (tests/test_doctor.py checks it);
`mlx-parity doctor` says whether the installed versions are one of them."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from packaging.version import InvalidVersion, Version

MATRIX_FILE = Path(__file__).with_name("tested.json")
MARKDOWN_FILE = Path(__file__).with_name("tested.md")
# The libraries whose versions decide whether a stack is tested; transformers and
# tokenizers are recorded with each point and shown by the doctor, but do not gate.
GATED = ("mlx", "mlx-lm", "mlx-vlm")
RECORDED = (*GATED, "transformers")


@dataclass(frozen=True)
class Point:
    """One tested stack: pinned versions and, once run, each case's outcome."""

    name: str
    versions: dict[str, str]
    build: bool = False  # `make matrix` rebuilds and re-runs this point
    # False: run and recorded to show why the range stops there (cases failed); it is no
    # part of the tested range and pyproject's ranges exclude it.
    supported: bool = True
    cases: dict[str, dict[str, str]] = field(default_factory=dict)
    run: dict[str, str] = field(default_factory=dict)  # date, python, platform, commit
    note: str = ""

    def requirements(self, platform: str = sys.platform) -> list[str]:
        """pip requirement strings pinning this point (mlx's CPU wheels on Linux)."""
        mlx = "mlx[cpu]" if platform.startswith("linux") else "mlx"
        names = {"mlx": mlx}
        return [f"{names.get(lib, lib)}=={self.versions[lib]}" for lib in RECORDED]

    def counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for outcome in self.cases.values():
            counts[outcome["status"]] = counts.get(outcome["status"], 0) + 1
        return counts

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"name": self.name, "versions": self.versions}
        if self.build:
            data["build"] = True
        if not self.supported:
            data["supported"] = False
        if self.note:
            data["note"] = self.note
        data["run"] = self.run
        data["cases"] = self.cases
        return data


class MatrixError(ValueError):
    """tested.json that cannot be used: one line naming the file and the field."""


def load(path: Path = MATRIX_FILE) -> list[Point]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MatrixError(f"{path}: cannot be read as JSON ({type(exc).__name__})") from None
    points = []
    for index, raw in enumerate(data.get("points", []) if isinstance(data, dict) else []):
        where = f"{path}: points[{index}]"
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise MatrixError(f"{where}.name: missing")
        versions = raw.get("versions")
        if not isinstance(versions, dict) or any(lib not in versions for lib in RECORDED):
            raise MatrixError(f"{where}.versions: needs {', '.join(RECORDED)}")
        for lib, text in versions.items():
            if _version(text) is None:
                raise MatrixError(f"{where}.versions.{lib}: not a version ({text!r})")
        points.append(
            Point(
                name=raw["name"],
                versions={k: str(v) for k, v in versions.items()},
                build=bool(raw.get("build", False)),
                supported=bool(raw.get("supported", True)),
                cases=dict(raw.get("cases", {})),
                run=dict(raw.get("run", {})),
                note=str(raw.get("note", "")),
            )
        )
    if not any(p.supported for p in points):
        raise MatrixError(f"{path}: points: no supported tested point")
    return points


def save(points: list[Point], path: Path = MATRIX_FILE) -> None:
    text = json.dumps({"points": [p.to_json() for p in points]}, indent=1, sort_keys=False)
    path.write_text(text + "\n", encoding="utf-8")


def _version(text: object) -> Version | None:
    try:
        return Version(str(text))
    except InvalidVersion:
        return None


@dataclass(frozen=True)
class MatrixStatus:
    """Where an installed stack stands against the tested points."""

    exact: str | None  # the tested point whose gated versions all equal the installed ones
    outside: dict[str, str]  # library -> why it is outside the tested range
    nearest: str  # the closest tested point (the exact one when there is one)
    differs: dict[str, str]  # library -> "installed X, nearest tested Y" (gated + recorded)

    @property
    def in_range(self) -> bool:
        """Every gated library installed and between the oldest and newest tested."""
        return not self.outside


def _distance(installed: dict[str, str], point: Point) -> tuple[int, float]:
    """(gated libraries that differ, summed release distance): a small, stable order."""
    differ, spread = 0, 0.0
    for lib in GATED:
        have, tested = _version(installed.get(lib)), _version(point.versions[lib])
        if have is None or tested is None:
            differ += 1
            spread += 1e9
            continue
        if have != tested:
            differ += 1
            # major, minor, micro: a minor step outweighs any number of micro steps
            pairs = zip((have.release + (0, 0))[:3], (tested.release + (0, 0))[:3], strict=True)
            spread += sum(abs(a - b) * 1000.0**-i for i, (a, b) in enumerate(pairs))
    return differ, spread


def status(installed: dict[str, str], points: list[Point]) -> MatrixStatus:
    """Compare installed versions ({library: version}; "absent" or junk for a missing one)
    with the supported tested points."""
    points = [p for p in points if p.supported]
    outside = {}
    for lib in GATED:
        have = _version(installed.get(lib))
        tested = sorted(_version(p.versions[lib]) for p in points)
        if have is None:
            outside[lib] = f"not installed (tested {tested[0]} to {tested[-1]})"
        elif have < tested[0]:
            outside[lib] = f"{have} is older than the oldest tested ({tested[0]})"
        elif have > tested[-1]:
            outside[lib] = f"{have} is newer than the newest tested ({tested[-1]})"
    nearest = min(points, key=lambda p: _distance(installed, p))
    exact = nearest.name if _distance(installed, nearest)[0] == 0 else None
    differs = {
        lib: f"installed {installed.get(lib, 'absent')}, tested {nearest.versions[lib]}"
        for lib in RECORDED
        if _version(installed.get(lib)) != _version(nearest.versions[lib])
    }
    return MatrixStatus(exact=exact, outside=outside, nearest=nearest.name, differs=differs)
