"""`mlx-parity` command line: run, list, synth. See `mlx-parity run --help` for exit codes."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

# Heavy imports live inside the commands: `run` first starts a worker, which imports the
# MLX stack while this process parses the cases.
DEFAULT_CASES = Path("cases")
DEFAULT_REPORT_DIR = Path("reports/latest")
DEFAULT_GOLDEN_DIR = Path("reference")  # recordings (`record`, `run --replay`, `drift`)
MAX_IMAGE_PIXELS = 50_000_000  # harness.cases.MAX_IMAGE_PIXELS (not imported: it is heavy)


def _interrupt_on_sigterm() -> None:
    """SIGTERM (a CI job cancelled) stops the run like Ctrl-C: finished cases are reported.
    Only the first SIGTERM or SIGINT interrupts; later ones are ignored while the run winds
    down (stops its workers, writes the report), so a second signal cannot cut that short."""
    interrupted = False

    def handler(signum: int, frame: object) -> None:
        nonlocal interrupted
        if not interrupted:
            interrupted = True
            raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # nohup, `cmd &`: stays ignored
        signal.signal(signal.SIGINT, handler)


EXIT_CODES = """exit codes:
  0    every selected case was compared and passed (skips allowed unless --strict)
  1    a check failed, a case errored at run time, or (--strict) a case was skipped
  2    bad usage, a bad case file or argument, or an unusable report directory
       (other cases still run and are reported)
  5    no case was compared (all skipped, or none selected), like pytest's 5
  130  interrupted (SIGINT/SIGTERM): the report holds the finished cases, marked incomplete
