"""`mlx-parity` command line: run, list, synth. Exit 0 all pass, 1 a check failed or a case
errored at run time, 2 bad usage or a bad case file, 130 interrupted (the report then holds
the cases that finished, marked incomplete)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

# Heavy imports live inside the commands: `run` first starts a worker, which imports the
# MLX stack while this process parses the cases.
DEFAULT_CASES = Path("cases")
DEFAULT_REPORT_DIR = Path("reports/latest")
STATUS_STYLE = {"pass": "green", "fail": "bold red", "error": "red", "skip": "yellow"}


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a CI job cancelled) stops the run like Ctrl-C: finished cases are reported."""

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def _warm_report_imports() -> None:
    """Import the report's table libraries while the workers run: the parent would
    otherwise idle during the captures and then pay these imports at the end. (matplotlib
    is left out: figures are only drawn for runs that diverged.)"""
    import pandas  # noqa: F401
    import pyarrow.parquet  # noqa: F401


def _cmd_run(args: argparse.Namespace) -> int:
    if args.isolation == "process":
        from . import worker

        worker.prestart()
    from rich.console import Console

    from .cases import load_cases
    from .runner import RunOptions, run_cases

    out, err = Console(), Console(stderr=True)
    cases, errors = load_cases(args.cases or [DEFAULT_CASES])
    threading.Thread(target=_warm_report_imports, daemon=True).start()
    with err.status("starting") as status:

        def observe(event: str, message: str) -> None:
            if event == "verdict":
                err.log(message)
            else:
                status.update(f"{event}: {message}")

        options = RunOptions(
            layer_probes=not args.no_layer_probes,
            keep_tensors=args.report_dir / "captures" if args.keep_tensors else None,
            isolation=args.isolation,
            timeout=args.timeout,
        )
        _interrupt_on_sigterm()
        result = run_cases(cases, errors, observe, options)
    from .report import write_reports

    outputs = write_reports(result, args.report_dir, args.junit, args.figures)

    _print_verdicts(out, result.verdicts)
    out.print(f"report: {outputs['parquet']} (+ csv, md, junit: {outputs['junit']})")
    return result.exit_code


def _print_verdicts(console: object, verdicts: tuple) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"mlx-parity: {len(verdicts)} case(s)")
    table.add_column("case", no_wrap=True)
    for column in ("status", "first divergence", "worst metric", "reason"):
        table.add_column(column, overflow="fold")
    for v in verdicts:
        worst = v.worst_check()
        metric = (
            f"{worst.stage}.{worst.metric}={worst.value:.3g} (<= {worst.threshold:.3g})"
            if worst
            else ""
        )
        status = f"[{STATUS_STYLE[v.status.value]}]{v.status.value}[/]"
        table.add_row(
            escape(v.case_id), status, v.first_divergence or "", escape(metric), escape(v.reason)
        )
    console.print(table)


def _cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from .cases import load_cases

    cases, errors = load_cases(args.cases or [DEFAULT_CASES])
    table = Table(title="cases")
    table.add_column("id", no_wrap=True)
    for column in ("model", "paths", "images", "prefill", "markers", "file"):
        table.add_column(column, overflow="fold")
    for c in cases:
        table.add_row(
            c.id,
            c.model_label(),
            f"{c.paths.reference} vs {c.paths.candidate}",
            str(len(c.image_files)),
            str(c.prefill_step_size),
            ",".join(c.markers),
            c.source,
        )
    console = Console()
    console.print(table)
    for e in errors:
        console.print(f"[red]error[/] {e}")
    return 2 if errors else 0


def _parse_option(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import ensure_checkpoint

    print(ensure_checkpoint(args.model_type, dict(args.option)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mlx-parity", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run cases and write the report")
    run.add_argument(
        "cases", nargs="*", type=Path, help="case files or directories (default: cases/)"
    )
    run.add_argument("--report-dir", type=Path, default=DEFAULT_REPORT_DIR)
    run.add_argument(
        "--junit", type=Path, default=None, help="JUnit XML path (default: in report dir)"
    )
    run.add_argument(
        "--figures",
        choices=["auto", "always", "never"],
        default="auto",
        help="per-layer and image-token figures: auto draws them when a case diverged",
    )
    run.add_argument(
        "--keep-tensors",
        action="store_true",
        help="also write every capture's full tensors to REPORT_DIR/captures/ (safetensors)",
    )
    run.add_argument(
        "--no-layer-probes",
        action="store_true",
        help="skip per-decoder-layer probes (capture embeddings, ids and logits only)",
    )
    run.add_argument(
        "--isolation",
        choices=["process", "none"],
        default="process",
        help="run path sessions in worker processes (default) so a crash fails one case",
    )
    run.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per case capture or model load"
    )
    run.set_defaults(handler=_cmd_run)

    lister = sub.add_parser("list", help="validate and list cases")
    lister.add_argument("cases", nargs="*", type=Path)
    lister.set_defaults(handler=_cmd_list)

    synth = sub.add_parser("synth", help="build (or find cached) a synthesized checkpoint")
    synth.add_argument("model_type", help="e.g. gemma4")
    synth.add_argument(
        "-o",
        "--option",
        action="append",
        type=_parse_option,
        default=[],
        metavar="KEY=VALUE",
        help="synthesizer option, e.g. hidden_size=48",
    )
    synth.set_defaults(handler=_cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ValueError, LookupError) as exc:  # CaseError and pydantic errors included
        from rich.console import Console

        from .cases import CaseError

        label = "" if isinstance(exc, CaseError) else f"{type(exc).__name__}: "
        Console(stderr=True).print(f"error: {label}{exc}", markup=False, highlight=False)
        return 2


if __name__ == "__main__":
    sys.exit(main())
