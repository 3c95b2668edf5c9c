"""Compare functions: unit cases plus hypothesis properties. Every check must pass equal
arrays, never pass NaN/Inf, fail a perturbation beyond its tolerance, and report the
tolerance that would have passed."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from harness.check_specs import AllcloseSpec, ExactSpec, TopkSpec, UlpSpec
from harness.checks import (
    allclose,
    exact,
    topk,
    ulp,
    within_ulps,
)

FLOATS = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=8),
    elements=st.floats(-1e4, 1e4, width=32),
)
CHECKS = [exact(), allclose(1e-3, 1e-3), within_ulps(1), topk(3, True, 0.25, 1e-3)]


def passed(metrics) -> bool:
    return all(m.passed for m in metrics)


@settings(max_examples=60, deadline=None)
@given(FLOATS)
def test_equal_arrays_pass_every_check(a):
    for check in CHECKS:
        assert passed(check(a, a.copy(), "bfloat16"))


@settings(max_examples=60, deadline=None)
@given(FLOATS, st.sampled_from([np.nan, np.inf, -np.inf]), st.data(), st.booleans())
def test_non_finite_never_passes(a, bad, data, in_reference):
    index = tuple(data.draw(st.integers(0, n - 1)) for n in a.shape)
    broken = a.copy()
    broken[index] = bad
    for check in CHECKS:
        # Both sides broken identically is still a failure: NaN never passes.
        for ref, test in ((broken, a), (a, broken), (broken, broken.copy())):
            metrics = check(ref, test, "float32")
            assert not passed(metrics)
            assert metrics[0].metric == "non_finite"


@settings(max_examples=60, deadline=None)
@given(FLOATS, st.data())
def test_perturbation_beyond_tolerance_fails(a, data):
    index = tuple(data.draw(st.integers(0, n - 1)) for n in a.shape)
    b = a.astype(np.float64)
    b[index] += 1e-3 + 1e-3 * abs(b[index]) + 0.5  # beyond atol + rtol*|ref|
    b = b.astype(np.float32)
    assert not passed(exact()(a, b, "float32"))
    assert not passed(allclose(1e-3, 1e-3)(a, b, "float32"))
    [m] = within_ulps(1)(a, b, "float32")
    assert not m.passed and m.required == m.value > 1


@settings(max_examples=40, deadline=None)
@given(st.integers(5, 64), st.data())
def test_reordered_topk_fails_under_order(n, data):
    logits = np.linspace(0.0, 8.0, n).astype(np.float32)
    np.random.default_rng(n).shuffle(logits)
    top = np.argsort(-logits)[:3]
    i, j = sorted(data.draw(st.lists(st.integers(0, 2), min_size=2, max_size=2, unique=True)))
    swapped = logits.copy()
    swapped[top[i]], swapped[top[j]] = logits[top[j]], logits[top[i]]
    ordered = topk(3, True, 10.0, 1e-3)(logits, swapped, "float32")
    assert not ordered[0].passed and ordered[0].value >= 2
    # The same swap keeps the id set: the set-only id check passes.
    assert topk(3, False, 10.0, 1e-3)(logits, swapped, "float32")[0].passed


def test_shape_mismatch_fails_with_a_clear_detail():
    [m] = exact()(np.zeros(4), np.zeros(5), "float32")
    assert not m.passed and m.metric == "shape" and "(5,)" in m.detail


def test_exact_reports_the_required_tolerance_and_first_mismatch():
    [m] = exact()(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.5, 3.0]), "float32")
    assert not m.passed and m.value == 0.5 and m.required == 0.5
    assert "first mismatch at (1,)" in m.detail


def test_allclose_required_atol_accounts_for_rtol():
    [m] = allclose(0.0, 0.1)(np.array([10.0]), np.array([11.5]), "float32")
    assert m.required == pytest.approx(0.5) and not m.passed
    [m] = allclose(0.5, 0.1)(np.array([10.0]), np.array([11.5]), "float32")
    assert m.passed


def test_bf16_ulp_spacing():
    assert ulp(np.array([1.0]), "bfloat16")[0] == 2.0**-7
    assert ulp(np.array([8.0]), "bfloat16")[0] == 2.0**-4
    assert ulp(np.array([1.0]), "float32")[0] == 2.0**-23
    assert ulp(np.array([0.0]), "bfloat16")[0] == 2.0**-133


def test_one_bf16_ulp_passes_and_two_fail():
    ref = np.array([1.0, -3.0], dtype=np.float32)
    one = ref + np.array([2.0**-7, 0.0], dtype=np.float32)
    two = ref + np.array([2.0**-6, 0.0], dtype=np.float32)
    assert passed(within_ulps(1)(ref, one, "bfloat16"))
    assert not passed(within_ulps(1)(ref, two, "bfloat16"))


def test_topk_probability_floor_applies_to_tiny_reference_probabilities():
    ref = np.array([10.0, 9.0, 0.0, -20.0], dtype=np.float32)
    test = ref.copy()
    test[2] = 0.5  # p ~ 1e-4 -> ~2e-4: huge relative change, tiny absolute one
    ids, _, probs = topk(3, True, 0.25, 1e-3)(ref, test, "float32")
    assert ids.passed and probs.passed
    ids, _, probs = topk(3, True, 0.25, 1e-9)(ref, test, "float32")
    assert not probs.passed


def test_integer_ids_compare_exactly():
    [m] = exact()(np.array([1, 2, 3]), np.array([1, 2, 4]), "int64")
    assert not m.passed and m.value == 1


def test_empty_arrays_are_trivially_equal():
    assert passed(exact()(np.zeros((0, 4)), np.zeros((0, 4)), "float32"))


@pytest.mark.parametrize(
    ("spec", "kwargs"),
    [
        (AllcloseSpec, {"atol": -1}),
        (UlpSpec, {"ulps": -0.5}),
        (TopkSpec, {"k": 0}),
        (ExactSpec, {"atol": 1.0}),
    ],
)
def test_check_specs_reject_bad_parameters(spec, kwargs):
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        spec(**kwargs)
