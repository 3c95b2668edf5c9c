"""Gemma 3n: the synthesizer builds checkpoints both libraries load unpatched; the shipped
(text) cases are bit-exact, mlx-lm vs the unified path; image prompts are bit-exact
against native mlx-vlm with a stand-in vision tower on both sides (tests/gemma3n_mutants.py
says why); every mutant add-on FAILS at the stage where its mistake enters, under the
exact and the image profile; and the two native mlx-vlm 0.7.10 deviations are held with
their measured size: unscaled prompt embeddings (text prompts) and the KV-shared layers'
query positions."""

from __future__ import annotations

import hashlib
import json
import math

import pytest
from conftest import CASES

from harness.cases import CaseSpec, load_case, load_cases
from harness.policy import ImportPolicy
from harness.records import Status, stage_rank
from harness.runner import RunOptions, run_cases
from harness.synth import ensure_checkpoint

GEMMA3N_CASES = CASES / "gemma3n"
IMPORTS = ImportPolicy(("gemma3n_mutants",))
STUB_PATHS = {"reference": "gemma3n_mutants:StubTowerNative", "candidate": "unified"}
STUB_ADDON = "gemma3n_mutants:StubTowerAddOn"
RED, GRADIENT = "images/red_square_400x300.png", "images/gradient_256.png"

# Image prompts against native (stand-in tower): id -> (options, prefill step, content).
IMAGE_CASES = {
    "stub_one_image": ({}, 2048, [RED, "What is in the picture?"]),
    # Two 256-token spans; a step of 100 puts chunk edges at 100, 200 (first span, 7-262)
    # and 300, 400, 500 (second span).
    "stub_two_images_split": ({}, 100, [GRADIENT, "Compare the two images.", RED, "Which?"]),
    # Quantized embedders: the hard-token table and the soft-token projection.
    "stub_4bit": ({"quantize_bits": 4}, 2048, [RED, "What is in the picture?"]),
}
# (case, mutant class in tests/gemma3n_mutants.py, first diverging stage)
MUTANTS = [
    ("stub_one_image", "UnmaskedPerLayerIds", "per_layer_inputs"),
    ("gemma3n_multimodal_ids", "UnmaskedPerLayerIds", "per_layer_inputs"),
    ("stub_one_image", "ScaleAppliedTwice", "embeddings"),
    ("stub_one_image", "Float32Merge", "embeddings"),
    ("stub_one_image", "HardTokensFromTextTable", "embeddings"),
]
PROFILES = ["exact", "image"]
# Mistakes invisible on some prompts: the same add-on passes there.
CONTROLS = [
    # No id outside the per-layer table: clamping and masking read the same rows.
    ("gemma3n_text", "UnmaskedPerLayerIds"),
    # Text prompts never reach the add-on's embedding code.
    ("gemma3n_text", "ScaleAppliedTwice"),
]


def _case(name: str) -> CaseSpec:
    return load_case(GEMMA3N_CASES / f"{name}.yaml")


def _image_case(case_id: str) -> CaseSpec:
    options, step, content = IMAGE_CASES[case_id]
    base = _case("gemma3n_text")
    items = [
        {"type": "image", "image": c} if c.startswith("images/") else {"type": "text", "text": c}
        for c in content
    ]
    data = base.model_dump(exclude={"id", "messages", "markers", "description", "model"})
    data |= {
        "id": case_id,
        "messages": [{"role": "user", "content": items}],
        "model": {"synth": "gemma3n", "options": {**base.model.options, **options}},
        "paths": STUB_PATHS,
        "addon": STUB_ADDON,
        "prefill_step_size": step,
    }
    return CaseSpec.model_validate(data)


def _named(name: str) -> CaseSpec:
    return _image_case(name) if name in IMAGE_CASES else _case(name)


def _variant(case: CaseSpec, case_id: str, **update) -> CaseSpec:
    return case.model_copy(update={"id": case_id, **update})


@pytest.fixture(scope="module")
def gemma3n_run():
    return run_all()


