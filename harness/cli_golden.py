"""The `record` and `drift` subcommands (harness.golden_run); `run --replay` and
`--golden-dir` live with `run` in harness.cli."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_golden_commands(sub: argparse._SubParsersAction) -> None:
    from . import cli

    drift = sub.add_parser(
        "drift",
        help="run each case's reference path against its recording: what moved",
        description="Run each case's reference path live (today's libraries) against its "
        "recording (--golden-dir) and report, per case and stage, what moved and which "
        "library versions, platform or checkpoint differ from the recording's.",
        epilog=cli.EXIT_CODES,
        formatter_class=cli._HelpFormatter,
    )
    cli._add_selection(drift)
    cli._add_run_options(drift)
    for action in drift._actions:  # its own report directory, shown as the default
        if action.dest == "report_dir":
            action.default = Path("reports/drift")
    drift.set_defaults(handler=cli._cmd_run, replay=False)

    record = sub.add_parser(
        "record",
        help="record each case's reference capture (replayed as the path `golden`)",
        description="Run each case's reference path and write its capture to "
        "OUT/<architecture>/<case id>/ (arrays.safetensors + recording.json): ids, "
        "positions, attention masks, logits and tokens exactly, hidden states as sha256 + "
        "statistics (--full: every stage exactly). Same inputs, same bytes.",
        epilog="exit codes: 0 every selected case recorded (skips allowed), 1 a case failed, "
        "2 a bad case file or argument",
        formatter_class=cli._HelpFormatter,
    )
    cli._add_selection(record)
    record.add_argument(
        "--out", type=Path, default=cli.DEFAULT_GOLDEN_DIR, help="where recordings are written"
    )
    record.add_argument(
        "--full", action="store_true", help="keep every stage's values, not digests"
    )
    record.add_argument(
        "--logits",
        choices=["auto", "full", "topk"],
        default="auto",
        help="auto: the full vocabulary of synthesized checkpoints, top-k + log-sum-exp of "
        "real ones (--full: always full)",
    )
    for flag, kwargs in (
        ("--isolation", {"choices": ["process", "none"], "default": "process"}),
        ("--timeout", {"type": float, "default": 600.0}),
        ("--allow-import", {"action": "append", "default": [], "metavar": "MODULE"}),
        ("--max-image-pixels", {"type": int, "default": cli.MAX_IMAGE_PIXELS, "metavar": "N"}),
        ("--trust-remote-code", {"action": "store_true"}),
    ):
        record.add_argument(flag, help="as for `run`", **kwargs)
    record.set_defaults(handler=_cmd_record)


def _cmd_record(args: argparse.Namespace) -> int:
    from . import cli
    from .case_yaml import restrict_image_formats
    from .cases import load_cases
    from .golden_run import record_cases
    from .policy import ImportPolicy
    from .runner import RunOptions

    cases, errors = load_cases(args.cases or [cli.DEFAULT_CASES], **cli._load_options(args))
    cases, errors = cli._select(cases, errors, args)
    restrict_image_formats()
    options = RunOptions(
        isolation=args.isolation,
        timeout=args.timeout,
        imports=ImportPolicy.from_sources(args.allow_import),
        trust_remote_code=args.trust_remote_code,
        max_image_pixels=args.max_image_pixels,
    )
    for error in errors:
        print(f"ERROR {error}", file=sys.stderr)

    def observe(event: str, message: object) -> None:
        if event == "load":
            print(f"  loading {message}", file=sys.stderr)

    cli._interrupt_on_sigterm()
    results = record_cases(
        cases, args.out, options, full=args.full, logits=args.logits, observe=observe
    )
    total = 0
    for r in results:
        if r.directory is not None:
            total += r.size
            print(f"recorded {r.case_id} -> {r.directory} ({r.size / 1024:.1f} KiB)")
        else:
            print(f"{'SKIP' if r.skipped else 'ERROR'} {r.case_id}: {r.error}")
    written = sum(r.directory is not None for r in results)
    print(f"{written} recorded ({total / 1024:.1f} KiB), {len(results) - written} not")
    if errors or any(r.config_error for r in results):
        return 2
    return 1 if any(r.error and not r.skipped for r in results) else 0
