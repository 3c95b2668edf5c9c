"""Recordings (`mlx-parity record`) replayed as the `golden` path: a correct candidate
passes against them, a broken one fails at the stage where its mistake enters (also where
that stage is held only as a digest), a tampered, stale or misplaced recording is refused,
a recording made elsewhere is flagged, and the same capture gives the same bytes."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import CASES, verdict_of

from harness.cases import load_case
from harness.cli import main
from harness.compare import verdict
from harness.digests import digest_json, digest_of
from harness.golden import ARRAYS, META, RecordingError, recording_dir, seal
from harness.golden_run import against_recordings, drift_lines, record_cases
from harness.paths import SessionOptions
from harness.paths.golden import GoldenSession, RecordingUnusable
from harness.policy import ImportPolicy
from harness.provenance import library_versions
from harness.records import Capture, Status
from harness.runner import RunOptions, run_cases

MUTANT = "FeaturesNotDivided"  # tests/mutants.py: image features scaled twice
IN_PROCESS = ["--isolation", "none"]


def _capture(path: str, **arrays: np.ndarray) -> Capture:
    return Capture(path, "c", arrays, dict.fromkeys(arrays, "float32"), (3,))


def _held(capture: Capture, *keys: str, topk: int = 0) -> Capture:
    """`capture` with `keys` replaced by their digests, as a compact recording holds them."""
    return dataclasses.replace(
        capture,
        arrays={k: v for k, v in capture.arrays.items() if k not in keys},
        digests={k: digest_of(capture.arrays[k], topk) for k in keys},
    )


# --- digests in compare: no model needed -------------------------------------------------


@pytest.fixture(scope="module")
def text_case():
    return load_case(CASES / "gemma4_text.yaml")


def _arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input_ids": np.arange(3),
        "embeddings": rng.standard_normal((3, 8)).astype(np.float32),
        "logits": (4 * rng.standard_normal(64)).astype(np.float32),
        "tokens": np.array([1, 2, 3], dtype=np.int32),
    }


def test_a_digest_stage_passes_when_equal_and_fails_on_one_ulp(text_case):
    arrays = _arrays()
    recorded = _held(_capture("golden:mlx-vlm", **arrays), "embeddings")
    same = verdict(text_case, recorded, _capture("live", **arrays))
    assert same.status is Status.PASS
    (row,) = [c for c in same.checks if c.metric == "sha256_differs"]
    assert row.stage == "embeddings" and row.passed and row.gating

    nudged = dict(arrays, embeddings=arrays["embeddings"].copy())
    nudged["embeddings"][1, 2] = np.nextafter(nudged["embeddings"][1, 2], np.float32(9))
    broken = verdict(text_case, recorded, _capture("live", **nudged))
    assert broken.status is Status.FAIL
    assert broken.first_failure == "embeddings" and broken.first_difference == "embeddings"
    drift = [c for c in broken.checks if c.metric == "stats_drift"][0]
    assert drift.value > 0 and not drift.gating and "mean" in drift.detail


def test_a_digest_stage_fails_on_shape_and_nan(text_case):
    arrays = _arrays()
    recorded = _held(_capture("golden:mlx-vlm", **arrays), "embeddings")
    shorter = dict(arrays, embeddings=arrays["embeddings"][:2])
    assert verdict(text_case, recorded, _capture("live", **shorter)).first_failure == "embeddings"
    nan = dict(arrays, embeddings=arrays["embeddings"].copy())
    nan["embeddings"][0, 0] = np.nan
    result = verdict(text_case, recorded, _capture("live", **nan))
    assert result.status is Status.FAIL
    assert any(c.metric == "non_finite" and not c.passed for c in result.checks)


def test_top_k_logits_pass_when_equal_and_fail_when_scaled(text_case):
    arrays = _arrays()
    recorded = _held(_capture("golden:mlx-vlm", **arrays), "logits", topk=16)
    image = text_case.model_copy(update={"profile": "image"})  # top-5 + KL gate
    assert verdict(image, recorded, _capture("live", **arrays)).status is Status.PASS
    scaled = dict(arrays, logits=arrays["logits"] * np.float32(1.5))
    result = verdict(image, recorded, _capture("live", **scaled))
    assert result.status is Status.FAIL and result.first_failure == "logits"
    failed = {c.metric for c in result.checks if c.gating and not c.passed}
    assert {"top5_prob_rel_diff", "kl_ref_test_lower_bound"} <= failed


def test_kept_tensors_of_a_replayed_capture_keep_its_digests(tmp_path):
    from harness.capture import load_capture, save_capture

    held = dataclasses.replace(
        _held(_capture("golden:mlx-vlm", **_arrays()), "embeddings"),
        recording="reference/gemma4/c",
        environment={"python": "recorded 3.10.1, now 3.11.2"},
    )
    save_capture(held, tmp_path / "reference.safetensors")
    loaded = load_capture(tmp_path / "reference.safetensors")
    as_json = {k: digest_json(d) for k, d in loaded.digests.items()}  # (NaN lse != NaN)
    assert as_json == {k: digest_json(d) for k, d in held.digests.items()}
    assert set(loaded.arrays) == set(held.arrays)
    assert (loaded.recording, loaded.environment) == (held.recording, held.environment)


# --- record and replay through the real libraries ----------------------------------------


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """gemma4_one_image and the same case with a broken add-on, recorded (compact, and
    with top-k logits) and replayed; the case recorded twice."""
    root = tmp_path_factory.mktemp("golden")
    case = load_case(CASES / "gemma4_one_image.yaml")
    mutant = case.model_copy(update={"id": f"{case.id}--{MUTANT}", "addon": f"mutants:{MUTANT}"})
    options = RunOptions(isolation="none", imports=ImportPolicy(("mutants",)))
    first = record_cases([case, mutant], root / "a", options)
    cases, errors = against_recordings([case, mutant], "replay")
    assert not errors
    replay = run_cases(cases, options=dataclasses.replace(options, golden_dir=root / "a"))
    # Through the command line: top-k logits recorded, then replayed.
    source = CASES / "gemma4_one_image.yaml"
    codes = [
        main(["record", str(source), "--out", str(root / "b"), "--logits", "topk", *IN_PROCESS]),
        main(["run", str(source), "--replay", "--golden-dir", str(root / "b"), *IN_PROCESS,
              "--report-dir", str(root / "report"), "--figures", "never"]),
    ]  # fmt: skip
    return {"root": root, "case": case, "first": first, "replay": replay, "codes": codes}


def test_record_writes_compact_recordings(recorded):
    assert all(r.directory is not None and not r.error for r in recorded["first"])
    for r in recorded["first"]:
        assert r.directory.parent.name == "gemma4"
        assert r.size < 200 * 1024
        meta = json.loads((r.directory / META).read_text())
        assert meta["stages"]["embeddings"]["stored"] == "digest"
        assert meta["stages"]["input_ids"]["stored"] == "exact"
        assert meta["stages"]["attention_mask"]["stored"] == "bits"
        assert meta["stages"]["logits"]["stored"] == "exact"  # synthesized: full vocabulary
        assert meta["environment"]["version_mlx-vlm"] and meta["checkpoint"]["hash"]
        assert meta["prefill_chunks"]
    topk = recording_dir(recorded["root"] / "b", "gemma4", recorded["case"].id) / META
    assert json.loads(topk.read_text())["stages"]["logits"]["stored"] == "topk"


def test_same_capture_same_bytes(recorded):
    """Two recordings of one case, from two sessions, are byte-identical."""
    a = recorded["first"][0].directory
    options = RunOptions(isolation="none")
    (b,) = record_cases([recorded["case"]], recorded["root"] / "c", options)
    for name in (ARRAYS, META):
        assert (a / name).read_bytes() == (b.directory / name).read_bytes()


def test_replay_passes_a_correct_candidate_and_fails_a_broken_one(recorded):
    run = recorded["replay"]
    good = verdict_of(run, recorded["case"].id)
    assert good.status is Status.PASS, good.first_failure_detail
    assert good.reference == "golden:mlx-vlm"
    assert good.provenance["reference_recording"].endswith("gemma4/gemma4_one_image")
    bad = verdict_of(run, f"{recorded['case'].id}--{MUTANT}")
    assert bad.status is Status.FAIL
    # embeddings are held as a digest: the hash check fails there, first.
    assert bad.first_failure == "embeddings" and bad.first_difference == "embeddings"
    row = [c for c in bad.checks if c.stage == "embeddings" and c.gating][0]
    assert row.metric == "sha256_differs" and "any difference fails" in row.detail


def test_replay_against_top_k_logits_from_the_command_line(recorded):
    assert recorded["codes"] == [0, 0]
    frame = pd.read_parquet(recorded["root"] / "report" / "parity.parquet")
    assert set(frame.status) == {"pass"} and set(frame.reference) == {"golden:mlx-vlm"}
    assert frame.reference_recording.iloc[0].endswith("gemma4/gemma4_one_image")
    logits = frame[frame.stage == "logits"]
    assert {"sha256_differs", "lse_drift"} <= set(logits.metric)
    assert "reference replayed from" in frame.explanation.iloc[0]


def test_drift_of_the_reference_path_reports_nothing_moved(recorded, capsys):
    cases, _ = against_recordings([recorded["case"]], "drift")
    assert cases[0].paths.candidate == "mlx-vlm" and cases[0].paths.reference == "golden"
    source = CASES / "gemma4_one_image.yaml"
    args = ["--golden-dir", str(recorded["root"] / "a"), "--report-dir",
            str(recorded["root"] / "drift"), "--figures", "never"]  # fmt: skip
    assert main(["drift", str(source), *IN_PROCESS, *args]) == 0
    assert "gemma4_one_image [" in capsys.readouterr().out.split("since the recordings:")[1]
    frame = pd.read_parquet(recorded["root"] / "drift" / "parity.parquet")
    assert set(frame.candidate) == {"mlx-vlm"} and set(frame.status) == {"pass"}


def test_drift_lines_name_what_moved_and_the_versions(text_case):
    arrays = _arrays()
    recorded = dataclasses.replace(
        _held(_capture("golden:mlx-vlm", **arrays), "embeddings"),
        environment={"version_mlx-vlm": "recorded 0.7.9, now 0.7.10"},
        recording="reference/gemma4/c",
    )
    moved = dict(arrays, logits=arrays["logits"] + np.float32(0.5))
    result = verdict(text_case, recorded, _capture("mlx-vlm", **moved))
    lines = drift_lines([result])
    assert lines[0].startswith("gemma4_text [reference/gemma4/c]: logits max_abs_diff=0.5")
    assert lines[1] == "  environment: version_mlx-vlm: recorded 0.7.9, now 0.7.10"


# --- refused or flagged recordings: the golden session alone, no library ------------------


def _session(recorded, root: Path | None = None, strict: bool = False) -> GoldenSession:
    from harness.models import resolve_model

    options = SessionOptions(golden_dir=root or recorded["root"] / "a", golden_strict=strict)
    return GoldenSession(resolve_model(recorded["case"]), options)


def _copy(recorded, tmp_path: Path) -> Path:
    source = recorded["first"][0].directory
    target = tmp_path / "gemma4" / source.name
    shutil.copytree(source, target)
    return target


def test_a_changed_byte_in_the_arrays_is_refused(recorded, tmp_path):
    target = _copy(recorded, tmp_path)
    blob = bytearray((target / ARRAYS).read_bytes())
    blob[-3] ^= 1
    (target / ARRAYS).write_bytes(bytes(blob))
    with pytest.raises(RecordingUnusable, match="changed after recording"):
        _session(recorded, tmp_path).capture(recorded["case"])


def test_an_edited_version_is_refused_and_a_resealed_one_flagged(recorded, tmp_path):
    target = _copy(recorded, tmp_path)
    meta = json.loads((target / META).read_text())
    meta["environment"]["version_mlx-vlm"] = "0.0.1"
    (target / META).write_text(json.dumps(meta))
    with pytest.raises(RecordingUnusable, match="edited after recording"):
        _session(recorded, tmp_path).capture(recorded["case"])
    # Sealed again: a recording made under another version. A warning row, not a failure;
    # an error of the case under --strict.
    meta["seal"] = seal(meta)
    (target / META).write_text(json.dumps(meta))
    capture = _session(recorded, tmp_path).capture(recorded["case"])
    now = library_versions()["mlx-vlm"]
    assert capture.environment == {"version_mlx-vlm": f"recorded 0.0.1, now {now}"}
    live = Capture("live", capture.case_id, capture.arrays, capture.dtypes, (1,))
    rows = [c for c in verdict(recorded["case"], capture, live).checks if c.stage == "environment"]
    assert [(r.metric, r.passed, r.gating) for r in rows] == [
        ("version_mlx-vlm_differs", False, False)
    ]
    with pytest.raises(RecordingUnusable, match="--strict"):
        _session(recorded, tmp_path, strict=True).capture(recorded["case"])


def test_a_stale_or_missing_recording_is_refused(recorded):
    case = recorded["case"]
    edited = case.model_copy(update={"prefill_step_size": 7})
    with pytest.raises(RecordingUnusable, match="stale"):
        _session(recorded).capture(edited)
    with pytest.raises(RecordingUnusable, match="no recording of"):
        _session(recorded).capture(case.model_copy(update={"id": "gemma4_unrecorded"}))


def test_a_case_cannot_leave_the_reference_directory(recorded, tmp_path):
    for bad in ("../escape", "a/b", ".hidden", ""):
        with pytest.raises(RecordingError):
            recording_dir(tmp_path, "gemma4", bad)
    with pytest.raises(RecordingError):
        recording_dir(tmp_path, "../gemma4", "x")
    # Ids are validated when a case loads; one built around validation is refused too.
    escaping = recorded["case"].model_construct(**{**dict(recorded["case"]), "id": "../a"})
    with pytest.raises(RecordingUnusable, match="not a usable recording name"):
        _session(recorded).capture(escaping)
    # A symlink inside the reference directory pointing elsewhere is not followed.
    outside = _copy(recorded, tmp_path / "outside")
    (tmp_path / "ref" / "gemma4").mkdir(parents=True)
    (tmp_path / "ref" / "gemma4" / outside.name).symlink_to(outside)
    with pytest.raises(RecordingUnusable, match="symlink"):
        _session(recorded, tmp_path / "ref").capture(recorded["case"])


# --- the recordings shipped in reference/ ---------------------------------------------------


def test_every_shipped_synthetic_case_has_a_current_recording():
    """`make parity-replay` replays reference/: every synthesized shipped case has one
    recording there, intact and recorded from the case as it is now (`make record` after
    editing a case), within 200 KB."""
    from harness.cases import SynthModel, load_cases
    from harness.golden import case_sha256, read_recording

    root = CASES.parent / "reference"
    cases, _ = load_cases([CASES])
    problems = []
    for case in (c for c in cases if isinstance(c.model, SynthModel)):
        found = sorted(root.glob(f"*/{case.id}/{META}"))
        if len(found) != 1:
            problems.append(f"{case.id}: {len(found)} recordings")
            continue
        meta, _ = read_recording(found[0].parent)
        if meta["case_sha256"] != case_sha256(case, meta["case_addon"]):
            problems.append(f"{case.id}: stale")
        size = sum(p.stat().st_size for p in found[0].parent.iterdir())
        if size > 200 * 1024:
            problems.append(f"{case.id}: {size} bytes")
    assert not problems, problems
