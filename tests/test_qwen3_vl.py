"""Qwen3-VL: the synthesizer builds checkpoints both libraries load identically, the reference
add-on (mlx-lm text model patched with mlx-vlm's M-RoPE and DeepStack) is bit-exact with
native mlx-vlm on every shipped case (every stage, positions and DeepStack included), and
every mutant add-on in tests/qwen3_vl_mutants.py FAILS at the stage where its mistake
enters, under the shipped exact profile and the engine's looser image profile.
Everything runs through the built-in registries and paths (`synth: qwen3_vl`,
`addon: qwen3_vl`, mlx-vlm vs unified), as `make parity` runs the cases."""

from __future__ import annotations

import json
from itertools import islice

import arch_suite
import mlx.core as mx
import numpy as np
import pytest
from arch_suite import PROFILES, check, verdict

from harness.records import Status
from harness.synth import ensure_checkpoint

ARCH = "qwen3_vl"

# (case, mutant class in tests/qwen3_vl_mutants.py, first diverging stage, first failing
# stage under the image profile, where per-layer checks do not gate).
# ChunkedMRoPE: positions are equal (position_ids passes), the rotation of the image rows is
# not, so layer.0 is where it enters (0.053). Under the image profile layer.N does not gate
# and the first gating failure is the logits. deepstack.N passes there: the same features
# added to a different hidden state round differently (0.0078, one bf16 ulp of |h| in
# [1, 2)), and the image profile counts that stage's ulps at the hidden state's magnitude.
MUTANTS = [
    ("qwen3_vl_one_image", "DeepStackDropped", "deepstack.0", "deepstack.0"),
    ("qwen3_vl_one_image", "DeepStackOneLayerLate", "deepstack.0", "deepstack.0"),
    ("qwen3_vl_split_prefill", "DeepStackNotSlicedByChunk", "deepstack.0", "deepstack.0"),
    ("qwen3_vl_one_image", "PositionsMissing", "position_ids", "position_ids"),
    ("qwen3_vl_one_image", "ChunkedMRoPE", "layer.0", "logits"),
    ("qwen3_vl_text_after_image", "KeepsPromptState", "position_ids", "position_ids"),
]
# Mistakes that only show on some prompts: the same add-on passes here.
CONTROLS = [
    # One prefill call holds the whole image span: the first features are the right ones.
    ("qwen3_vl_one_image", "DeepStackNotSlicedByChunk"),
    # A text prompt has no image rows: no DeepStack, and all three M-RoPE axes are equal,
    # so the frequency layout cannot matter.
    ("qwen3_vl_text", "DeepStackDropped"),
    ("qwen3_vl_text", "ChunkedMRoPE"),
    # The first prompt of a session has no earlier state to leak (runs before the
    # text_after_image mutant cases, in the same mutant session).
    ("qwen3_vl_one_image", "KeepsPromptState"),
]


def _case(name: str):
    return arch_suite.case(ARCH, name)


@pytest.fixture(scope="module")
def qwen3_vl_run():
    """Every shipped Qwen3-VL case, every mutant and every control, in one run."""
    # Plain mlx-lm RoPE on a text prompt: bit-exact in bf16, not in float32.
    plain_rope = [
        arch_suite.mutant_case(_case(name), ARCH, "PositionsMissing", f"{name}--PositionsMissing")
        for name in ("qwen3_vl_text", "qwen3_vl_fp32_text")
    ]
    # Controls first: KeepsPromptState's image case must precede its text cases in the
    # session both share (a session runs its cases in list order).
    return arch_suite.arch_run(ARCH, MUTANTS, CONTROLS, extra=plain_rope, controls_first=True)


SHIPPED = arch_suite.shipped_ids(ARCH)


# --- the cases --------------------------------------------------------------------------


def test_shipped_cases_exist():
    assert {
        "qwen3_vl_text",
        "qwen3_vl_one_image",
        "qwen3_vl_two_images",
        "qwen3_vl_split_prefill",
        "qwen3_vl_4bit",
        "qwen3_vl_fp32",
        "qwen3_vl_text_after_image",
    } <= set(SHIPPED)


@pytest.mark.parametrize("case_id", SHIPPED)
def test_case_is_bit_exact(qwen3_vl_run, case_id):
    stages = {"position_ids", "deepstack.0", "deepstack.1", "deepstack.2"}
    arch_suite.assert_bit_exact(verdict(qwen3_vl_run, case_id), stages)


def test_split_prefill_splits_the_image_span(qwen3_vl_run):
    # The 20 image tokens sit at prompt positions 4..23.
    arch_suite.assert_prefill_splits(verdict(qwen3_vl_run, "qwen3_vl_split_prefill"), 4, 23)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("case_name", "mutant", "stage", "image_stage"), MUTANTS)
