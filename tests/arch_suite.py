"""What every architecture's test module (tests/test_<arch>.py) does the same way: one run
of the shipped cases of cases/<arch>/ with each mutant add-on of tests/<arch>_mutants.py
under each profile and each control, and the checks of its verdicts.

A module keeps its own lists (MUTANTS, CONTROLS), its own tests and whatever only its
architecture has; these are plain functions. This is not a test module: pytest does not
rewrite its asserts, so each one says what it saw."""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import CASES

from harness.cases import load_case, load_cases
from harness.policy import ImportPolicy
from harness.records import Status, stage_rank
from harness.runner import RunOptions, run_cases

# The shipped exact profile and the engine's looser image profile.
PROFILES = ["exact", "image"]
# The stages every architecture's run captures.
STAGES = frozenset({"input_ids", "embeddings", "attention_mask", "layer.0", "logits"})


# --- the cases -----------------------------------------------------------------------------


def case(arch: str, name: str):
    """The shipped case cases/<arch>/<name>.yaml."""
    return load_case(CASES / arch / f"{name}.yaml")


def shipped_ids(arch: str) -> list[str]:
    """The ids of the shipped cases of cases/<arch>/, sorted."""
    return sorted(p.stem for p in (CASES / arch).glob(f"{arch}_*.yaml"))


def shipped_cases(arch: str) -> list:
    """Every shipped case of cases/<arch>/; every file loads."""
    shipped, errors = load_cases([CASES / arch])
    assert not errors, errors
    return list(shipped)


def with_image_prompt(base, case_id: str, image: str, text: str = "Hello"):
    """`base` asked about `image` alone: one user message, the image then `text`."""
    content = [{"type": "image", "image": image}, {"type": "text", "text": text}]
    messages = [{"role": "user", "content": content}]
    return type(base).model_validate({**base.model_dump(), "id": case_id, "messages": messages})


def mutant_case(base, arch: str, mutant: str, case_id: str, **update):
    """`base` with the add-on <arch>_mutants:<mutant>, as `case_id`."""
    return base.model_copy(update={"id": case_id, "addon": f"{arch}_mutants:{mutant}", **update})


def mutant_cases(
    arch: str,
    load: Callable[[str], Any],
    mutants: Iterable[Sequence[str]],
    profiles: Sequence[str] = PROFILES,
    **update,
) -> list:
    """Each (case, mutant, ...) under each profile, as "<case>--<mutant>--<profile>"."""
    return [
        mutant_case(
            load(name), arch, mutant, f"{name}--{mutant}--{profile}", profile=profile, **update
        )
        for name, mutant, *_ in mutants
        for profile in profiles
    ]


def control_cases(
    arch: str, load: Callable[[str], Any], controls: Iterable[Sequence[str]], **update
) -> list:
    """Each (case, mutant) under the case's own profile, as "<case>--<mutant>"."""
    return [
        mutant_case(load(name), arch, mutant, f"{name}--{mutant}", **update)
        for name, mutant in controls
    ]


def run(arch: str, cases: list, **options):
    """One `run_cases` of `cases`, allowed to import tests/<arch>_mutants.py."""
    imports = ImportPolicy((f"{arch}_mutants",))
    return run_cases(cases, options=RunOptions(imports=imports, **options))


def arch_run(
    arch: str,
    mutants: Iterable[Sequence[str]],
    controls: Iterable[Sequence[str]] = (),
    *,
    extra: Iterable = (),
    load: Callable[[str], Any] | None = None,
    controls_first: bool = False,
    **options,
):
    """The module's run: the shipped cases of cases/<arch>/, each (case, mutant) under each
    profile, each control, then `extra`, in that order (the controls before the mutants
    with `controls_first`: a session runs its cases in list order). `load` maps a case
    name to its case (default: the shipped file); `options` go to RunOptions."""
    load = load or (lambda name: case(arch, name))
    broken = mutant_cases(arch, load, mutants)
    invisible = control_cases(arch, load, controls)
    middle = invisible + broken if controls_first else broken + invisible
    return run(arch, [*shipped_cases(arch), *middle, *extra], **options)


# --- the verdicts --------------------------------------------------------------------------


def verdict(run, case_id: str):
    """The one verdict of `case_id`."""
    matches = [v for v in run.verdicts if v.case_id == case_id]
    assert len(matches) == 1, f"{case_id}: {len(matches)} verdicts"
    return matches[0]


