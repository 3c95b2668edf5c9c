"""The `golden` path: a recording of another path's capture (`mlx-parity record`), replayed.
Loads no library: it finds `<golden dir>/<architecture>/<case id>/` (the directory comes
from the command line, `--golden-dir`, never from a case) and returns the recorded Capture,
whose stages compare against a live path like any capture (stages kept as digests fail on
any difference, harness.digests).

A recording is refused (the case errors, naming the file) when it is missing, edited,
corrupted or stale (the case's content changed since it was recorded). One made under other
library versions, another platform or MLX backend, or another checkpoint is compared with
a warning row per difference (`environment`), or refused under `--strict`.
"""

from __future__ import annotations

from pathlib import Path

from ..cases import CaseSpec
from ..records import Capture
from . import PathError, SessionOptions


class RecordingUnusable(PathError):
    """The recording of a case cannot be replayed (the case errors, not the run)."""


class GoldenSession:
    name = "golden"
    takes_addon = False
    holds_model = False  # nothing for the executor to release after it

    def __init__(self, model_dir: Path, options: SessionOptions) -> None:
        from .. import provenance
        from ..golden import architecture_of, environment

        self.root = Path(options.golden_dir)
        self.architecture = architecture_of(model_dir)
        self.strict = options.golden_strict
        self.layer_probes = options.layer_probes
        # What a recording is compared with: this machine, and the checkpoint the live
        # path loads.
        self.environment = environment()
        self.checkpoint_hash = provenance.checkpoint_hash(model_dir)

    def capture(self, case: CaseSpec) -> Capture:
        from dataclasses import replace

        from ..golden import (
            RecordingError,
            case_sha256,
            environment_diff,
            read_recording,
            recording_dir,
            to_capture,
        )

        if getattr(self, "perturb_embeddings", None) is not None:
            raise RecordingUnusable("a recording cannot be perturbed (no noise envelope)")
        try:
            directory = recording_dir(self.root, self.architecture, case.id)
            where = _shown(directory)
            if not (directory / "recording.json").exists():
                raise RecordingUnusable(
                    f"no recording of {case.id} in {_shown(self.root)} (looked for {where}); "
                    "make one with `mlx-parity record`"
                )
            meta, arrays = read_recording(directory)
            if meta["case_id"] != case.id or meta["architecture"] != self.architecture:
                raise RecordingUnusable(f"{where} records another case or architecture")
            if meta["case_sha256"] != case_sha256(case, meta["case_addon"]):
                raise RecordingUnusable(
                    f"{where} is stale: {case.source} changed since it was recorded "
                    "(model, messages, images or prefill); record it again"
                )
            capture = to_capture(meta, arrays, where)
        except RecordingError as exc:
            raise RecordingUnusable(str(exc)) from None
        differences = environment_diff(
            {**meta["environment"], "checkpoint_hash": meta["checkpoint"]["hash"]},
            {**self.environment, "checkpoint_hash": self.checkpoint_hash},
        )
        if differences and self.strict:
            listed = "; ".join(f"{k}: {v}" for k, v in differences.items())
            raise RecordingUnusable(f"{where} was recorded elsewhere (--strict): {listed}")
        if not self.layer_probes:  # compare what the live path captures (--no-layer-probes)
            capture = _without_layers(capture)
        return replace(capture, case_id=case.id, environment=differences)

    def close(self) -> None:
        pass


def _shown(path: Path) -> str:
    """A recording's path as the report shows it: relative to the working directory when
    it lies below it (reports are compared across machines)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _without_layers(capture: Capture) -> Capture:
    from dataclasses import replace

    from ..probes import LAYER_OUT, LAYER_PLI
    from ..records import DEEPSTACK_PREFIX, DEEPSTACK_SCALE

    prefixes = tuple(f"{p}." for p in (LAYER_OUT, LAYER_PLI, DEEPSTACK_SCALE)) + (
        DEEPSTACK_PREFIX,
    )
    return replace(
        capture,
        arrays={k: v for k, v in capture.arrays.items() if not k.startswith(prefixes)},
        digests={k: v for k, v in capture.digests.items() if not k.startswith(prefixes)},
    )
