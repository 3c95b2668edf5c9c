"""Measurements behind `make bench`: wall time and peak RSS of whole commands, and a bare
script that only loads both paths and runs their forward passes, in the same process
layout as `mlx-parity run` (one spawned worker per model group). The pytest-benchmark
module in benchmarks/ stays thin and calls these.

    python -m harness.bench bare CASE.yaml [--only PATH] [--repeat N] [--load-only]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BARE_PATHS = ("mlx-vlm", "unified")
# Tokens each bare forward generates (1: the prompt and the first token); a list so the
# spawned worker can be told another count.
MAX_TOKENS = [1]


@dataclass(frozen=True)
class Measurement:
    wall_s: float
    peak_rss_mb: float  # the largest process of the command's tree
    stdout: str


def measure(argv: list[str], env: dict[str, str] | None = None) -> Measurement:
    """Run a command; wall time, and its process tree's peak RSS from wait4()."""
    with tempfile.TemporaryFile("w+") as out:
        start = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {process.returncode}:\n{text[-2000:]}")
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return Measurement(wall, usage.ru_maxrss * scale / 2**20, text)


def median_of(runs: list[Measurement]) -> Measurement:
    return Measurement(
        statistics.median(r.wall_s for r in runs),
        statistics.median(r.peak_rss_mb for r in runs),
        runs[-1].stdout,
    )


# ---- the bare two-path script -------------------------------------------------------------


class _BareNative:
    def __init__(self, model_dir: Path, case: Any) -> None:
        import mlx_vlm

        from .paths.loading import apply_library_fixes, model_type_of

        # What any script needs to run mlx-vlm here (e.g. LLaVA's processor under
        # transformers 5), not harness overhead.
        apply_library_fixes(model_type_of(model_dir))
        self.model, self.processor = mlx_vlm.load(str(model_dir))
        # Processors without a chat template (Gemma 3) render with the tokenizer's.
        self.renderer = self.processor
        if getattr(self.renderer, "chat_template", None) is None:
            self.renderer = getattr(self.processor, "tokenizer", self.processor)

    def forward(self, case: Any) -> float:
        from mlx_vlm.generate import generate_step
        from mlx_vlm.utils import prepare_inputs

        start = time.perf_counter()
        prompt = self.renderer.apply_chat_template(
            case.template_messages(),
            tokenize=False,
            add_generation_prompt=True,
            **case.chat_template_kwargs,
        )
        inputs = prepare_inputs(
            self.processor,
            prompts=[prompt],
            images=[str(p) for p in case.image_files] or None,
            image_token_index=_image_token_id(self.model.config),
        )
        ids, pixels, mask = (
            inputs.pop(k, None) for k in ("input_ids", "pixel_values", "attention_mask")
        )
        steps = generate_step(
            ids,
            self.model,
            pixels,
            mask,
            max_tokens=MAX_TOKENS[0],
            temperature=0.0,
            prefill_step_size=case.prefill_step_size,
            **inputs,
        )
        for _ in range(MAX_TOKENS[0]):
            next(steps)
        steps.close()
        return time.perf_counter() - start


def _image_token_id(config: Any) -> int | None:
    token = getattr(config, "image_token_id", None)
    return token if token is not None else getattr(config, "image_token_index", None)


