"""Captures of one case -> CheckResults -> Verdict. Pure functions of the records."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np

from .cases import CaseSpec
from .check_specs import CheckSpec, UlpSpec
from .checks import guard, ulp
from .differences import StageDifference, first_difference, ids_difference
from .digests import (
    digest_difference,
    digest_rows,
    environment_rows,
    recording_provenance,
    side,
)
from .envelope import PERTURBED_STAGE, SLACK, measure
from .probes import LAYER_OUT, LAYER_PLI
from .records import (
    DECODE_PREFIX,
    DEEPSTACK_PREFIX,
    DEEPSTACK_SCALE,
    STAGE_ORDER,
    Capture,
    CheckResult,
    Status,
    Verdict,
    layer_stage,
    stage_rank,
)

GUARD = "guard"  # the `check` of the one shape / non-finite / empty row of a stage


def _results(
    case_id: str,
    stage: str,
    specs: Sequence[CheckSpec],
    ref: np.ndarray,
    test: np.ndarray,
    dtype: str,
    prefix: str = "",
) -> list[CheckResult]:
    if not specs:
        return []
    stop = guard(ref, test)
    if stop is not None:
        # Once per stage, not once per check: a NaN is one finding.
        return [
            CheckResult(
                case_id,
                stage,
                GUARD,
                prefix + stop.metric,
                stop.value,
                stop.threshold,
                stop.passed,
                stop.required,
                stop.detail,
                gating=any(spec.gate for spec in specs),
            )
        ]
    return [
        CheckResult(
            case_id,
            stage,
            spec.check,
            prefix + m.metric,
            m.value,
            m.threshold,
            m.passed,
            m.required,
            m.detail,
            gating=spec.gate and m.gating,
        )
        for spec in specs
        for m in spec.build()(ref, test, dtype)
    ]


def unique_metrics(results: Sequence[CheckResult]) -> list[CheckResult]:
    """(case_id, stage, metric) is the key of a report row: when two checks of a stage
    report a metric of the same name (e.g. `exact` and `allclose(rtol=0)` both report
    max_abs_diff), the later ones become `<metric>#2`, `#3`, ..."""
    seen: set[tuple[str, str, str]] = set()
    unique = []
    for result in results:
        metric, count = result.metric, 1
        while (result.case_id, result.stage, metric) in seen:
            count += 1
            metric = f"{result.metric}#{count}"
        seen.add((result.case_id, result.stage, metric))
        unique.append(result if metric == result.metric else replace(result, metric=metric))
    return unique


def _absent(
    case_id: str, stage: str, reference: Capture, candidate: Capture, ref, test, prefix: str = ""
) -> CheckResult:
    absent = [c.path for c, a in ((reference, ref), (candidate, test)) if a is None]
    both = len(absent) == 2
    detail = (
        "neither path produces this stage for this model"
        if both
        else (f"not captured by {absent[0]}")
    )
    return CheckResult(
        case_id,
        stage,
        "presence",
        prefix + "captured",
        float(not both),
        0.0,
        both,
        0.0 if both else float("nan"),
        detail,
    )


# Stages only some architectures or captures have: no row when neither path has one.
ARCHITECTURE_STAGES = frozenset({"position_ids", "tokens"})


def check_stage(
    case_id: str, stage: str, specs: Sequence[CheckSpec], reference: Capture, candidate: Capture
) -> list[CheckResult]:
    ref, test = side(reference, stage), side(candidate, stage)
    if ref is None and test is None and stage in ARCHITECTURE_STAGES:
        return []
    if ref is None or test is None:
        return [_absent(case_id, stage, reference, candidate, ref, test)]
    held = digest_rows(case_id, stage, specs, reference, candidate)
    if held is not None:  # a stage recorded as a fingerprint (harness.digests)
        return held
    ref, test = aligned_sections(stage, ref, test)
    return _results(case_id, stage, specs, ref, test, reference.dtypes.get(stage, "float32"))


def aligned_sections(stage: str, ref: np.ndarray, test: np.ndarray) -> tuple:
    """Positions are [L, sections]: a plain RoPE's one section equals an M-RoPE whose
    sections all hold it, so a single column is repeated to the other side's count (a text
    prompt through plain mlx-lm matches native M-RoPE; an image prompt does not)."""
    if stage != "position_ids" or ref.ndim != 2 or test.ndim != 2 or ref.shape[0] != test.shape[0]:
        return ref, test
    if ref.shape[1] == 1 and test.shape[1] > 1:
        ref = np.repeat(ref, test.shape[1], axis=1)
    elif test.shape[1] == 1 and ref.shape[1] > 1:
        test = np.repeat(test, ref.shape[1], axis=1)
    return ref, test


def _indexed_stages(prefix: str, *captures: Capture) -> list[str]:
    found = {k for c in captures for k in (*c.arrays, *c.digests) if k.startswith(prefix)}
    return sorted(found, key=stage_rank)


def _deepstack_stages(*captures: Capture) -> list[str]:
    return _indexed_stages(DEEPSTACK_PREFIX, *captures)


def _same_tokens_before(step: int, reference: Capture, candidate: Capture) -> bool:
    ref, test = reference.arrays.get("tokens"), candidate.arrays.get("tokens")
    return ref is not None and test is not None and np.array_equal(ref[:step], test[:step])


def check_decode(
    case_id: str, specs: Sequence[CheckSpec], reference: Capture, candidate: Capture
) -> list[CheckResult]:
    """Each decode step's logits, as long as both paths were fed the same tokens up to it;
    after the paths generated different tokens, later steps are not comparable (the
    `tokens` stage and the step where they parted fail)."""
    rows = []
    for stage in _indexed_stages(DECODE_PREFIX, reference, candidate):
        step = int(stage.removeprefix(DECODE_PREFIX))
        if not _same_tokens_before(step, reference, candidate):
            rows.append(
                CheckResult(
                    case_id, stage, "presence", "compared", 0.0, 0.0, True, 0.0,
                    "not compared: the paths generated different tokens before this step",
                    gating=False,
                )
            )  # fmt: skip
            continue
        rows += check_stage(case_id, stage, specs, reference, candidate)
    return rows


def check_deepstack(
    case_id: str, specs: Sequence[CheckSpec], reference: Capture, candidate: Capture
) -> list[CheckResult]:
    """Each `deepstack.N` either path captured (what was added after layer N). Ulp checks
    count ulps of the hidden state the features were added to (its rounding is what a
    tolerated upstream difference moves), not of the features."""
    rows = []
    for stage in _deepstack_stages(reference, candidate):
        plain = [s for s in specs if not isinstance(s, UlpSpec)]
        rows += check_stage(case_id, stage, plain, reference, candidate)
        scale = stage.replace(DEEPSTACK_PREFIX, DEEPSTACK_SCALE + ".", 1)
        arrays = [c.arrays.get(k) for c in (reference, candidate) for k in (stage, scale)]
        for spec in (s for s in specs if isinstance(s, UlpSpec)):
            if any(a is None for a in arrays):
                rows += check_stage(case_id, stage, [spec], reference, candidate)
                continue
            rows.append(_hidden_ulps(case_id, stage, spec, *arrays, reference.dtypes))
    return rows


def _hidden_ulps(case_id, stage, spec, ref, ref_scale, test, test_scale, dtypes) -> CheckResult:
    stop = guard(ref, test) or guard(ref_scale, test_scale)
    if stop is not None:
        return CheckResult(
            case_id, stage, GUARD, stop.metric, stop.value, stop.threshold, stop.passed,
            stop.required, stop.detail, gating=spec.gate,
        )  # fmt: skip
    dtype = dtypes.get(stage, "float32")
    spacing = ulp(np.maximum(ref_scale, test_scale), dtype)
    in_ulps = np.abs(ref.astype(np.float64) - test.astype(np.float64)) / spacing
    value = float(in_ulps.max()) if in_ulps.size else 0.0
    detail = (
        f"{dtype} ulps of the hidden state; {int((in_ulps > 0).sum())} of {in_ulps.size} "
        "elements differ"
    )
    return CheckResult(
        case_id, stage, spec.check, "max_ulp_diff", value, spec.ulps, value <= spec.ulps,
        value, detail, gating=spec.gate,
    )  # fmt: skip


def _layer_count(capture: Capture) -> int:
    keys = (*capture.arrays, *capture.digests)
    return sum(1 for key in keys if key.startswith(LAYER_OUT + "."))


def _align_rows(
    ref: np.ndarray, test: np.ndarray, prompt_len: int
) -> tuple[np.ndarray, np.ndarray, str]:
    """Compare the rows both paths kept: where either kept only the last prompt position
    of a layer, compare there, and say so in the metric name."""
    if prompt_len > 1 and 1 in (ref.shape[0], test.shape[0]):
        return ref[-1:], test[-1:], "last_position_"
    return ref, test, ""


def check_layers(
    case_id: str, specs: Sequence[CheckSpec], reference: Capture, candidate: Capture
) -> list[CheckResult]:
    n_ref, n_test = _layer_count(reference), _layer_count(candidate)
    if n_ref != n_test:
        detail = (
            f"cannot match layers: {reference.path} has {reference.layer_tree}, "
            f"{candidate.path} has {candidate.layer_tree}"
        )
        return [
            CheckResult(
                case_id,
                "layers",
                "presence",
                "layer_count_mismatch",
                float(abs(n_ref - n_test)),
                0.0,
                False,
                float("nan"),
                detail,
                gating=False,
            )
        ]
    prompt_len = len(reference.arrays.get("input_ids", ()))
    results = []
    for index in range(n_ref):
        stage = layer_stage(index)
        for key, prefix in ((LAYER_OUT, ""), (LAYER_PLI, "per_layer_input_")):
            ref = side(reference, f"{key}.{index}")
            test = side(candidate, f"{key}.{index}")
            if ref is None and test is None:
                continue
            if ref is None or test is None:
                results.append(_absent(case_id, stage, reference, candidate, ref, test, prefix))
                continue
            held = digest_rows(
                case_id, stage, specs, reference, candidate, f"{key}.{index}", prefix, prompt_len
            )
            if held is not None:
                results += held
                continue
            ref, test, where = _align_rows(ref, test, prompt_len)
            dtype = reference.dtypes.get(f"{key}.{index}", "float32")
            results += _results(case_id, stage, specs, ref, test, dtype, prefix + where)
    return results


def compare(case: CaseSpec, reference: Capture, candidate: Capture) -> list[CheckResult]:
    profile = case.checks()
    results: list[CheckResult] = []
    for stage in sorted(profile, key=stage_rank):
        if stage == "layers":
            results.extend(check_layers(case.id, profile[stage], reference, candidate))
        elif stage == "deepstack":
            results.extend(check_deepstack(case.id, profile[stage], reference, candidate))
        elif stage == "decode":
            results.extend(check_decode(case.id, profile[stage], reference, candidate))
        else:
            results.extend(check_stage(case.id, stage, profile[stage], reference, candidate))
    return unique_metrics(results)


def image_token_errors(
    case: CaseSpec, reference: Capture, candidate: Capture, image_token_id: int | None
) -> tuple[np.ndarray, ...]:
    """Max |diff| of each image token's embedding, one 2-D grid per image, laid out with
    the image's aspect ratio (row-major, as the vision pooler emits tokens)."""
    ids = reference.arrays.get("input_ids")
    ref, test = reference.arrays.get("embeddings"), candidate.arrays.get("embeddings")
    if image_token_id is None or ids is None or ref is None or test is None:
        return ()
    if ref.shape != test.shape or candidate.arrays["input_ids"].shape != ids.shape:
        return ()
    # Per row: an architecture may record more than one stream per row (Gemma 3n's AltUp).
    diff = np.abs(ref.astype(np.float64) - test.astype(np.float64))
    errors = diff.reshape(diff.shape[0], -1).max(axis=-1)
    positions = np.flatnonzero(ids == image_token_id)
    if positions.size == 0:
        return ()
    blocks = np.split(positions, np.flatnonzero(np.diff(positions) != 1) + 1)
    sizes = [_image_size(path) for path in case.image_files]
    grids = []
    for index, block in enumerate(blocks):
        width, height = sizes[index] if index < len(sizes) else (1, 1)
        grids.append(errors[block].reshape(_grid_shape(block.size, width / height)))
    return tuple(grids)


