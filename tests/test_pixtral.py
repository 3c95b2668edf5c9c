"""Pixtral: the synthesizer builds checkpoints both libraries load identically, the reference
add-on is bit-exact with native mlx-vlm on every shipped case (every stage, max abs diff 0),
and every mutant add-on in tests/pixtral_mutants.py FAILS at the stage where its mistake
enters. One `run_cases` for everything, as in tests/test_mistral3.py."""

from __future__ import annotations

import hashlib
import inspect
import json

import pytest
from conftest import CASES

from harness.cases import load_case, load_cases
from harness.policy import ImportPolicy
from harness.records import Status, stage_rank
from harness.runner import RunOptions, run_cases
from harness.synth import ensure_checkpoint

PIXTRAL_CASES = CASES / "pixtral"
IMPORTS = ImportPolicy(("pixtral_mutants",))

# (case, mutant class in tests/pixtral_mutants.py, first diverging stage)
MUTANTS = [
    ("pixtral_one_image", "Float32Features", "embeddings"),
    ("pixtral_two_images", "ContiguousImageSpan", "embeddings"),
    ("pixtral_one_image", "PenultimateVisionLayer", "embeddings"),
]
PROFILES = ["exact", "image"]
# A one-row token grid has no [IMG_BREAK]: its [IMG] rows are one contiguous run.
CONTROLS = [("pixtral_one_row", "ContiguousImageSpan")]
ONE_ROW_IMAGE = "images/wide_strip_256x48.png"  # fitted into 32x8 px: one row of 4 [IMG]


def _case(name: str):
    if name == "pixtral_one_row":
        base = _case("pixtral_one_image")
        content = [{"type": "image", "image": ONE_ROW_IMAGE}, {"type": "text", "text": "Hello"}]
        messages = [{"role": "user", "content": content}]
        return type(base).model_validate({**base.model_dump(), "id": name, "messages": messages})
    return load_case(PIXTRAL_CASES / f"{name}.yaml")


@pytest.fixture(scope="module")
def pixtral_run():
    """Every shipped Pixtral case, every mutant and the control, in one run."""
    shipped, errors = load_cases([PIXTRAL_CASES])
    assert not errors, errors
    cases = list(shipped)
    for name, mutant, _ in MUTANTS:
        for profile in PROFILES:
            cases.append(
                _case(name).model_copy(
                    update={
                        "id": f"{name}--{mutant}--{profile}",
                        "addon": f"pixtral_mutants:{mutant}",
                        "profile": profile,
                    }
                )
            )
    for name, mutant in CONTROLS:
        cases.append(
            _case(name).model_copy(
                update={"id": f"{name}--{mutant}", "addon": f"pixtral_mutants:{mutant}"}
            )
        )
    return run_cases(cases, options=RunOptions(imports=IMPORTS))


def _verdict(run, case_id: str):
    (v,) = [v for v in run.verdicts if v.case_id == case_id]
    return v


SHIPPED = sorted(p.stem for p in PIXTRAL_CASES.glob("pixtral_*.yaml"))


def test_shipped_cases_exist():
    assert {"pixtral_text", "pixtral_one_image", "pixtral_split_prefill", "pixtral_4bit"} <= set(
        SHIPPED
    )


@pytest.mark.parametrize("case_id", SHIPPED)
def test_case_is_bit_exact(pixtral_run, case_id):
    v = _verdict(pixtral_run, case_id)
    assert v.status is Status.PASS, v.reason or v.first_failure_detail
    assert v.first_difference is None, v.first_difference_detail
    assert all(c.value == 0 for c in v.checks if c.metric.startswith("max_abs")), [
        (c.stage, c.metric, c.value) for c in v.checks if c.value
    ]
    stages = {c.stage for c in v.checks}
    assert {"input_ids", "embeddings", "attention_mask", "layer.0", "logits"} <= stages
    assert v.provenance["reference_prefill_chunks"] == v.provenance["candidate_prefill_chunks"]