def check(v, stage: str, metric: str | None = "max_abs_diff"):
    """The one check row of `stage` (and `metric`; None: the stage's only row)."""
    rows = [c for c in v.checks if c.stage == stage and (metric is None or c.metric == metric)]
    assert len(rows) == 1, (stage, metric, [(c.stage, c.metric) for c in v.checks])
    return rows[0]


def prefill_chunks(v) -> list[int]:
    """The candidate path's prefill schedule: the length of each forward call."""
    return [int(n) for n in v.provenance["candidate_prefill_chunks"].split(",")]


def assert_prefill_splits(v, low: int, high: int, at_least: int = 1) -> list[int]:
    """At least `at_least` chunk edges e (the prompt length before a call) with
    low < e <= high: the schedule cuts the span there. Returns the chunks."""
    chunks = prefill_chunks(v)
    edges = [sum(chunks[: i + 1]) for i in range(len(chunks) - 1)]
    assert sum(low < edge <= high for edge in edges) >= at_least, chunks
    return chunks


def assert_bit_exact(v, stages: Iterable[str] = ()) -> None:
    """PASS with no difference anywhere: every max_abs metric 0, the common stages and
    `stages` captured, and the same prefill schedule on both paths."""
    assert v.status is Status.PASS, v.reason or v.first_failure_detail
    assert v.first_difference is None, v.first_difference_detail
    assert all(c.value == 0 for c in v.checks if c.metric.startswith("max_abs")), [
        (c.stage, c.metric, c.value) for c in v.checks if c.value
    ]
    wanted, captured = STAGES | set(stages), {c.stage for c in v.checks}
    assert wanted <= captured, sorted(wanted - captured)
    # Same prefill schedule on both paths: exact parity holds only for equal schedules.
    reference = v.provenance["reference_prefill_chunks"]
    candidate = v.provenance["candidate_prefill_chunks"]
    assert reference == candidate, (reference, candidate)


def assert_fails_at(v, stage: str, first_failure: str | None = None) -> None:
    """A gating FAIL whose first difference is at `stage`, failing first at
    `first_failure` (default `stage`), with nothing failing at an earlier stage and, for a
    mistake past the tokens, input_ids checked (and passed) before it."""
    first_failure = stage if first_failure is None else first_failure
    gating_failures = [c for c in v.checks if c.gating and not c.passed]
    assert v.status is Status.FAIL and gating_failures, v.reason
    assert v.first_divergence == stage, (v.first_divergence, stage)
    assert v.first_failure == first_failure, (v.first_failure, first_failure)
    failing = {c.stage for c in v.checks if not c.passed}
    assert all(stage_rank(s) >= stage_rank(stage) for s in failing), (failing, stage)
    if stage != "input_ids":
        before = {c.stage for c in v.checks if stage_rank(c.stage) < stage_rank(stage)}
        assert "input_ids" in before, before


def assert_control_passes(v, *, no_difference: bool = True) -> None:
    """PASS, and (with `no_difference`) no difference at any stage either."""
    assert v.status is Status.PASS, v.first_failure_detail
    if no_difference:
        assert v.first_difference is None, v.first_difference_detail


def assert_bos_caught(v, position: int) -> None:
    """FAIL at input_ids, the mismatch a <bos> at `position`."""
    assert v.status is Status.FAIL and v.first_failure == "input_ids", (
        v.status,
        v.first_failure,
    )
    ids = check(v, "input_ids", None)
    assert f"position {position}" in ids.detail and "<bos>" in ids.detail, ids.detail


# --- the synthesizer -----------------------------------------------------------------------


def _synth(arch: str):
    return importlib.import_module(f"harness.architectures.{arch}.synth")


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_same_spec_same_bytes(arch: str, tmp_path: Path, **spec) -> None:
    """The synthesizer builds the same Spec(**spec) twice, into two folders, to the same
    bytes, file by file (a model.safetensors among them)."""
    synth = _synth(arch)
    built = synth.Spec(**spec)
    digests = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        synth.build(built, out)
        digests.append(_digests(out))
    assert digests[0] == digests[1], [n for n in digests[0] if digests[0][n] != digests[1].get(n)]
    assert "model.safetensors" in digests[0], digests[0]


def assert_option_refused(arch: str, options: dict, field: str) -> None:
    """The synthesizer's Spec refuses `options`, naming `field` first."""
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        _synth(arch).Spec.model_validate(options)
    assert info.value.errors()[0]["loc"] == (field,), info.value.errors()