def _image_size(path) -> tuple[int, int]:
    """Width and height as the image is meant to be seen (EXIF orientation applied, as
    image processors apply it), without decoding the pixels."""
    from PIL import Image

    from .case_yaml import image_formats

    with Image.open(path, formats=image_formats()) as image:
        width, height = image.size
        rotated = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    return (height, width) if rotated else (width, height)


def _grid_shape(n: int, aspect: float) -> tuple[int, int]:
    """rows x cols == n with cols/rows closest to the image's aspect ratio."""
    divisors = [r for r in range(1, n + 1) if n % r == 0]
    rows = min(divisors, key=lambda r: abs(np.log((n / r) / r) - np.log(aspect)))
    return rows, n // rows


def compared_arrays(
    reference: Capture, candidate: Capture
) -> dict[str, tuple[np.ndarray, np.ndarray, str]]:
    """Every stage both paths captured, in data-flow order, as compared (layer rows
    aligned): stage -> (reference, candidate, reference dtype)."""
    prompt_len = len(reference.arrays.get("input_ids", ()))
    arrays: dict[str, tuple[np.ndarray, np.ndarray, str]] = {}
    for stage in STAGE_ORDER:
        if stage == "layers":
            for index in range(min(_layer_count(reference), _layer_count(candidate))):
                key = f"{LAYER_OUT}.{index}"
                if key in reference.arrays and key in candidate.arrays:
                    ref, test, _ = _align_rows(
                        reference.arrays[key], candidate.arrays[key], prompt_len
                    )
                    arrays[layer_stage(index)] = (ref, test, reference.dtypes.get(key, "float32"))
        else:
            indexed = {"deepstack": DEEPSTACK_PREFIX, "decode": DECODE_PREFIX}
            names = (
                _indexed_stages(indexed[stage], reference) if stage in indexed else [stage]
            )
            for name in names:
                if name in reference.arrays and name in candidate.arrays:
                    ref, test = aligned_sections(
                        name, reference.arrays[name], candidate.arrays[name]
                    )
                    arrays[name] = (ref, test, reference.dtypes.get(name, "float32"))
    return dict(sorted(arrays.items(), key=lambda item: stage_rank(item[0])))