def run_all():
    """Every shipped case, the stand-in-tower image cases, the mutants, the controls and
    the native deviations, in one run."""
    shipped, errors = load_cases([GEMMA3N_CASES])
    assert not errors, errors
    cases = list(shipped) + [_image_case(name) for name in IMAGE_CASES]
    for name, mutant, _ in MUTANTS:
        for profile in PROFILES:
            cases.append(
                _variant(
                    _named(name),
                    f"{name}--{mutant}--{profile}",
                    addon=f"gemma3n_mutants:{mutant}",
                    profile=profile,
                )
            )
    for name, mutant in CONTROLS:
        cases.append(_variant(_case(name), f"{name}--{mutant}", addon=f"gemma3n_mutants:{mutant}"))
    # Native deviations: a text prompt through native mlx-vlm, and an image prompt on the
    # checkpoint whose last two layers share KV (gemma3n_kv_shared_window's).
    native = _case("gemma3n_text").paths.model_copy(update={"reference": "mlx-vlm"})
    cases.append(_variant(_case("gemma3n_text"), "native_text", paths=native))
    shared = _case("gemma3n_kv_shared_window").model
    cases.append(_variant(_image_case("stub_one_image"), "native_kv_shared", model=shared))
    return run_cases(cases, options=RunOptions(imports=IMPORTS))


def _verdict(run, case_id: str):
    (v,) = [v for v in run.verdicts if v.case_id == case_id]
    return v


def _check(v, stage: str, metric: str = "max_abs_diff"):
    (found,) = [c for c in v.checks if c.stage == stage and c.metric == metric]
    return found


SHIPPED = sorted(p.stem for p in GEMMA3N_CASES.glob("gemma3n_*.yaml"))


# --- the cases --------------------------------------------------------------------------


def test_shipped_cases_exist():
    assert {
        "gemma3n_text",
        "gemma3n_multimodal_ids",
        "gemma3n_kv_shared_window",
        "gemma3n_4bit",
        "gemma3n_fp32",
    } <= set(SHIPPED)


@pytest.mark.parametrize("case_id", SHIPPED + sorted(IMAGE_CASES))
def test_case_is_bit_exact(gemma3n_run, case_id):
    v = _verdict(gemma3n_run, case_id)
    assert v.status is Status.PASS, v.reason or v.first_failure_detail
    assert v.first_difference is None, v.first_difference_detail
    assert all(c.value == 0 for c in v.checks if c.metric.startswith("max_abs")), [
        (c.stage, c.metric, c.value) for c in v.checks if c.value
    ]
    stages = {c.stage for c in v.checks}
    assert {"input_ids", "per_layer_inputs", "embeddings", "layer.0", "logits"} <= stages
    assert v.provenance["reference_prefill_chunks"] == v.provenance["candidate_prefill_chunks"]


def test_two_images_split_prefill_cuts_both_spans(gemma3n_run):
    v = _verdict(gemma3n_run, "stub_two_images_split")
    chunks = [int(n) for n in v.provenance["candidate_prefill_chunks"].split(",")]
    edges = {sum(chunks[: i + 1]) for i in range(len(chunks) - 1)}
    assert {100, 200, 300, 400, 500} <= edges, chunks


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("case_name", "mutant", "stage"), MUTANTS)
def test_mutant_fails_at_its_stage(gemma3n_run, case_name, mutant, stage, profile):
    v = _verdict(gemma3n_run, f"{case_name}--{mutant}--{profile}")
    gating_failures = [c for c in v.checks if c.gating and not c.passed]
    assert v.status is Status.FAIL and gating_failures, v.reason
    assert v.first_divergence == stage
    assert v.first_failure == stage
    failing = {c.stage for c in v.checks if not c.passed}
    assert all(stage_rank(s) >= stage_rank(stage) for s in failing)
    assert _check(v, "input_ids").passed


@pytest.mark.parametrize(("case_name", "mutant"), CONTROLS)
def test_mistake_invisible_on_this_config(gemma3n_run, case_name, mutant):
    v = _verdict(gemma3n_run, f"{case_name}--{mutant}")
    assert v.status is Status.PASS, v.first_failure_detail


def test_native_text_prompts_lack_the_embed_scale(gemma3n_run):
    # mlx-vlm 0.7.10's get_input_embeddings returns unscaled token rows and its decoder
    # uses them as given: 8x smaller than mlx-lm's (and Transformers') at hidden 64. The
    # per-layer inputs, computed from the ids alone, still agree.
    v = _verdict(gemma3n_run, "native_text")
    assert v.status is Status.FAIL and v.first_failure == "embeddings"
    assert _check(v, "input_ids").value == 0 and _check(v, "per_layer_inputs").value == 0
    assert _check(v, "embeddings").value > 1.0
    assert _check(v, "logits").value > 1.0


def test_native_kv_shared_layers_diverge_at_the_first_shared_layer(gemma3n_run):
    # mlx-vlm 0.7.10 rotates a shared layer's queries from the cache offset after the
    # owner layer's update (offset + chunk length); mlx-lm from the offset before it.
    v = _verdict(gemma3n_run, "native_kv_shared")
    assert v.status is Status.FAIL and v.first_divergence == "layer.2"
    for stage in ("per_layer_inputs", "embeddings", "layer.0", "layer.1"):
        assert _check(v, stage).value == 0, stage
    assert _check(v, "logits").value > 0.5


