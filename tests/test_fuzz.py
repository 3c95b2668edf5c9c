"""Hypothesis-driven fuzzing of the case loader and the compare functions: no uncaught
exception, every result well formed, NaN/Inf never passing."""

from __future__ import annotations

import math

import numpy as np
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from harness.cases import CaseError, load_case
from harness.profiles import PROFILES

SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    [
        "id",
        "model",
        "messages",
        "paths",
        "addon",
        "profile",
        "tolerances",
        "prefill_step_size",
        "max_size",
        "markers",
        "include",
        "synth",
        "options",
        "role",
        "content",
        "type",
        "image",
        "text",
        "check",
    ]
)
DOCUMENTS = st.dictionaries(KEYS, VALUES, max_size=8)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(document=st.one_of(DOCUMENTS, VALUES), raw=st.booleans(), text=st.text(max_size=80))
def test_loader_accepts_or_names_the_problem(tmp_path, document, raw, text):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text if raw else yaml.safe_dump(document))
    try:
        case = load_case(path)
    except CaseError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and "\n" not in message
    else:
        assert case.checks()  # a loaded case always resolves to a profile


DTYPES = ["bfloat16", "float16", "float32", "int64"]
ARRAYS = hnp.arrays(
    st.sampled_from([np.float32, np.float16, np.float64, np.int64]),
    hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6),
    elements={"allow_nan": True, "allow_infinity": True} if False else None,
)


def _floats(dtype):
    return hnp.from_dtype(np.dtype(dtype), allow_nan=True, allow_infinity=True)


@st.composite
def pairs(draw):
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64, np.int64]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=6))
    other = (
        shape if draw(st.booleans()) else draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=6))
    )
    elements = _floats(dtype) if dtype != np.int64 else st.integers(-(2**40), 2**40)
    return (
        draw(hnp.arrays(dtype, shape, elements=elements)),
        draw(hnp.arrays(dtype, other, elements=elements)),
    )


ALL_CHECKS = {
    spec.check: spec
    for profile in PROFILES.values()
    for specs in profile.values()
    for spec in specs
}


@settings(max_examples=300, deadline=None)
@given(pair=pairs(), dtype=st.sampled_from(DTYPES), check=st.sampled_from(sorted(ALL_CHECKS)))
def test_compare_functions_never_crash_and_never_pass_non_finite(pair, dtype, check):
    reference, test = pair
    metrics = ALL_CHECKS[check].build()(reference, test, dtype)
    assert metrics
    non_finite = any(
        np.issubdtype(a.dtype, np.floating) and not np.isfinite(a).all() for a in pair if a.size
    )
    for m in metrics:
        assert isinstance(m.passed, bool) and isinstance(m.metric, str)
        assert isinstance(m.value, float) and isinstance(m.threshold, float)
        if m.passed:
            assert not math.isnan(m.value)
    if non_finite and reference.shape == test.shape:
        assert not all(m.passed for m in metrics)
