"""A randomized sweep the project runs on itself: `python -m harness.sweep --n N --seed S
--out DIR` (or `make sweep N=... SEED=...`) writes N seeded cases (valid Gemma 4 synthesizer
options, image forms, message layouts, prefill steps, profiles; see `sweep_gen`) as
self-contained case files under DIR/cases/, runs them like `mlx-parity run` (worker
processes by default), writes the usual report to DIR/report/ and a classification of every
verdict (`sweep_classify`) to DIR/classification.{json,parquet}, and prints a count table of
the non-PASS verdicts by status, category, first difference and first failure.

The same seed, N and --models give the same case files. Exit codes: 0 when no case crashed
(an ERROR whose reason is not one clear line naming the case file), 1 when one did, 2 bad
usage or an unusable output directory, 130 interrupted. Known disagreements of the two
libraries and suspected bugs are told apart in the table; the exit code reflects crashes
only: the sweep explores, `make parity` gates.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from .sweep_classify import LEGEND, count_table, format_table, rows
from .sweep_gen import GeneratedCase, default_model_count, generate

MARKER = ".mlx-parity-sweep"
EXIT_OK, EXIT_CRASH, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


@dataclass(frozen=True)
class SweepResult:
    generated: tuple[GeneratedCase, ...]
    run: Any  # harness.runner.RunResult
    classified: tuple[dict, ...]
    table: tuple[dict, ...]

    @property
    def crashed(self) -> list[dict]:
        return [r for r in self.classified if r["category"] == "crash"]

    @property
    def suspects(self) -> list[dict]:
        return [r for r in self.classified if r["suspect"]]

    @property
    def exit_code(self) -> int:
        if not self.run.complete:
            return EXIT_INTERRUPTED
        return EXIT_CRASH if self.crashed else EXIT_OK


class SweepDirError(ValueError):
    pass


def prepare_out(out: Path) -> Path:
    """`out` as a sweep directory: created, or emptied of a previous sweep's cases. A
    non-empty directory that is not a sweep's is refused (never delete a user's files)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise SweepDirError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise SweepDirError(f"{out} is not empty and not a sweep directory (no {MARKER})")
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text("written by python -m harness.sweep\n")
    shutil.rmtree(out / "cases", ignore_errors=True)
    for name in ("classification.json", "classification.parquet"):
        (out / name).unlink(missing_ok=True)
    return out


def run_sweep(
    n: int,
    seed: int,
    out: Path,
    *,
    models: int | None = None,
    options: Any = None,
    observe: Any = None,
    figures: Literal["auto", "always", "never"] = "never",
    write: bool = True,
) -> SweepResult:
    """Generate, run, classify; with `write`, the report and the classification files.
    `options`: a `harness.runner.RunOptions` (default: worker processes)."""
    from .cases import load_cases
    from .runner import RunOptions, RunResult, run_cases, utc_now

    out = prepare_out(out)
    if write:  # a killed sweep must not leave the previous sweep's report looking current
        from .report import write_reports

        now = utc_now()
        write_reports(RunResult((), now, now, complete=False), out / "report", None, "never")
    generated = generate(n, seed, out / "cases", models)
    cases, errors = load_cases([out / "cases"])
    result = run_cases(
        cases,
        errors,
        observe or (lambda event, payload: None),
        options or RunOptions(),
    )
    classified = rows(result.verdicts, {g.case_id: g.knobs for g in generated})
    table = count_table(classified)
    sweep = SweepResult(tuple(generated), result, tuple(classified), tuple(table))
    if write:
        write_outputs(sweep, out, figures)
    return sweep