def test_split_prefill_splits_the_image_span(pixtral_run):
    v = _verdict(pixtral_run, "pixtral_split_prefill")
    chunks = [int(n) for n in v.provenance["candidate_prefill_chunks"].split(",")]
    edges = [sum(chunks[: i + 1]) for i in range(len(chunks) - 1)]
    # [IMG] / [IMG_BREAK] / [IMG_END] of the 4x4-token image sit at prompt positions 2..21.
    assert any(2 < edge <= 21 for edge in edges), chunks


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("case_name", "mutant", "stage"), MUTANTS)
def test_mutant_fails_at_its_stage(pixtral_run, case_name, mutant, stage, profile):
    v = _verdict(pixtral_run, f"{case_name}--{mutant}--{profile}")
    gating_failures = [c for c in v.checks if c.gating and not c.passed]
    assert v.status is Status.FAIL and gating_failures, v.reason
    assert v.first_divergence == stage
    assert v.first_failure == stage
    failing = {c.stage for c in v.checks if not c.passed}
    assert all(stage_rank(s) >= stage_rank(stage) for s in failing)
    passing_before = {c.stage for c in v.checks if stage_rank(c.stage) < stage_rank(stage)}
    assert "input_ids" in passing_before


@pytest.mark.parametrize(("case_name", "mutant"), CONTROLS)
def test_mistake_invisible_on_this_config(pixtral_run, case_name, mutant):
    v = _verdict(pixtral_run, f"{case_name}--{mutant}")
    assert v.status is Status.PASS, v.first_failure_detail
    assert v.first_difference is None, v.first_difference_detail


# --- the synthesizer --------------------------------------------------------------------


def test_same_spec_same_bytes(tmp_path):
    from harness.architectures.pixtral import synth

    spec = synth.Spec(add_bos_token=True)
    digests = []
    for name in ("a", "b"):
        out = tmp_path / name
        out.mkdir()
        synth.build(spec, out)
        digests.append(
            {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(out.iterdir())}
        )
    assert digests[0] == digests[1]
    assert "model.safetensors" in digests[0]


def test_config_writes_every_value_whose_default_differs():
    from mlx_lm.models import llama as lm_llama
    from mlx_vlm.models import pixtral as vlm
    from mlx_vlm.models.pixtral.processing_pixtral import PixtralProcessor

    model_dir = ensure_checkpoint("pixtral", _case("pixtral_one_image").model.options)
    config = json.loads((model_dir / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    # mlx-vlm's pixtral text defaults are Pixtral 12B's, mlx-lm's llama derives or
    # defaults otherwise: every one is written.
    vlm_text = vlm.TextConfig.__dataclass_fields__
    assert (vlm_text["head_dim"].default, vlm_text["num_key_value_heads"].default) == (128, 8)
    assert lm_llama.ModelArgs.__dataclass_fields__["rope_theta"].default == 10000
    assert vlm_text["rope_theta"].default == 1e9
    assert (text["head_dim"], text["num_key_value_heads"], text["rope_theta"]) == (16, 2, 1e9)
    assert text["tie_word_embeddings"] is False and text["rope_scaling"] is None
    assert vision["model_type"] == "pixtral" and vision["head_dim"] == 16
    assert vision["image_size"] == 32
    assert config["model_type"] == "pixtral" and "spatial_merge_size" not in config
    assert config["vision_feature_layer"] == -1
    # The processor's patch size comes from processor_config.json alone (default 16).
    assert inspect.signature(PixtralProcessor).parameters["patch_size"].default == 16
    proc = json.loads((model_dir / "processor_config.json").read_text())
    assert proc["patch_size"] == vision["patch_size"] == 8 and proc["spatial_merge_size"] == 1
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert pre["size"] == {"longest_edge": 32}
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    weights = index["weight_map"]
    assert "language_model.lm_head.weight" in weights
    assert "multi_modal_projector.linear_1.bias" in weights
    assert not any("patch_merger" in k or "projector.norm" in k for k in weights)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"spatial_merge_size": 2}, "spatial_merge_size"),
        ({"longest_edge": 36}, "longest_edge"),
        ({"vision_heads": 3}, "vision_heads"),
        ({"head_dim": 15}, "head_dim"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_invalid_options_are_refused_naming_the_option(options, field):
    from pydantic import ValidationError

    from harness.architectures.pixtral import synth

    with pytest.raises(ValidationError) as info:
        synth.Spec.model_validate(options)
    assert info.value.errors()[0]["loc"] == (field,)
