"""Measurements behind `make bench` for every architecture and for what lies past the first
token: per architecture, the wall time and peak RSS of running its shipped cases, and the
ratio of one image case to its bare forward passes; the cost of each extra decode step
against bare greedy decoding; the cost of the same-path checks (session state, prompt-cache
restore) against a plain capture. The pytest-benchmark module stays thin and calls these."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import yaml

from .bench import Measurement, bare_command, harness_command, measure, median_of


def architecture_cases(cases_root: Path) -> dict[str, list[Path]]:
    """Shipped case files per architecture folder, by the model each case synthesizes
    (cases of real checkpoints are left out: they are skipped where absent)."""
    from .architectures import folder
    from .case_discovery import discover
    from .cases import load_cases

    found: dict[str, list[Path]] = {}
    for path in discover([cases_root]):
        cases, errors = load_cases([path])
        synth = getattr(cases[0].model, "synth", None) if cases and not errors else None
        name = folder(synth) if synth else None
        if name is not None:
            found.setdefault(name, []).append(path)
    return dict(sorted(found.items()))


def _representative(files: list[Path]) -> Path:
    for key in ("one_image", "image"):
        for path in files:
            if key in path.stem:
                return path
    return files[0]


def architecture_suite(cases_root: Path, workdir: Path) -> dict[str, dict[str, float]]:
    results = {}
    for name, files in architecture_cases(cases_root).items():
        if not files:
            continue
        everything = measure(harness_command(files, workdir / name / "all"))
        one = _representative(files)
        single = measure(harness_command([one], workdir / name / "one"))
        bare = measure(bare_command(one))
        results[name] = {
            "cases": float(len(files)),
            "all_cases_wall_s": everything.wall_s,
            "all_cases_peak_rss_mb": everything.peak_rss_mb,
            "one_case_wall_s": single.wall_s,
            "bare_wall_s": bare.wall_s,
            "overhead_ratio": single.wall_s / bare.wall_s,
        }
    return results


def _with(template: Path, directory: Path, **fields: object) -> Path:
    """`template` with `fields` set (replacing its own), as case `bench`."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "case.yaml"
    case = {**yaml.safe_load(template.read_text()), "id": "bench", **fields}
    path.write_text(yaml.safe_dump(case, sort_keys=False))
    return path


def _capture_seconds(report_dir: Path) -> float:
    """Both paths' capture time of the run's one case (its JUnit testcase time): the
    generation loops with the harness's probes, without process start, loads or report."""
    from xml.etree import ElementTree

    (case,) = ElementTree.parse(report_dir / "parity.junit.xml").iter("testcase")
    return float(case.get("time", "nan"))


def _forward_seconds(stdout: str) -> float:
    """Both paths' generation time in the bare script (its JSON line), fastest repeat."""
    seconds = json.loads(stdout.strip().splitlines()[-1])
    return sum(min(values) for values in seconds.values())


def decode_suite(template: Path, workdir: Path, steps: int, rounds: int = 3) -> dict[str, float]:
    """Marginal cost of one decode step, harness against bare: (N steps - 0 steps) / N of
    the generation loops' own time on both sides (process start and loads cost seconds
    and vary by more than the steps do)."""
    zero = _with(template, workdir / "d0", decode_steps=0)
    many = _with(template, workdir / "dn", decode_steps=steps)
    times: dict[str, list[float]] = {}
    for _ in range(rounds):
        for name, case, report in (("h0", zero, "r0"), ("hn", many, "rn")):
            measure(harness_command([case], workdir / report))
            times.setdefault(name, []).append(_capture_seconds(workdir / report))
        for name, tokens in (("b0", 1), ("bn", steps + 1)):
            bare = measure(bare_command(zero, "--tokens", str(tokens), "--repeat", "3"))
            times.setdefault(name, []).append(_forward_seconds(bare.stdout))
    m = {k: statistics.median(v) for k, v in times.items()}
    harness_step = (m["hn"] - m["h0"]) / steps
    bare_step = (m["bn"] - m["b0"]) / steps
    return {
        "decode_steps": float(steps),
        "harness_step_s": harness_step,
        "bare_step_s": bare_step,
        "step_ratio": harness_step / bare_step,
    }


def same_path_suite(template: Path, workdir: Path, rounds: int = 3) -> dict[str, float]:
    """Extra wall time of each same-path check, in units of one plain capture (the
    marginal cost of a second copy of the case): the session-state check (its warm-up
    prompts and the second capture) and the prompt-cache restore (prefix prefill, save,
    load in a fresh cache, suffix), each against the same case without it."""
    plain = _with(template, workdir / "p", decode_steps=0)
    twice = [plain, _with(template, workdir / "p2", decode_steps=0, id="bench2")]
    state = _with(template, workdir / "s", decode_steps=0, session_state=True)
    # The restore needs a prompt of several chunks: a 16-token step, the cut 32 tokens in.
    chunked = _with(template, workdir / "k", decode_steps=0, prefill_step_size=16)
    cache = _with(
        template,
        workdir / "c",
        decode_steps=0,
        prefill_step_size=16,
        prompt_cache={"prefix_chunks": 2},
    )
    runs: dict[str, list[Measurement]] = {}
    for _ in range(rounds):
        for name, argv in (
            ("plain", harness_command([plain], workdir / "rp")),
            ("twice", harness_command(twice, workdir / "r2")),
            ("session_state", harness_command([state], workdir / "rs")),
            ("chunked", harness_command([chunked], workdir / "rk")),
            ("prompt_cache", harness_command([cache], workdir / "rc")),
        ):
            runs.setdefault(name, []).append(measure(argv))
    m = {k: median_of(v).wall_s for k, v in runs.items()}
    capture = m["twice"] - m["plain"]
    return {
        "one_capture_s": capture,
        "session_state_extra_s": m["session_state"] - m["plain"],
        "session_state_in_captures": (m["session_state"] - m["plain"]) / capture,
        "prompt_cache_extra_s": m["prompt_cache"] - m["chunked"],
        "prompt_cache_in_captures": (m["prompt_cache"] - m["chunked"]) / capture,
    }
