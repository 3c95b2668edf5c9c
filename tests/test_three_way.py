"""Three-way cases and known deviations, on hand-made captures (no model, no torch): the
schema refuses what cannot be checked, a declared deviation found in the arrays is a
non-gating `known_deviation` row, an undeclared one fails, a declared one the arrays do
not bear out fails, and a non-finite value always fails."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from conftest import CASES

from harness.cases import CaseError, KnownDeviation, load_case
from harness.compare import verdict
from harness.records import Capture, Status
from harness.three_way import DEVIATION_CHECK, TABLE_CHECK, label, markdown, table

PAD_ID_CASE = CASES / "three_way" / "three_way_gemma4_pad_id.yaml"
DEVIATION = KnownDeviation(stage="per_layer_inputs", reason="pad id")


def _capture(path: str, pli_shift: float = 0.0, logits_shift: float = 0.0) -> Capture:
    rng = np.random.default_rng(0)
    arrays = {
        "input_ids": np.arange(6, dtype=np.int64),
        "per_layer_inputs": rng.standard_normal((6, 2, 4)).astype(np.float32) + pli_shift,
        "embeddings": rng.standard_normal((6, 8)).astype(np.float32),
        "logits": rng.standard_normal(32).astype(np.float32) + logits_shift,
        "tokens": np.array([3, 4, 5], dtype=np.int32),
    }
    dtypes = {k: str(v.dtype) for k, v in arrays.items()}
    return Capture(path, "c", arrays, dtypes, (6,))


def _case(**update):
    case = load_case(PAD_ID_CASE)
    return case.model_copy(update={"decode_steps": 0, "noise_envelope": 0, **update})


def _rows(v, check):
    return [c for c in v.checks if c.check == check]


def test_agreeing_three_paths_pass_with_a_table_row_per_stage_and_pair():
    ref, cand, third = _capture("mlx-vlm"), _capture("unified"), _capture("transformers")
    v = verdict(_case(known_deviations=[]), ref, cand, third=third)
    assert v.status is Status.PASS
    pairs = {c.metric.rsplit(":", 1)[0] for c in _rows(v, TABLE_CHECK)}
    assert pairs == {
        label("mlx-vlm", "unified"),
        *(label(p, "transformers") for p in ("mlx-vlm", "unified")),
    }
    assert all(c.value == 0 and not c.gating for c in _rows(v, TABLE_CHECK))


def test_undeclared_deviation_fails_at_its_stage():
    ref, cand = _capture("mlx-vlm"), _capture("unified")
    third = _capture("transformers", pli_shift=1.5, logits_shift=2.0)
    v = verdict(_case(known_deviations=[]), ref, cand, third=third)
    assert v.status is Status.FAIL
    assert v.first_failure == "per_layer_inputs"
    assert "~transformers:" in v.first_failure_detail or any(
        "~transformers:" in c.metric
        for c in v.checks
        if c.stage == "per_layer_inputs" and not c.passed
    )


def test_declared_deviation_found_is_reported_not_failed():
    ref, cand = _capture("mlx-vlm"), _capture("unified")
    third = _capture("transformers", pli_shift=1.5, logits_shift=2.0)
    v = verdict(_case(known_deviations=[DEVIATION]), ref, cand, third=third)
    assert v.status is Status.PASS, v.first_failure_detail
    found = _rows(v, DEVIATION_CHECK)
    assert len(found) == 2 and all(r.passed and not r.gating for r in found)
    assert all("deviates from transformers (authoritative)" in r.detail for r in found)
    # The later stages the deviation explains are still reported, as diagnostics.
    logits = [c for c in v.checks if c.stage == "logits" and c.check == "allclose"]
    assert logits and all(not c.passed and not c.gating for c in logits)
    cells = {(r["stage"], r["pair"]): r["status"] for r in table([v])}
    assert cells[("per_layer_inputs", "mlx-vlm~transformers")] == "known"
    assert cells[("per_layer_inputs", "mlx-vlm~unified")] == "ok"
    text = markdown([v])
    assert "three_way_gemma4_pad_id" in text.replace("\\", "") and "(known)" in text


def test_declared_deviation_not_found_fails_as_stale():
    ref, cand, third = _capture("mlx-vlm"), _capture("unified"), _capture("transformers")
    v = verdict(_case(known_deviations=[DEVIATION]), ref, cand, third=third)
    assert v.status is Status.FAIL
    stale = _rows(v, DEVIATION_CHECK)
    assert stale and all(not r.passed and r.gating for r in stale)
    assert "declared but not found" in stale[0].detail


def test_deviation_earlier_than_declared_still_fails():
    ref, cand = _capture("mlx-vlm"), _capture("unified")
    third = _capture("transformers", pli_shift=1.5)
    late = KnownDeviation(stage="logits", reason="declared too late")
    v = verdict(_case(known_deviations=[late]), ref, cand, third=third)
    assert v.status is Status.FAIL and v.first_failure == "per_layer_inputs"


def test_non_finite_values_fail_even_under_a_known_deviation():
    ref, cand = _capture("mlx-vlm"), _capture("unified")
    third = _capture("transformers", pli_shift=1.5)
    third.arrays["logits"][3] = np.nan
    v = verdict(_case(known_deviations=[DEVIATION]), ref, cand, third=third)
    assert v.status is Status.FAIL and v.first_failure == "logits"
    assert any(c.metric.endswith("non_finite") and c.gating for c in v.checks)


def test_deviation_between_reference_and_candidate_of_a_two_path_case():
    ref, cand = _capture("mlx-vlm"), _capture("transformers", pli_shift=1.5)
    case = _case(
        paths=_case().paths.model_copy(update={"third": None, "candidate": "transformers"})
    )
    assert (
        verdict(case.model_copy(update={"known_deviations": []}), ref, cand).status is Status.FAIL
    )
    v = verdict(case, ref, cand)
    assert v.status is Status.PASS, v.first_failure_detail
    (row,) = _rows(v, DEVIATION_CHECK)
    assert row.passed and row.metric.startswith("mlx-vlm~transformers:")


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("authority: mlx-lm\n", "authority"),
        ("paths: {reference: mlx-vlm, candidate: unified, third: mlx-vlm}\n", "paths"),
        (
            "known_deviations: [{stage: logits, reason: x, paths: [mlx-vlm, mlx-lm]}]\n",
            "known_deviations",
        ),
        ("known_deviations: [{stage: logitz, reason: x}]\n", "known_deviations.0.stage"),
        ("known_deviations: [{stage: logits, reason: ''}]\n", "known_deviations.0.reason"),
        (
            "paths: {reference: mlx-vlm, candidate: transformers}\n"
            "known_deviations: [{stage: input_ids, reason: x}]\n",
            "known_deviations",
        ),
    ],
)
def test_schema_refuses_what_cannot_be_checked(tmp_path, text, field):
    path = tmp_path / "case.yaml"
    path.write_text(
        "model: {synth: gemma4}\nmessages: [{role: user, content: hi}]\n" + text,
        encoding="utf-8",
    )
    with pytest.raises(CaseError) as error:
        load_case(path)
    assert f"{field}:" in str(error.value), str(error.value)


def test_shipped_three_way_cases_declare_what_the_notes_say():
    cases = {p.stem: load_case(p) for p in (CASES / "three_way").glob("three_way_*.yaml")}
    assert {"three_way_gemma4_bidirectional", "three_way_gemma4_pad_id"} <= set(cases)
    for case in cases.values():
        assert case.paths.third == "transformers" and case.authority_path == "transformers"
    stages = {c.known_deviations[0].stage for c in cases.values() if c.known_deviations}
    assert stages == {"attention_mask", "per_layer_inputs"}


def test_decode_steps_after_different_tokens_are_marked_not_compared():
    ref, cand = _capture("mlx-vlm"), _capture("unified")
    third = _capture("transformers")
    for capture in (ref, cand, third):
        capture.arrays["decode.1"] = capture.arrays["logits"].copy()
    third.arrays["tokens"][0] = 9  # transformers chose another first token
    third.arrays["decode.1"] += 1.0
    v = verdict(_case(known_deviations=[], decode_steps=1), ref, cand, third=third)
    cells = {(r["stage"], r["pair"]): r["status"] for r in table([v])}
    assert cells[("decode.1", "mlx-vlm~transformers")] == "skipped"
    assert cells[("tokens", "mlx-vlm~transformers")] == "fail"
    assert cells[("decode.1", "mlx-vlm~unified")] == "ok"
    assert "(not compared)" in markdown([v])


# --- a path whose optional dependency is absent --------------------------------------------


def test_a_path_missing_its_optional_dependency_skips_its_cases_with_the_reason(monkeypatch):
    """Without torch, the three-way cases are skipped (how to install it is the reason),
    not errored; the case's other work is not attempted."""
    from harness.paths import PathUnavailable, check_requirements
    from harness.paths.transformers_path import TransformersSession
    from harness.runner import run

    monkeypatch.setattr(TransformersSession, "requires", ("mlx_parity_absent_module",))
    with pytest.raises(PathUnavailable, match="mlx_parity_absent_module, not installed"):
        check_requirements("transformers", TransformersSession)
    text_case = CASES / "three_way" / "three_way_gemma4_text.yaml"
    result = run([text_case])
    (v,) = result.verdicts
    assert v.status is Status.SKIP
    assert "paths.third" in v.reason and "mlx-parity[torch]" in v.reason
    assert v.reason.startswith(str(text_case)) or text_case.name in v.reason
    if importlib.util.find_spec("torch"):  # the real requirement passes where it is met
        monkeypatch.setattr(TransformersSession, "requires", ("torch",))
        check_requirements("transformers", TransformersSession)