# --- the synthesizer --------------------------------------------------------------------


def _digests(directory) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.iterdir())
        if p.is_file() and not p.name.startswith(".") and p.name != "synth_spec.json"
    }


def test_same_spec_same_bytes(gemma3n_run, tmp_path):
    # A fresh build (another process's random state, another directory) against the cached
    # build of the same 4-bit spec the run used: every file byte-identical. One build only:
    # each checkpoint holds mlx-vlm's full-size tower (~590 MB).
    from harness.architectures.gemma3n import synth

    options = _case("gemma3n_4bit").model.options
    synth.build(synth.Spec.model_validate(options), tmp_path)
    fresh, cached = _digests(tmp_path), _digests(ensure_checkpoint("gemma3n", options))
    assert fresh == cached
    assert "model.safetensors" in fresh


def test_config_writes_every_value_whose_default_differs():
    from mlx_vlm.models import gemma3n as vlm

    model_dir = ensure_checkpoint("gemma3n", _case("gemma3n_text").model.options)
    config = json.loads((model_dir / "config.json").read_text())
    text, vision, audio = config["text_config"], config["vision_config"], config["audio_config"]
    defaults = {f: vlm.TextConfig.__dataclass_fields__[f].default for f in ("sliding_window",)}
    assert defaults == {"sliding_window": 1024}
    assert vlm.TextConfig.__dataclass_fields__["altup_coef_clip"].default is None
    assert vlm.VisionConfig.__dataclass_fields__["vocab_offset"].default == 262144
    assert vlm.AudioConfig.__dataclass_fields__["input_feat_size"].default == 80
    assert vlm.ModelConfig.__dataclass_fields__["image_token_id"].default == 262145
    assert text["sliding_window"] == 512 and text["altup_coef_clip"] == 120.0
    assert text["intermediate_size"] == [128] * text["num_hidden_layers"]
    assert text["vocab_size_per_layer_input"] == 512 == vision["vocab_offset"]
    assert audio["vocab_offset"] == 512 + 128 and audio["input_feat_size"] == 128
    assert config["vocab_size"] == text["vocab_size"] == 512 + 2 * 128
    assert config["image_token_id"] == config["image_token_index"] == 513
    assert config["eoi_token_id"] == 512 and config["audio_token_id"] == 641
    assert config["vision_soft_tokens_per_image"] == 256
    tokenizer = json.loads((model_dir / "tokenizer.json").read_text())
    added = {t["content"]: t["id"] for t in tokenizer["added_tokens"]}
    assert added["<end_of_image>"] == 512 and added["<image_soft_token>"] == 513
    assert added["<end_of_audio>"] == 640 and added["<audio_soft_token>"] == 641
    index = json.loads((model_dir / "model.safetensors.index.json").read_text())
    prefixes = {name.split(".")[1] for name in index["weight_map"]}
    # The tower is written (mlx-vlm cannot load a checkpoint without it), no LM head (tied).
    assert prefixes == {
        "language_model",
        "vision_tower",
        "embed_vision",
        "audio_tower",
        "embed_audio",
    }
    assert "lm_head" not in json.dumps(index)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"head_dim": 15}, "head_dim"),
        ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads"),
        ({"num_layers": 2, "sliding_window_pattern": 3}, "sliding_window_pattern"),
        ({"num_layers": 4, "kv_shared_layers": 3}, "kv_shared_layers"),
        ({"num_layers": 4, "sparse_layers": 5}, "sparse_layers"),
        ({"sliding_window_pattern": 1}, "sliding_window_pattern"),
        ({"image_size": 320}, "image_size"),
        ({"image_size": 64}, "image_size"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"dtype": "float16"}, "dtype"),
        ({"quantize_bits": 3}, "quantize_bits"),
        ({"logit_scale": math.inf}, "logit_scale"),
        ({"add_bos_token": True}, "add_bos_token"),
        ({"seed": -1}, "seed"),
        ({"preset": "e2b"}, "preset"),
        ({"colour": "red"}, "colour"),
        ({"hidden_size": 100_000}, "hidden_size"),
        ({"num_layers": 1000}, "num_layers"),
    ],
)
def test_invalid_options_are_refused_naming_the_option(options, field):
    from pydantic import ValidationError

    from harness.architectures.gemma3n import synth

    with pytest.raises(ValidationError) as info:
        synth.Spec.model_validate(options)
    assert info.value.errors()[0]["loc"] == (field,)