def test_mutant_fails_at_its_stage(qwen3_vl_run, case_name, mutant, stage, image_stage, profile):
    v = verdict(qwen3_vl_run, f"{case_name}--{mutant}--{profile}")
    arch_suite.assert_fails_at(v, stage, stage if profile == "exact" else image_stage)


@pytest.mark.parametrize(("case_name", "mutant"), CONTROLS)
def test_mistake_invisible_on_this_prompt(qwen3_vl_run, case_name, mutant):
    arch_suite.assert_control_passes(verdict(qwen3_vl_run, f"{case_name}--{mutant}"))


def test_late_deepstack_shows_the_features_one_layer_later(qwen3_vl_run):
    # Native adds features after layers 0 and 1; the mutant after 1 and 2.
    v = verdict(qwen3_vl_run, "qwen3_vl_one_image--DeepStackOneLayerLate--exact")
    assert not check(v, "deepstack.0").passed
    assert not check(v, "deepstack.2").passed
    assert check(v, "layer.0").passed


def test_unsliced_deepstack_is_wrong_only_after_the_first_chunk(qwen3_vl_run):
    # Rows 4-9 (first chunk) get features 0-5 either way; rows 10-23 get the wrong ones.
    v = verdict(qwen3_vl_run, "qwen3_vl_split_prefill--DeepStackNotSlicedByChunk--exact")
    detail = check(v, "deepstack.0").detail
    differing = int(detail.split(" of ")[0])
    hidden = 64
    assert 0 < differing <= (23 - 10 + 1) * hidden, detail


def test_plain_rope_on_text_prompts_is_exact_in_bf16_only(qwen3_vl_run):
    # mlx-lm's fused RoPE vs mlx-vlm's explicit cos/sin on 1-D positions.
    bf16 = verdict(qwen3_vl_run, "qwen3_vl_text--PositionsMissing")
    assert bf16.status is Status.PASS and bf16.first_difference is None
    fp32 = verdict(qwen3_vl_run, "qwen3_vl_fp32_text--PositionsMissing")
    assert fp32.status is Status.FAIL and fp32.first_divergence == "layer.0"
    assert check(fp32, "position_ids").passed
    assert 0 < check(fp32, "layer.0").value < 1e-4


# --- decode steps (in process: the harness compares the first token) -------------------


class _AllLogits:
    """A logits processor keeping every step's logits."""

    def __init__(self) -> None:
        self.logits: list = []

    def __call__(self, tokens, logits):
        self.logits.append(np.array(logits.astype(mx.float32)))
        return logits


def _unified_logits(addon, text_model, tokens, images_b64, steps, rope_deltas=None):
    import dataclasses

    from mlx_lm.generate import generate_step

    addon.clear_prediction_state(text_model)
    input_ids, embeddings = addon.compute_embeddings(text_model, tokens, images_b64, None)
    if rope_deltas is not None:
        decoder = text_model.language_model.model
        decoder.vl_prompt = dataclasses.replace(decoder.vl_prompt, rope_deltas=rope_deltas)
    recorder = _AllLogits()
    stream = generate_step(
        input_ids,
        text_model,
        max_tokens=steps,
        input_embeddings=embeddings,
        logits_processors=[recorder],
    )
    list(islice(stream, steps))
    return recorder.logits[:steps]


def test_decode_steps_are_bit_exact_and_need_rope_deltas():
    """Two decode steps after an image prompt: positions offset + rope_deltas on the
    unified path match native's bit for bit; decoding on plain offsets (rope_deltas
    forgotten) keeps the first token and breaks the next ones."""
    import base64

    import mlx_lm
    import mlx_vlm
    from mlx_vlm.generate import generate_step
    from mlx_vlm.utils import prepare_inputs

    from harness.architectures.qwen3_vl.addon import AddOn

    case, steps = _case("qwen3_vl_one_image"), 3
    model_dir = ensure_checkpoint("qwen3_vl", case.model.options)
    model, processor = mlx_vlm.load(str(model_dir))
    prompt = processor.apply_chat_template(
        case.template_messages(), tokenize=False, add_generation_prompt=True
    )
    inputs = prepare_inputs(
        processor,
        images=[str(p) for p in case.image_files],
        prompts=[prompt],
        image_token_index=model.config.image_token_id,
    )
    ids, pixels, mask = (inputs.pop(k) for k in ("input_ids", "pixel_values", "attention_mask"))
    native = _AllLogits()
    stream = generate_step(
        ids,
        model,
        pixels,
        mask,
        max_tokens=steps,
        temperature=0.0,
        logits_processors=[native],
        **inputs,
    )
    list(islice(stream, steps))

    addon = AddOn(model_dir)
    text_model, tokenizer = mlx_lm.load(str(model_dir))
    addon.patch_text_model(text_model)
    tokens = mx.array(tokenizer.encode(prompt, add_special_tokens=False))
    images = [base64.b64encode(p.read_bytes()).decode() for p in case.image_files]
    unified = _unified_logits(addon, text_model, tokens, images, steps)
    assert len(native.logits) >= steps and len(unified) == steps
    for step, (ref, test) in enumerate(zip(native.logits[:steps], unified, strict=True)):
        assert np.array_equal(ref, test), (step, float(np.abs(ref - test).max()))

    plain = _unified_logits(addon, text_model, tokens, images, steps, mx.zeros((1, 1), mx.int32))
    assert np.array_equal(plain[0], native.logits[0])
    assert not np.array_equal(plain[1], native.logits[1])


