"""Case files: schema validation, includes, and one-line errors naming file and field."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from harness.cases import CaseError, discover, load_case, load_cases

MINIMAL = """
model: {synth: gemma4}
messages:
  - role: user
    content: hello
"""


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(textwrap.dedent(text))
    return path


def test_minimal_case_gets_documented_defaults(tmp_path):
    case = load_case(write(tmp_path, "hello.yaml", MINIMAL))
    assert case.id == "hello"
    assert (case.paths.reference, case.paths.candidate) == ("mlx-vlm", "unified")
    assert case.prefill_step_size == 2048 and case.addon == "auto"
    assert case.chat_template_kwargs == {"enable_thinking": False}
    gating = [spec for specs in case.checks().values() for spec in specs if spec.gate]
    assert {spec.check for spec in gating} == {"exact", "stats"}
    assert all(spec.max_abs == 0.0 for spec in gating if spec.check == "stats")


def test_image_case_defaults_to_the_image_profile(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    case = load_case(
        write(
            tmp_path,
            "img.yaml",
            """
        model: {synth: gemma4}
        messages:
          - role: user
            content: [{type: image, image: a.png}, {type: text, text: hi}]
    """,
        )
    )
    checks = case.checks()
    assert [s.check for s in checks["embeddings"]] == ["ulp"]
    # The engine's top-5 rule and KL gate; the other distribution metrics are diagnostics.
    assert {s.check for s in checks["logits"] if s.gate} == {"topk", "kl"}
    assert {s.check for s in checks["logits"] if not s.gate} == {"top1", "jaccard", "max_delta_p"}
    assert [s.gate for s in checks["layers"]] == [False]
    (topk,) = [s for s in checks["logits"] if s.check == "topk"]
    assert (topk.k, topk.order, topk.prob_rtol, topk.ref_floor) == (5, True, 0.25, 1e-3)
    (kl,) = [s for s in checks["logits"] if s.check == "kl" and s.gate]
    assert kl.max == 1e-3
    assert case.image_files == [tmp_path / "a.png"]


def test_include_merges_nested_mappings_and_the_file_wins(tmp_path):
    write(
        tmp_path,
        "_base.yaml",
        """
        model: {synth: gemma4, options: {hidden_size: 64, seed: 3}}
        prefill_step_size: 64
        markers: [base]
    """,
    )
    case = load_case(
        write(
            tmp_path,
            "child.yaml",
            """
        include: _base.yaml
        model: {options: {hidden_size: 48}}
        messages: [{role: user, content: hi}]
        tolerances:
          logits: {check: allclose, atol: 0.01}
    """,
        )
    )
    assert case.model.options == {"hidden_size": 48, "seed": 3}
    assert case.prefill_step_size == 64 and case.markers == ["base"]
    (logits,) = case.checks()["logits"]  # an override replaces the stage's whole list
    assert logits.check == "allclose" and logits.atol == 0.01


@pytest.mark.parametrize(
    ("text", "field", "words"),
    [
        (MINIMAL + "colour: red\n", "colour", "Extra inputs"),
        (MINIMAL + "prefill_step_size: many\n", "prefill_step_size", "integer"),
        (MINIMAL + "prefill_step_size: 0\n", "prefill_step_size", "greater than"),
        (MINIMAL + "tolerances: {logits: {check: fuzzy}}\n", "tolerances.logits.0", "fuzzy"),
        (MINIMAL + "tolerances: {hidden: {check: exact}}\n", "tolerances", "unknown stage"),
        (
            MINIMAL + "tolerances: {logits: {check: allclose}}\n",
            "tolerances.logits.0.atol",
            "required",
        ),
        (MINIMAL + "profile: lenient\n", "profile", "exact"),
        ("model: {synth: gemma4}\nmessages: []\n", "messages", "at least 1"),
        ("messages: [{role: user, content: hi}]\n", "model", "required"),
        (
            "model: {synth: gemma4}\nmessages: [{role: robot, content: hi}]\n",
            "messages.0.role",
            "user",
        ),
        (
            "model: {synth: gemma4}\nmessages: [{role: user, content: [{type: image}]}]\n",
            "messages.0.content.0.image",
            "required",
        ),
    ],
)
def test_bad_fields_are_named(tmp_path, text, field, words):
    with pytest.raises(CaseError) as info:
        load_case(write(tmp_path, "bad.yaml", text))
    message = str(info.value)
    assert message.startswith(str(tmp_path / "bad.yaml") + ": " + field + ":"), message
    assert words in message
    assert "\n" not in message


def test_malformed_yaml_names_file_and_line(tmp_path):
    path = write(tmp_path, "broken.yaml", "model: {synth: gemma4\nmessages: [\n")
    with pytest.raises(CaseError) as info:
        load_case(path)
    assert str(path) in str(info.value) and "malformed YAML (line" in str(info.value)


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(CaseError, match="top level must be a mapping"):
        load_case(write(tmp_path, "list.yaml", "- a\n- b\n"))


def test_include_cycle_is_reported(tmp_path):
    write(tmp_path, "a.yaml", "include: b.yaml\n")
    write(tmp_path, "b.yaml", "include: a.yaml\n")
    with pytest.raises(CaseError, match="include cycle"):
        load_case(tmp_path / "a.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    path = write(
        tmp_path, "evil.yaml", MINIMAL + "description: !!python/object/apply:os.system ['true']\n"
    )
    with pytest.raises(CaseError, match="malformed YAML"):
        load_case(path)


def test_image_paths_cannot_escape_the_case_directory(tmp_path):
    case_dir = tmp_path / "cases"
    case_dir.mkdir()
    case = load_case(
        write(
            case_dir,
            "esc.yaml",
            """
        model: {synth: gemma4}
        messages: [{role: user, content: [{type: image, image: ../secret.png}]}]
    """,
        )
    )
    with pytest.raises(CaseError, match="escapes"):
        _ = case.image_files


def test_directory_scan_skips_bases_and_keeps_going_past_bad_files(tmp_path):
    write(tmp_path, "_base.yaml", "prefill_step_size: 8\n")
    write(tmp_path, "good.yaml", MINIMAL)
    write(tmp_path, "bad.yaml", "model: [\n")
    assert [p.name for p in discover([tmp_path])] == ["bad.yaml", "good.yaml"]
    cases, errors = load_cases([tmp_path])
    assert [c.id for c in cases] == ["good"]
    assert [e.case_id for e in errors] == ["bad"]


def test_duplicate_ids_are_rejected(tmp_path):
    write(tmp_path, "one.yaml", MINIMAL + "id: same\n")
    write(tmp_path, "two.yaml", MINIMAL + "id: same\n")
    cases, errors = load_cases([tmp_path])
    assert len(cases) == 1 and "duplicate id 'same'" in str(errors[0])


def test_empty_case_directory_is_an_error(tmp_path):
    with pytest.raises(CaseError, match="no case files"):
        discover([tmp_path])


def test_cases_are_discovered_in_architecture_folders(tmp_path):
    """cases/<model_type>/ holds an architecture's cases; `_` files and folders are shared
    bases, `images/` folders are not searched."""
    write(tmp_path, "a.yaml", MINIMAL)
    (tmp_path / "gemma3" / "images").mkdir(parents=True)
    (tmp_path / "_shared").mkdir()
    write(tmp_path / "gemma3", "_base.yaml", MINIMAL)
    write(tmp_path / "gemma3", "b.yaml", "include: _base.yaml\n")
    write(tmp_path / "gemma3" / "images", "c.yaml", MINIMAL)
    write(tmp_path / "_shared", "d.yaml", MINIMAL)
    cases, errors = load_cases([tmp_path])
    assert not errors and sorted(c.id for c in cases) == ["a", "b"]