class _BareUnified:
    def __init__(self, model_dir: Path, case: Any) -> None:
        import mlx_lm

        from .addons import resolve_addon

        model_type = json.loads((model_dir / "config.json").read_text())["model_type"]
        self.addon = resolve_addon(case.addon, model_type)(model_dir)
        loader = getattr(self.addon, "load_text_model", None)
        load = loader if callable(loader) else lambda d: mlx_lm.load(str(d))
        self.model, self.tokenizer = load(model_dir)
        patch = getattr(self.addon, "patch_text_model", None)
        if callable(patch):
            patch(self.model)

    def forward(self, case: Any) -> float:
        import base64

        import mlx.core as mx
        from mlx_lm.generate import generate_step

        start = time.perf_counter()
        clear = getattr(self.addon, "clear_prediction_state", None)
        if callable(clear):  # a new request, as the unified path starts each one
            clear(self.model)
        text = self.tokenizer.apply_chat_template(
            case.template_messages(),
            tokenize=False,
            add_generation_prompt=True,
            **case.chat_template_kwargs,
        )
        tokens = mx.array(self.tokenizer.encode(text, add_special_tokens=False))
        embeddings = None
        if case.has_images:
            images = [base64.b64encode(p.read_bytes()).decode() for p in case.image_files]
            tokens, embeddings = self.addon.compute_embeddings(
                self.model, tokens, images, case.max_size
            )
        steps = generate_step(
            tokens,
            self.model,
            max_tokens=MAX_TOKENS[0],
            input_embeddings=embeddings,
            prefill_step_size=case.prefill_step_size,
        )
        for _ in range(MAX_TOKENS[0]):
            next(steps)
        steps.close()
        return time.perf_counter() - start


BARE = {"mlx-vlm": _BareNative, "unified": _BareUnified}