# --- the synthesizer --------------------------------------------------------------------


def test_same_spec_same_bytes(tmp_path):
    arch_suite.assert_same_spec_same_bytes(ARCH, tmp_path, quantize_bits=4)


def test_config_writes_every_value_whose_default_differs():
    from mlx_vlm.models.qwen3_vl import config as vlm

    model_dir = ensure_checkpoint("qwen3_vl", _case("qwen3_vl_one_image").model.options)
    config = json.loads((model_dir / "config.json").read_text())
    text, vision = config["text_config"], config["vision_config"]
    # mlx-vlm's defaults describe the published 151k-vocabulary, 32-block model.
    assert vlm.TextConfig.__dataclass_fields__["rope_scaling"].default_factory() == {
        "type": "default",
        "mrope_section": [24, 20, 20],
    }
    assert vlm.VisionConfig.__dataclass_fields__["deepstack_visual_indexes"].default_factory() == []
    assert vlm.ModelConfig.__dataclass_fields__["image_token_id"].default == 151655
    assert text["model_type"] == "qwen3_vl_text"
    assert text["rope_scaling"] == {
        "rope_type": "default",
        "mrope_section": [6, 5, 5],
        "mrope_interleaved": True,
    }
    assert sum(text["rope_scaling"]["mrope_section"]) == text["head_dim"] // 2
    for key in ("head_dim", "rope_theta", "max_position_embeddings", "tie_word_embeddings"):
        assert key in text  # mlx-lm's qwen3 ModelArgs requires each
    assert vision["deepstack_visual_indexes"] == [0, 1]
    assert len(vision["deepstack_visual_indexes"]) < text["num_hidden_layers"]
    side = int(vision["num_position_embeddings"] ** 0.5)
    assert side * side == vision["num_position_embeddings"]
    assert vision["out_hidden_size"] == text["hidden_size"]
    for key in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        assert isinstance(config[key], int) and config[key] < text["vocab_size"]
    weights = mx.load(str(model_dir / "model.safetensors"))
    assert "language_model.lm_head.weight" not in weights  # tied: both read the table
    out, channels, temporal, kh, kw = weights["vision_tower.patch_embed.proj.weight"].shape
    assert (channels, temporal, kh, kw) == (3, 2, vision["patch_size"], vision["patch_size"])
    for name in (
        "preprocessor_config.json",
        "video_preprocessor_config.json",
        "processor_config.json",
        "tokenizer_config.json",
        "chat_template.jinja",
    ):
        assert (model_dir / name).exists(), name
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert pre["patch_size"] == vision["patch_size"] and pre["merge_size"] == 2
    assert np.isclose(pre["size"]["longest_edge"], 6400)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"head_dim": 15}, "head_dim"),
        ({"mrope_section": (8, 4, 3)}, "mrope_section"),
        ({"mrope_section": (16, 0, 0)}, "mrope_section"),
        ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads"),
        ({"num_position_embeddings": 60}, "num_position_embeddings"),
        ({"deepstack_visual_indexes": (0, 1, 2)}, "deepstack_visual_indexes"),
        ({"deepstack_visual_indexes": (1, 0)}, "deepstack_visual_indexes"),
        ({"num_layers": 2}, "deepstack_visual_indexes"),
        ({"patch_size": 3}, "patch_size"),
        ({"vision_heads": 3}, "vision_heads"),
        ({"max_pixels": 100}, "max_pixels"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"dtype": "float16"}, "dtype"),
        ({"quantize_bits": 3}, "quantize_bits"),
        ({"seed": -1}, "seed"),
        ({"colour": "red"}, "colour"),
        ({"hidden_size": 100_000}, "hidden_size"),
    ],
)
def test_invalid_options_are_refused_naming_the_option(options, field):
    arch_suite.assert_option_refused(ARCH, options, field)