def _failure_detail(check: CheckResult) -> str:
    text = f"{check.check} {check.metric}={check.value:.3g} > {check.threshold:.3g}"
    return f"{text}: {check.detail}" if check.detail else text


def needs_envelope(verdict_: Verdict) -> bool:
    """The first difference is at the perturbable stage and tolerated there: whether later
    failures are its noise or a fault of their own takes a measured envelope."""
    return verdict_.first_difference == PERTURBED_STAGE and not any(
        c.stage == PERTURBED_STAGE and c.gating and not c.passed for c in verdict_.checks
    )


def apply_envelope(
    results: list[CheckResult],
    reference: Capture,
    candidate: Capture,
    draws: Sequence[Capture],
) -> tuple[list[CheckResult], str]:
    """One gating `envelope` row per later stage; failed checks at stages inside the
    envelope become passes that say so. Returns the rows and a one-line note."""
    if not draws:
        return results, ""
    envelopes = measure(compared_arrays(reference, candidate), reference, draws, compared_arrays)
    case_id = reference.case_id
    inside = {s for s, e in envelopes.items() if e.within}
    noted = [
        replace(
            r,
            passed=True,
            detail=f"{r.detail}; " * bool(r.detail)
            + f"within the noise envelope of the {PERTURBED_STAGE} difference",
        )
        if not r.passed and r.gating and r.stage in inside
        else r
        for r in results
    ]
    rows = [
        CheckResult(
            case_id,
            e.stage,
            "envelope",
            "envelope_max_abs_diff",
            e.candidate,
            e.bound,
            e.within,
            e.candidate,
            f"{e.draws} draws of the reference with its {PERTURBED_STAGE} perturbed by the "
            f"observed difference pattern; bound = {SLACK:g} x their largest deviation",
        )
        for e in envelopes.values()
    ]
    left = [e for e in envelopes.values() if not e.within]
    last = list(envelopes.values())[-1] if envelopes else None
    if left:
        e = left[0]
        note = (
            f"leaves the noise envelope at {e.stage} (max |diff| {e.candidate:.3g} > "
            f"{e.bound:.3g} from {e.draws} draws): a fault of its own, not rounding"
        )
    elif last is not None:
        note = (
            f"later stages within the noise envelope of the {PERTURBED_STAGE} difference "
            f"({last.stage} max |diff| {last.candidate:.3g} <= {last.bound:.3g}, "
            f"{last.draws} draws)"
        )
    else:
        note = ""
    return unique_metrics(noted + rows), note