def write_outputs(sweep: SweepResult, out: Path, figures: str = "never") -> dict[str, Path]:
    import pandas as pd

    from .report import write_reports

    outputs = write_reports(sweep.run, out / "report", None, figures)
    payload = {
        "cases": len(sweep.generated),
        "complete": sweep.run.complete,
        "exit_code": sweep.exit_code,
        "legend": LEGEND,
        "table": list(sweep.table),
        "verdicts": list(sweep.classified),
    }
    json_path, parquet_path = out / "classification.json", out / "classification.parquet"
    json_path.write_text(json.dumps(payload, indent=1, ensure_ascii=False, default=str) + "\n")
    frame = pd.DataFrame(
        [
            {
                k: json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v
                for k, v in r.items()
            }
            for r in sweep.classified
        ]
    )
    frame.to_parquet(parquet_path, index=False)
    return {**outputs, "classification_json": json_path, "classification_parquet": parquet_path}


def summary(sweep: SweepResult) -> str:
    """The count table, the legend of the categories present, and every suspect case."""
    lines = ["", "non-PASS verdicts by status x category x first difference x first failure:"]
    lines.append(format_table(list(sweep.table)))
    present = sorted({r["category"] for r in sweep.table})
    if present:
        lines.append("")
        lines.extend(f"  {c}: {LEGEND[c]}" for c in present if c in LEGEND)
    if sweep.suspects:
        lines.append("")
        lines.append(f"{len(sweep.suspects)} suspect case(s) (reproduce: mlx-parity run FILE):")
        for r in sweep.suspects:
            why = r["reason"] or r["first_failure_detail"] or r["detail"]
            lines.append(f"  {r['category']}: {r['source']}  {why[:200]}")
    tolerated = [r for r in sweep.classified if r["status"] == "pass" and r["detail"]]
    if tolerated:
        lines.append("")
        lines.append(f"{len(tolerated)} PASS verdict(s) not bit-exact (within tolerance):")
        lines.extend(f"  {r['source']}  {r['detail']}" for r in tolerated)
    counts = {
        s: sum(r["status"] == s for r in sweep.classified)
        for s in ("pass", "fail", "error", "skip")
    }
    expected = sum(r["expected"] for r in sweep.classified)
    lines.append("")
    lines.append(
        ", ".join(f"{v} {k}" for k, v in counts.items())
        + f"; {expected} known disagreement(s), {len(sweep.suspects)} suspect(s), "
        f"{len(sweep.crashed)} crash(es)"
    )
    return "\n".join(lines)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness.sweep",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=50, help="number of cases")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--out", type=Path, default=Path("reports/sweep"), help="output directory")
    parser.add_argument(
        "--models",
        type=int,
        default=None,
        help="distinct checkpoints (default: one per ~12 cases, 1 to 5)",
    )
    parser.add_argument("--isolation", choices=["process", "none"], default="process")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per capture")
    parser.add_argument("--figures", choices=["auto", "always", "never"], default="never")
    return parser


def main(argv: list[str] | None = None) -> int:
    from . import offline

    offline()
    args = _parser().parse_args(argv)
    if args.n < 1 or (args.models is not None and args.models < 1) or args.seed < 0:
        print("error: --n and --models must be >= 1, --seed >= 0", file=sys.stderr)
        return EXIT_USAGE
    from . import worker
    from .console import Progress
    from .runner import RunOptions

    try:
        prepare_out(args.out)
    except SweepDirError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.isolation == "process":
        worker.prestart()  # imports the MLX stack while the cases are written
    started = time.monotonic()
    models = args.models or default_model_count(args.n)
    print(f"sweep: {args.n} case(s), seed {args.seed}, {models} checkpoint(s) -> {args.out}")
    signal.signal(signal.SIGTERM, _interrupt)  # a cancelled CI job stops like Ctrl-C
    options = RunOptions(isolation=args.isolation, timeout=args.timeout)
    sweep = run_sweep(
        args.n,
        args.seed,
        args.out,
        models=args.models,
        options=options,
        observe=Progress(interactive=False),
        figures=args.figures,
    )
    print(summary(sweep))
    print(
        f"report: {args.out / 'report'}; classification: {args.out / 'classification.json'} "
        f"(+ parquet); {time.monotonic() - started:.1f}s; exit {sweep.exit_code}"
    )
    return sweep.exit_code


if __name__ == "__main__":
    sys.exit(main())
