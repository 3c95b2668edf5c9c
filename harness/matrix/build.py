"""`make matrix`: build each tested point's stack in a venv of its own, install this project
into it the way an engine would (its pins already there; pip must keep them), run the
shipped cases there and record every case's outcome in tested.json / tested.md.

    python -m harness.matrix.build [--point NAME ...] [--venvs DIR] [--cases DIR]
    python -m harness.matrix.build --record NAME --report DIR    # record a finished run
    python -m harness.matrix.build --markdown                    # regenerate tested.md
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

from . import MARKDOWN_FILE, MATRIX_FILE, RECORDED, MatrixError, Point, load, save
from .table import markdown

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VENVS = Path.home() / ".cache" / "mlx-parity" / "venvs"


def _pip(venv: Path, *args: str) -> str:
    """Run pip in `venv` and return its output; only its last line is printed (all of it
    when pip fails)."""
    command = [str(venv / "bin" / "python"), "-m", "pip", *args]
    print("$", " ".join(command[2:]), flush=True)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode:
        print(done.stdout, done.stderr, sep="", flush=True)
        raise SystemExit(f"pip failed in {venv} (exit {done.returncode})")
    print(*done.stdout.strip().splitlines()[-1:], flush=True)
    return done.stdout


def installed_versions(venv: Path) -> dict[str, str]:
    script = (
        "import json; from importlib import metadata as m\n"
        f"print(json.dumps({{d: m.version(d) for d in {list(RECORDED)!r}}}))"
    )
    out = subprocess.run(
        [str(venv / "bin" / "python"), "-c", script], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def build_venv(point: Point, venv: Path) -> None:
    """The point's pins first (an engine's environment), then this project with its
    dependencies: pip must find every pin already satisfying pyproject's ranges."""
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        _pip(venv, "install", "--quiet", "--upgrade", "pip")
    _pip(venv, "install", *point.requirements())
    out = _pip(venv, "install", "-e", str(ROOT))
    kept = installed_versions(venv)
    moved = {lib: v for lib, v in kept.items() if v != point.versions[lib]}
    if moved:
        raise SystemExit(f"installing mlx-parity changed the pins of {point.name}: {moved}")
    for lib in ("mlx", "mlx-lm", "mlx-vlm"):
        kept_line = re.search(rf"^Requirement already satisfied: {lib}[ =<>!~].*$", out, re.M)
        print(kept_line[0] if kept_line else f"warning: pip did not report {lib} as kept")


def run_point(venv: Path, cases: Path, report_dir: Path) -> int:
    command = [str(venv / "bin" / "python"), "-m", "harness", "run", str(cases)]
    command += ["--report-dir", str(report_dir), "--figures", "never"]
    print("$", " ".join(command), flush=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, cwd=ROOT, env=env).returncode


def _architecture(case_id: str, reported: str) -> str:
    """The architecture folder of the report's model_type, or (a case that never loaded)
    the longest architecture name its id starts with."""
    from ..architectures import folder, names

    if reported:
        return folder(reported) or reported
    matches = [n for n in names() if case_id.startswith(n)]
    return max(matches, key=len) if matches else "other"


def outcomes(report_dir: Path) -> tuple[dict[str, dict[str, str]], dict[str, str]]:
    """Each case's status, architecture and (non-pass) reason, and the run's provenance,
    from the report's parquet."""
    import pandas as pd

    frame = pd.read_parquet(report_dir / "parity.parquet")
    cases = {}
    for case_id, rows in frame.groupby("case_id", sort=True):
        first = rows.iloc[0]
        entry = {
            "status": str(first["status"]),
            "architecture": _architecture(str(case_id), str(first.get("architecture") or "")),
        }
        reason = str(first.get("reason") or first.get("explanation") or "")
        if entry["status"] != "pass" and reason:
            # Paths relative to the repository: the record reads the same on any machine.
            entry["reason"] = reason.splitlines()[0].replace(f"{ROOT}/", "")[:300]
        cases[str(case_id)] = entry
    row = frame.iloc[0] if len(frame) else {}
    run = {
        "date": dt.date.today().isoformat(),
        "python": str(row.get("run_python", platform.python_version())),
        "platform": str(row.get("run_platform", platform.platform())),
        "commit": str(row.get("run_commit", "unknown")),
    }
    return cases, run


def record(name: str, report_dir: Path, path: Path = MATRIX_FILE) -> Point:
    points = load(path)
    matches = [p for p in points if p.name == name]
    if not matches:
        raise MatrixError(f"{path}: no point named {name!r}")
    cases, run = outcomes(report_dir)
    updated = dataclasses.replace(matches[0], cases=cases, run=run)
    save([updated if p.name == name else p for p in points], path)
    write_markdown(path)
    return updated


def write_markdown(path: Path = MATRIX_FILE) -> None:
    """tested.md beside `path`, generated from it."""
    path.with_name(MARKDOWN_FILE.name).write_text(markdown(load(path)), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m harness.matrix.build",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--point", action="append", default=[], help="default: build=true ones")
    parser.add_argument("--venvs", type=Path, default=DEFAULT_VENVS)
    parser.add_argument("--cases", type=Path, default=ROOT / "cases")
    parser.add_argument("--reports", type=Path, default=ROOT / "reports" / "matrix")
    parser.add_argument("--record", metavar="NAME", help="only record REPORT as point NAME")
    parser.add_argument("--report", type=Path, help="with --record: a finished run's report")
    parser.add_argument("--markdown", action="store_true", help="only regenerate tested.md")
    args = parser.parse_args(argv)
    if args.markdown:
        write_markdown()
        return 0
    if args.record:
        if args.report is None:
            parser.error("--record needs --report DIR")
        print(record(args.record, args.report).counts())
        return 0
    points = [p for p in load() if (p.name in args.point if args.point else p.build)]
    if args.point and len(points) != len(set(args.point)):
        parser.error(f"unknown point in {args.point}")
    worst = 0
    for point in points:
        venv = args.venvs / point.name
        build_venv(point, venv)
        code = run_point(venv, args.cases, args.reports / point.name)
        counts = record(point.name, args.reports / point.name).counts()
        print(f"{point.name}: exit {code}, {counts}", flush=True)
        worst = max(worst, 0 if code in (0, 5) else code)
    print(f"matrix: {MATRIX_FILE.relative_to(ROOT)}, {MARKDOWN_FILE.relative_to(ROOT)}")
    return worst


if __name__ == "__main__":
    sys.exit(main())