"""


def _select(cases: list, errors: list, args: argparse.Namespace) -> tuple[list, list]:
    from .select import keyword_matches, marker_matches

    if args.keyword:
        cases = [c for c in cases if keyword_matches(args.keyword, c.id)]
        errors = [e for e in errors if keyword_matches(args.keyword, e.case_id)]
    if args.marker:
        cases = [c for c in cases if marker_matches(args.marker, c.markers)]
    return cases, errors


def _cmd_run(args: argparse.Namespace) -> int:
    from .policy import ImportPolicy
    from .report_files import check_report_dir

    problem = check_report_dir(args.report_dir, junit=args.junit)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    imports = ImportPolicy.from_sources(args.allow_import)
    if args.isolation == "process":
        from . import worker

        worker.prestart()
    from .cases import load_cases
    from .console import Progress, print_table
    from .runner import RunOptions, run_cases

    cases, errors = load_cases(args.cases or [DEFAULT_CASES], **_load_options(args))
    cases, errors = _select(cases, errors, args)
    mode = "drift" if args.command == "drift" else "replay" if args.replay else None
    if mode:  # run against recordings (harness.golden_run)
        from .golden_run import against_recordings

        cases, more = against_recordings(cases, mode)
        errors = [*errors, *more]
    from .case_yaml import restrict_image_formats

    restrict_image_formats()  # in-process runs decode images here
    # Replacing the last report with an INCOMPLETE one imports the report's libraries (~1 s)
    # while the worker starts; joined before the final report is written.
    placeholder = threading.Thread(target=_report_in_progress, args=(args,), daemon=True)
    placeholder.start()
    options = RunOptions(
        layer_probes=not args.no_layer_probes,
        keep_tensors=args.report_dir / "captures" if args.keep_tensors else None,
        isolation=args.isolation,
        timeout=args.timeout,
        imports=imports,
        trust_remote_code=args.trust_remote_code,
        strict=args.strict,
        max_image_pixels=args.max_image_pixels,
        golden_dir=args.golden_dir,
    )
    if args.keep_tensors:  # captures are written into the report dir as the run goes
        placeholder.join()
    progress = Progress()
    _interrupt_on_sigterm()
    if progress.interactive:
        from rich.console import Console

        with Console(stderr=True).status("starting") as status:
            progress.status = status
            result = run_cases(cases, errors, progress, options)
        progress.status = None
    else:
        result = run_cases(cases, errors, progress, options)
    from .report import write_reports

    placeholder.join()
    outputs = write_reports(result, args.report_dir, args.junit, args.figures)
    if progress.interactive:
        print_table(result.verdicts)
    counts = ", ".join(
        f"{sum(v.status.value == s for v in result.verdicts)} {s}"
        for s in ("pass", "fail", "error", "skip")
    )
    print(f"{counts} in {time.monotonic() - progress.started:.1f}s; exit {result.exit_code}")
    print(f"report: {outputs['parquet']} (+ csv, md, junit: {outputs['junit']})")
    if mode == "drift":
        from .golden_run import drift_lines

        print("\n".join(["what moved since the recordings:", *drift_lines(result.verdicts)]))
    return result.exit_code


def _report_in_progress(args: argparse.Namespace) -> None:
    """Replace the last run's report with an INCOMPLETE one before any case runs: a run
    killed outright (out of memory, SIGKILL) must not leave an old green report behind."""
    from .report import write_reports
    from .runner import RunResult, utc_now

    now = utc_now()
    write_reports(RunResult((), now, now, complete=False), args.report_dir, args.junit, "never")


def _load_options(args: argparse.Namespace) -> dict:
    """Keyword arguments of `load_cases` that the command line widens."""
    return {"include_roots": tuple(args.allow_include)}


def _cmd_list(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .cases import CaseError, load_cases
    from .console import _clean

    def cell(value: object) -> Text:
        # Text, not a markup string: case data such as "[/x]" or "[link=...]" is literal.
        return Text(_clean(str(value)))

    cases, errors = load_cases(args.cases or [DEFAULT_CASES], **_load_options(args))
    cases, errors = _select(cases, errors, args)
    table = Table(title="cases")
    table.add_column("id", no_wrap=True)
    for column in ("model", "paths", "images", "prefill", "markers", "file"):
        table.add_column(column, overflow="fold")
    for c in cases:
        try:
            images = len(c.image_files)
        except CaseError as exc:  # an image path that escapes: that case's error only
            errors.append(exc)
            continue
        paths = " vs ".join(c.paths.names())
        row = (c.id, c.model_label(), paths, images, c.prefill_step_size, ",".join(c.markers))
        table.add_row(*map(cell, (*row, c.source)))
    console = Console()
    console.print(table)
    for e in errors:
        line = Text.assemble(("error", "red"), " ", _clean(str(e)))
        console.print(line, markup=False, soft_wrap=True)
    return 2 if errors else 0


def _parse_option(text: str) -> tuple[str, object]:
    import yaml

    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key, yaml.safe_load(value)


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import SynthesisError, ensure_checkpoint

    try:
        print(ensure_checkpoint(args.model_type, dict(args.option)))
    except SynthesisError as exc:  # valid options that still failed to build: a failure
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


DIFF_EXIT_CODES = """exit codes:
  0    no case went from pass to fail or error (other changes are listed, not failed)
  1    a case went from pass to fail or error between OLD and NEW
  2    bad usage, or a report that cannot be read