def verdict(
    case: CaseSpec,
    reference: Capture,
    candidate: Capture,
    image_token_id: int | None = None,
    envelope: Sequence[Capture] = (),
    same_path: Mapping[str, Capture] | None = None,
    third: Capture | None = None,
) -> Verdict:
    """`same_path`: the candidate's second captures by check name (harness.same_path:
    after other prompts, through a restored prompt cache), each held to its first.
    `third`: a third path's capture, compared with both (harness.three_way)."""
    results = compare(case, reference, candidate)
    results, envelope_note = apply_envelope(results, reference, candidate, envelope)
    if third is not None or case.known_deviations:
        from .three_way import extend

        results = extend(case, results, reference, candidate, third)
    results += environment_rows(case.id, reference, candidate)
    if same_path:
        from .same_path import rows

        results += rows(case, candidate, same_path)
    ids_detail = ids_difference(reference, candidate, image_token_id)
    if ids_detail:  # a length or token mismatch explains itself in the ids check too
        results = [
            replace(r, detail=f"{r.detail}; {ids_detail}" if r.detail else ids_detail)
            if r.stage == "input_ids" and not r.passed
            else r
            for r in results
        ]
    failed = [r for r in results if not r.passed]
    first = min(failed, key=lambda r: stage_rank(r.stage)).stage if failed else None
    gating = [r for r in failed if r.gating]
    failure = min(gating, key=lambda r: stage_rank(r.stage)) if gating else None
    arrays = compared_arrays(reference, candidate)
    difference = first_difference(list(arrays), reference, candidate, image_token_id, arrays)
    held = digest_difference(difference, reference, candidate)
    if held is not None:  # an earlier stage held as a digest (a compact recording) differs
        difference = StageDifference(held[0], float("nan"), float("nan"), 0, 0, 0, held[1])
    return Verdict(
        case_id=case.id,
        source=case.source,
        status=Status.FAIL if gating else Status.PASS,
        checks=tuple(results),
        first_divergence=first,
        first_difference=difference.stage if difference else None,
        first_difference_detail=difference.detail if difference else "",
        first_failure=failure.stage if failure else None,
        first_failure_detail=_failure_detail(failure) if failure else "",
        prompt_texts=(reference.prompt_text, candidate.prompt_text) if ids_detail else (),
        envelope_note=envelope_note,
        reference=reference.path,
        candidate=candidate.path,
        provenance={
            **candidate.provenance,
            "reference_prefill_chunks": ",".join(map(str, reference.prefill_chunks)),
            "candidate_prefill_chunks": ",".join(map(str, candidate.prefill_chunks)),
            **recording_provenance(reference, candidate),
        },
        image_token_errors=image_token_errors(case, reference, candidate, image_token_id),
    )
