"""Every bad input gets one clear line naming the case file (and the field where there is
one) and a report row, while the other cases' rows stay intact. One run holds them all."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
from conftest import CASES, TEST_MODULES

from harness.policy import ImportPolicy
from harness.records import Status
from harness.report import to_frame
from harness.runner import RunOptions, run
from harness.synth import ensure_checkpoint

IMAGE = CASES / "images" / "red_square_400x300.png"
TINY = {"hidden_size": 64, "logit_scale": 4.0, "seed": 0}
ONE_IMAGE = f"""
messages:
  - role: user
    content:
      - {{type: image, image: {IMAGE}}}
      - {{type: text, text: Describe this image.}}
"""


def _checkpoint_copy(root: Path, name: str) -> Path:
    target = root / name
    shutil.copytree(ensure_checkpoint("gemma4", TINY), target)
    return target


def _bad_checkpoints(root: Path) -> dict[str, Path]:
    no_config = _checkpoint_copy(root, "no_config")
    (no_config / "config.json").unlink()
    truncated = _checkpoint_copy(root, "truncated")
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1000])
    corrupt = _checkpoint_copy(root, "corrupt")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    vocab = _checkpoint_copy(root, "vocab_mismatch")
    bigger = ensure_checkpoint("gemma4", {**TINY, "vocab_size": 600})
    shutil.copy(bigger / "tokenizer.json", vocab / "tokenizer.json")
    return {
        "no_config": no_config,
        "truncated": truncated,
        "corrupt": corrupt,
        "vocab_mismatch": vocab,
    }


# case name -> (YAML body, expected status, expected fragments of the reason)
def _cases(models: dict[str, Path], root: Path) -> dict[str, tuple[str, Status, list[str]]]:
    synth = f"model: {{synth: gemma4, options: {json.dumps(TINY)}}}\nprofile: exact\n"
    (root / "notes.png").write_text("this is not an image")
    return {
        "good": (synth + ONE_IMAGE, Status.PASS, []),
        "malformed_yaml": ("model: [\n", Status.ERROR, ["malformed YAML (line"]),
        "unknown_key": (
            synth + ONE_IMAGE + "colour: red\n",
            Status.ERROR,
            ["colour:", "Extra inputs"],
        ),
        "wrong_type": (
            synth + ONE_IMAGE + "prefill_step_size: many\n",
            Status.ERROR,
            ["prefill_step_size:", "integer"],
        ),
        "unknown_profile": (
            synth.replace("profile: exact\n", "") + ONE_IMAGE + "profile: lenient\n",
            Status.ERROR,
            ["profile:"],
        ),
        "unknown_check": (
            synth + ONE_IMAGE + "tolerances: {logits: {check: vibes}}\n",
            Status.ERROR,
            ["tolerances.logits.0:", "vibes"],
        ),
        "unknown_path": (
            synth + ONE_IMAGE + "paths: {candidate: nosuch}\n",
            Status.ERROR,
            ["paths.candidate:", "unknown path 'nosuch'"],
        ),
        "unknown_addon": (
            synth + ONE_IMAGE + "addon: nosuch\n",
            Status.ERROR,
            ["addon:", "no built-in add-on 'nosuch'"],
        ),
        "addon_not_importable": (
            synth + ONE_IMAGE + "addon: 'no_such_pkg.mod:AddOn'\n",
            Status.ERROR,
            ["addon:", "cannot import module 'no_such_pkg.mod'"],
        ),
        "addon_not_a_contract": (
            synth + ONE_IMAGE + "addon: 'mutants:NotAnAddOn'\n",
            Status.ERROR,
            ["addon:", "missing compute_embeddings"],
        ),
        "model_missing": (
            f"model: {{path: {root / 'nowhere'}}}\n" + ONE_IMAGE,
            Status.ERROR,
            ["model.path:", "does not exist"],
        ),
        "model_no_config": (
            f"model: {{path: {models['no_config']}}}\n" + ONE_IMAGE,
            Status.ERROR,
            ["model.path:", "has no config.json"],
        ),
        "model_truncated": (
            f"model: {{path: {models['truncated']}}}\n" + ONE_IMAGE,
            Status.ERROR,
            ["model.path:", "model.safetensors is truncated"],
        ),
        "model_corrupt": (
            f"model: {{path: {models['corrupt']}}}\n" + ONE_IMAGE,
            Status.ERROR,
            ["model.path:", "model.safetensors"],
        ),
        "image_missing": (
            synth + ONE_IMAGE.replace(str(IMAGE), str(root / "gone.png")),
            Status.ERROR,
            ["messages.0.content.0.image:", "not found"],
        ),
        "image_not_an_image": (
            synth + ONE_IMAGE.replace(str(IMAGE), str(root / "notes.png")),
            Status.ERROR,
            ["messages.0.content.0.image:", "not a readable image"],
        ),
        "more_placeholders": (
            synth
            + ONE_IMAGE.replace("text: Describe this image.", "text: 'Compare <|image|> with it.'"),
            Status.ERROR,
            ["messages:", "2 image placeholder(s) for 1 image(s)"],
        ),
        "fewer_placeholders": (
            synth
            + textwrap.dedent(f"""
            messages:
              - role: system
                content: [{{type: image, image: {IMAGE}}}, {{type: text, text: Be brief.}}]
              - role: user
                content: Describe it.
            """),
            Status.ERROR,
            ["messages:", "0 image placeholder(s) for 1 image(s)"],
        ),
        "vocab_mismatch": (
            f"model: {{path: {models['vocab_mismatch']}}}\n" + ONE_IMAGE,
            Status.ERROR,
            ["tokenizer has 600 ids", "vocabulary has 512 rows"],
        ),
        "sequence_lengths_differ": (
            synth + ONE_IMAGE + "addon: 'mutants:DropsLastToken'\n",
            Status.FAIL,
            [],
        ),
        "vocab_sizes_differ": (
            synth + ONE_IMAGE + "paths: {candidate: 'logit_paths:TruncatedVocab'}\n",
            Status.FAIL,
            [],
        ),
        "nan_in_capture": (
            synth + ONE_IMAGE + "addon: 'mutants:NanInEmbeddings'\n",
            Status.FAIL,
            [],
        ),
    }


@pytest.fixture(scope="module")
def outcome(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-inputs")
    cases = _cases(_bad_checkpoints(root), root)
    case_dir = root / "cases"
    case_dir.mkdir()
    for name, (body, _, _) in cases.items():
        (case_dir / f"{name}.yaml").write_text(textwrap.dedent(body))
    # no_such_pkg is allowed, so that the error is about the import itself.
    imports = ImportPolicy((*TEST_MODULES, "no_such_pkg"))
    result = run([case_dir], options=RunOptions(imports=imports))
    return cases, {v.case_id: v for v in result.verdicts}, result


def test_every_case_has_exactly_one_verdict(outcome):
    cases, verdicts, result = outcome
    assert sorted(verdicts) == sorted(cases)
    frame = to_frame(result)
    assert set(frame.case_id) == set(cases)


@pytest.mark.parametrize(
    "name",
    [
        "good",
        "malformed_yaml",
        "unknown_key",
        "wrong_type",
        "unknown_profile",
        "unknown_check",
        "unknown_path",
        "unknown_addon",
        "addon_not_importable",
        "addon_not_a_contract",
        "model_missing",
        "model_no_config",
        "model_truncated",
        "model_corrupt",
        "image_missing",
        "image_not_an_image",
        "more_placeholders",
        "fewer_placeholders",
        "vocab_mismatch",
        "sequence_lengths_differ",
        "vocab_sizes_differ",
        "nan_in_capture",
    ],
)
def test_bad_input_gets_a_named_one_line_error(outcome, name):
    cases, verdicts, _ = outcome
    _, status, fragments = cases[name]
    v = verdicts[name]
    assert v.status is status, v.reason
    if status in (Status.ERROR, Status.SKIP):
        assert "\n" not in v.reason
        if status is Status.ERROR:
            assert v.reason.startswith(str(Path(v.source))), v.reason
        for fragment in fragments:
            assert fragment in v.reason, v.reason
        assert "Traceback" not in v.reason


def test_config_errors_make_the_run_exit_two(outcome):
    _, verdicts, result = outcome
    assert result.exit_code == 2
    assert verdicts["unknown_key"].config_error and verdicts["vocab_mismatch"].config_error
    assert "model: loading path" in verdicts["vocab_mismatch"].reason
    assert not verdicts["nan_in_capture"].config_error


def test_different_sequence_lengths_fail_with_the_shapes(outcome):
    _, verdicts, _ = outcome
    v = verdicts["sequence_lengths_differ"]
    assert v.first_divergence == "input_ids"
    (ids,) = [c for c in v.checks if c.stage == "input_ids"]
    assert ids.metric == "shape" and "(87,) vs reference (88,)" in ids.detail


def test_different_vocab_sizes_fail_with_the_shapes(outcome):
    _, verdicts, _ = outcome
    v = verdicts["vocab_sizes_differ"]
    assert v.first_divergence == "logits"
    shapes = [c for c in v.checks if c.stage == "logits" and c.metric == "shape"]
    assert shapes and all(not c.passed for c in shapes)
    assert "(496,) vs reference (512,)" in shapes[0].detail


def test_nan_in_a_capture_is_named_and_never_passes(outcome):
    _, verdicts, _ = outcome
    v = verdicts["nan_in_capture"]
    assert v.first_divergence == "embeddings"
    (emb,) = [c for c in v.checks if c.stage == "embeddings"]
    assert emb.metric == "non_finite" and not emb.passed and "test" in emb.detail