"""


def _cmd_diff(args: argparse.Namespace) -> int:
    from .report_diff import ReportError, diff_reports
    from .report_diff_format import format_markdown, format_text

    try:
        diff = diff_reports(args.old, args.new)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    render = format_markdown if args.format == "md" else format_text
    sys.stdout.write(render(diff, args.max_rows))
    return diff.exit_code


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's default shown where it has one; epilogs (exit codes) kept as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, [], argparse.SUPPRESS) or "default" in text:
            return text
        return f"{text} (default: {default})".strip()


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("mlx-parity")
    except metadata.PackageNotFoundError:
        return "unknown"


def _add_selection(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "cases",
        nargs="*",
        type=Path,
        help=f"case files or directories (default: {DEFAULT_CASES}/)",
    )
    parser.add_argument(
        "-k",
        dest="keyword",
        metavar="EXPR",
        default=None,
        help="only cases whose id matches EXPR (substrings with and/or/not, as in pytest)",
    )
    parser.add_argument(
        "-m",
        dest="marker",
        metavar="EXPR",
        default=None,
        help="only cases whose markers match EXPR (e.g. 'image and not slow')",
    )
    parser.add_argument(
        "--allow-include",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="let include: reach files under DIR too (default: only the cases root)",
    )


def _add_run_options(run: argparse.ArgumentParser) -> None:
    run.add_argument(
        "--report-dir",
        type=Path,
        default=DEFAULT_REPORT_DIR,
        help="where the report is written (replaced as a whole when the run ends)",
    )
    run.add_argument(
        "--junit", type=Path, default=None, help="JUnit XML path (default: in the report dir)"
    )
    run.add_argument(
        "--figures",
        choices=["auto", "always", "never"],
        default="auto",
        help="per-layer and image-token figures: auto draws them for diverging cases",
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
        help="run path sessions in worker processes so a crash fails one case",
    )
    run.add_argument(
        "--timeout", type=float, default=600.0, help="seconds per case capture or model load"
    )
    run.add_argument(
        "--strict", action="store_true", help="a skipped case fails the run (exit 1)"
    )
    run.add_argument(
        "--allow-import",
        action="append",
        default=[],
        metavar="MODULE",
        help="let cases name 'MODULE[.sub]:Class' add-ons and paths (repeatable; also "
        "$MLX_PARITY_ALLOW_IMPORT, comma-separated); built-in names need nothing",
    )
    run.add_argument(
        "--max-image-pixels",
        type=int,
        default=MAX_IMAGE_PIXELS,
        metavar="N",
        help="refuse images with more pixels than N (decompression bombs), per case",
    )
    run.add_argument(
        "--trust-remote-code",
        action="store_true",
        help="let cases that set trust_remote_code run their checkpoint's own code",
    )
    run.add_argument(
        "--golden-dir",
        type=Path,
        default=DEFAULT_GOLDEN_DIR,
        metavar="DIR",
        help="where the `golden` path reads recordings (DIR/<architecture>/<case id>/)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx-parity", description=__doc__, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="run cases and write the report",
        description="Run cases on both paths, compare them stage by stage, write the report.",
        epilog=EXIT_CODES,
        formatter_class=_HelpFormatter,
    )
    _add_selection(run)
    _add_run_options(run)
    run.add_argument(
        "--replay",
        action="store_true",
        help="compare each case's candidate against the recording of its reference "
        "(--golden-dir) instead of running the reference",
    )
    run.set_defaults(handler=_cmd_run)

    from .cli_golden import add_golden_commands

    add_golden_commands(sub)  # drift, record

    lister = sub.add_parser(
        "list", help="validate and list cases", formatter_class=_HelpFormatter
    )
    _add_selection(lister)
    lister.add_argument(
        "--architectures",
        action="store_true",
        help="list the architectures (harness/architectures/) and the cases covering them",
    )
    lister.set_defaults(handler=_cmd_list)

    synth = sub.add_parser(
        "synth",
        help="build (or find cached) a synthesized checkpoint",
        formatter_class=_HelpFormatter,
    )
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

    diff = sub.add_parser(
        "diff",
        help="compare two runs' reports",
        description="Which cases changed status, which gating checks moved and by how much, "
        "and which versions, commit or checkpoints changed between two reports.",
        epilog=DIFF_EXIT_CODES,
        formatter_class=_HelpFormatter,
    )
    diff.add_argument("old", type=Path, help="the earlier report directory or its parity.parquet")
    diff.add_argument("new", type=Path, help="the later report directory or its parity.parquet")
    diff.add_argument(
        "--format", choices=["text", "md"], default="text", help="md: for a pull-request comment"
    )
    diff.add_argument(
        "--max-rows", type=int, default=50, metavar="N", help="stage moves shown (0: all)"
    )
    diff.set_defaults(handler=_cmd_diff)

    from . import doctor

    sub.add_parser(
        "doctor",
        help="versions, backend, caches, and whether this stack is in the tested matrix",
        description=doctor.__doc__,
        formatter_class=_HelpFormatter,
    ).set_defaults(handler=lambda args: doctor.main())
    return parser


def _cmd_architectures(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from .architectures import describe
    from .cases import load_cases

    cases, _ = load_cases(args.cases or [DEFAULT_CASES], **_load_options(args))
    rows = describe(cases)
    table = Table(title="architectures")
    for column in rows[0] if rows else ["architecture"]:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(escape(value) for value in row.values()))
    Console().print(table)
    return 0


def main(argv: list[str] | None = None) -> int:
    from . import offline

    offline()
    args = build_parser().parse_args(argv)
    if getattr(args, "architectures", False):
        args.handler = _cmd_architectures
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