def _bare_worker(
    conn: Any, model_dir: Path, case: Any, paths: tuple[str, ...], repeat: int, tokens: int = 1
) -> None:
    import gc

    import mlx.core as mx

    from .worker import exit_when_orphaned

    MAX_TOKENS[0] = tokens

    threading.Thread(target=exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    seconds: dict[str, list[float]] = {}
    for path in paths:
        runner = BARE[path](model_dir, case)
        seconds[path] = [runner.forward(case) for _ in range(repeat)]
        del runner
        gc.collect()
        mx.clear_cache()
    conn.send(seconds)


def _load_worker(conn: Any, model_dir: Path, case: Any) -> None:
    import gc

    seconds = {}
    for path, runner_class in BARE.items():
        start = time.perf_counter()
        runner = runner_class(model_dir, case)
        seconds[path] = time.perf_counter() - start
        del runner
        gc.collect()
    conn.send(seconds)


def bare_main(
    case_file: Path, only: str | None, repeat: int, load_only: bool = False, tokens: int = 1
) -> dict[str, Any]:
    from .cases import load_case
    from .models import resolve_model

    case = load_case(case_file)
    model_dir = resolve_model(case)
    paths = (only,) if only else BARE_PATHS
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    if load_only:
        worker = context.Process(target=_load_worker, args=(child, model_dir, case))
    else:
        worker = context.Process(
            target=_bare_worker, args=(child, model_dir, case, paths, repeat, tokens)
        )
    worker.start()
    child.close()
    seconds = parent.recv()
    worker.join()
    return seconds


def main(argv: list[str] | None = None) -> int:
    from . import offline

    offline()
    parser = argparse.ArgumentParser(prog="python -m harness.bench")
    sub = parser.add_subparsers(dest="command", required=True)
    bare = sub.add_parser("bare", help="load both paths and run their forward passes only")
    bare.add_argument("case", type=Path)
    bare.add_argument("--only", choices=BARE_PATHS)
    bare.add_argument("--repeat", type=int, default=1)
    bare.add_argument("--load-only", action="store_true", help="load both paths, no forward")
    bare.add_argument("--tokens", type=int, default=1, help="tokens to generate (1 + decode)")
    args = parser.parse_args(argv)
    print(json.dumps(bare_main(args.case, args.only, args.repeat, args.load_only, args.tokens)))
    return 0


if __name__ == "__main__":
    sys.exit(main())


# ---- the overhead suite -------------------------------------------------------------------


def write_cases(template: Path, directory: Path, copies: int) -> list[Path]:
    """`copies` of a self-contained `template` case, distinct ids. Copies, not includes:
    `include:` may not leave a case's own directory without --allow-include."""
    directory.mkdir(parents=True, exist_ok=True)
    body = template.read_text()
    files = []
    for index in range(copies):
        path = directory / f"case_{index}.yaml"
        path.write_text(f"id: copy-{index}\n{body}")
        files.append(path)
    return files


def harness_command(cases: list[Path], report_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "harness",
        "run",
        *map(str, cases),
        "--report-dir",
        str(report_dir),
        *extra,
    ]


def bare_command(case: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "harness.bench", "bare", str(case), *extra]


def report_bytes(report_dir: Path) -> int:
    return sum(p.stat().st_size for p in report_dir.rglob("*") if p.is_file())


def overhead_suite(template: Path, workdir: Path, rounds: int, copies: int) -> dict[str, float]:
    """Every ratio of the overhead targets, measured in one go, commands interleaved so
    that machine noise hits them alike."""
    one = write_cases(template, workdir / "one", 1)
    many = write_cases(template, workdir / "many", copies)
    runs: dict[str, list[Measurement]] = {}

    def record(name: str, argv: list[str]) -> None:
        runs.setdefault(name, []).append(measure(argv))

    for command in (harness_command(one, workdir / "r1"), bare_command(one[0])):
        measure(command)  # warm-up round: file caches, compiled bytecode
    for _ in range(rounds):
        record("harness", harness_command(one, workdir / "r1"))
        record("bare", bare_command(one[0]))
        record("harness_no_probes", harness_command(one, workdir / "r0", "--no-layer-probes"))
        record("harness_many", harness_command(many, workdir / "rn"))
        record("bare_many", bare_command(one[0], "--repeat", str(copies)))
    for path in BARE_PATHS:
        record(f"alone_{path}", bare_command(one[0], "--only", path))
    m = {name: median_of(values) for name, values in runs.items()}
    marginal_harness = (m["harness_many"].wall_s - m["harness"].wall_s) / (copies - 1)
    marginal_bare = (m["bare_many"].wall_s - m["bare"].wall_s) / (copies - 1)
    largest_alone = max(m[f"alone_{p}"].peak_rss_mb for p in BARE_PATHS)
    return {
        "harness_wall_s": m["harness"].wall_s,
        "bare_wall_s": m["bare"].wall_s,
        "overhead_ratio": m["harness"].wall_s / m["bare"].wall_s,
        "probe_wall_ratio": m["harness"].wall_s / m["harness_no_probes"].wall_s,
        "probe_rss_ratio": m["harness"].peak_rss_mb / m["harness_no_probes"].peak_rss_mb,
        "marginal_case_s": marginal_harness,
        "marginal_bare_forward_s": marginal_bare,
        "marginal_ratio": marginal_harness / marginal_bare,
        "harness_peak_rss_mb": m["harness"].peak_rss_mb,
        "largest_path_alone_rss_mb": largest_alone,
        "rss_ratio": m["harness"].peak_rss_mb / largest_alone,
        "report_kb_per_case": report_bytes(workdir / "rn") / 1024 / copies,
    }


def overhead_pair(
    template: Path, workdir: Path, env: dict[str, str] | None = None
) -> dict[str, float]:
    """The two ratios affordable where forward passes take minutes: one harness run
    against one bare run. The bare worker loads the two paths one after the other, so its
    peak RSS is that of the larger path alone."""
    one = write_cases(template, workdir / "one", 1)
    harness = measure(harness_command(one, workdir / "r1", "--timeout", "3600"), env=env)
    bare = measure(bare_command(one[0]), env=env)
    return {
        "harness_wall_s": harness.wall_s,
        "bare_wall_s": bare.wall_s,
        "overhead_ratio": harness.wall_s / bare.wall_s,
        "harness_peak_rss_mb": harness.peak_rss_mb,
        "largest_path_alone_rss_mb": bare.peak_rss_mb,
        "rss_ratio": harness.peak_rss_mb / bare.peak_rss_mb,
    }
