"""Qwen2.5-VL: the synthesizer builds checkpoints both libraries load identically, the
reference add-on (embeddings + an M-RoPE patch of the mlx-lm instance) is bit-exact with
native mlx-vlm on every shipped case (every stage, position_ids included), and every
mutant add-on in tests/qwen2_5_vl_mutants.py FAILS at the stage where its mistake enters.
Everything runs through the built-in registries and paths (`synth: qwen2_5_vl`,
`addon: qwen2_5_vl`, mlx-vlm vs unified), as `make parity` runs the cases."""

from __future__ import annotations

import json

import arch_suite
import numpy as np
import pytest
from arch_suite import PROFILES, check, verdict

from harness.records import Status
from harness.synth import ensure_checkpoint

ARCH = "qwen2_5_vl"
PREFIX = "qwen2_5_vl_"

# (case, mutant class in tests/qwen2_5_vl_mutants.py, first diverging stage)
MUTANTS = [
    ("one_image", "NoPositions", "position_ids"),
    ("split_prefill", "PositionsForFirstCallOnly", "position_ids"),
    ("one_image", "DecodeWithoutDeltas", "decode.1"),
    ("one_image", "Float32Features", "embeddings"),
    ("one_image", "ImagePadsNotReplaced", "embeddings"),
]
# Mistakes that only show on some configs: the same add-on passes here.
CONTROLS = [
    # bf16 text prompt: mlx-lm's fused 1-D RoPE gives native's M-RoPE angles bit for bit.
    ("text", "NoPositions"),
    # The whole prompt but its last row in one call; that row is text after the image,
    # where the decode rule (index + rope_deltas) gives the stored position.
    ("one_image", "PositionsForFirstCallOnly"),
    # A text prompt's rope_deltas are 0.
    ("text", "DecodeWithoutDeltas"),
]
# One unified session of the StalePositions mutant runs these in this order: the text
# case with the core's session_state check (its first capture, in a fresh session, is
# right; the warm-up image prompts' positions leak into its second capture), an image
# case (its own positions overwrite the stale ones), and the text case again with no
# session_state check, following the image case in the same session.
STALE = [
    ("text", "session_state", {"session_state": True, "profile": "exact"}),
    ("one_image", "", {}),
    ("text", "after", {"profile": "image"}),
]
# The same-path checks run only where a test asks for them: mutants are judged on the
# stages their mistakes enter.
NO_SAME_PATH = {"session_state": False, "prompt_cache": None, "batch": None}


def _case(name: str):
    return arch_suite.case(ARCH, PREFIX + name)


def _variant(name: str, case_id: str, mutant: str, **update):
    update = {**NO_SAME_PATH, **update}
    return arch_suite.mutant_case(_case(name), ARCH, mutant, case_id, **update)


@pytest.fixture(scope="module")
def qwen_run():
    """Every shipped case, every mutant, every control and the stale-state session, in
    one run."""
    shipped = arch_suite.shipped_cases(ARCH)
    # Build the three checkpoints here, in one process: the runner would build each in a
    # child process of its own, importing mlx-vlm three times.
    for case in {c.model_key(): c for c in shipped}.values():
        ensure_checkpoint(case.model.synth, case.model.options)
    cases = [
        *shipped,
        *arch_suite.mutant_cases(ARCH, _case, MUTANTS, **NO_SAME_PATH),
        *arch_suite.control_cases(ARCH, _case, CONTROLS, **NO_SAME_PATH),
        # float32 text through plain mlx-lm: the fused RoPE is not bit-exact there.
        _variant("fp32_text", "fp32_text--NoPositions", "NoPositions"),
    ]
    for name, when, update in STALE:
        case_id = "--".join(filter(None, (name, "StalePositions", when)))
        cases.append(_variant(name, case_id, "StalePositions", **update))
    # In this process (the paths' imports are paid once, not by three worker processes):
    # `harness run cases/qwen2_5_vl` runs the shipped cases with process isolation.
    return arch_suite.run(ARCH, cases, isolation="none")


SHIPPED = arch_suite.shipped_ids(ARCH)


# --- the cases --------------------------------------------------------------------------


def test_shipped_cases_exist():
    wanted = {"text", "one_image", "two_images", "split_prefill", "4bit", "fp32"}
    assert {PREFIX + n for n in wanted | {"fp32_text", "text_after_image"}} <= set(SHIPPED)


@pytest.mark.parametrize("case_id", SHIPPED)
def test_case_is_bit_exact(qwen_run, case_id):
    arch_suite.assert_bit_exact(verdict(qwen_run, case_id), stages={"position_ids"})


def test_split_prefill_splits_the_image_span(qwen_run):
    # The 54 image rows sit at prompt indexes 34..87.
    v = verdict(qwen_run, PREFIX + "split_prefill")
    arch_suite.assert_prefill_splits(v, 34, 87, at_least=2)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("case_name", "mutant", "stage"), MUTANTS)
def test_mutant_fails_at_its_stage(qwen_run, case_name, mutant, stage, profile):
    # Under the shipped exact profile and under the engine's looser image profile alike.
    arch_suite.assert_fails_at(verdict(qwen_run, f"{case_name}--{mutant}--{profile}"), stage)


@pytest.mark.parametrize(("case_name", "mutant"), CONTROLS)
def test_mistake_invisible_on_this_config(qwen_run, case_name, mutant):
    v = verdict(qwen_run, f"{case_name}--{mutant}")
    arch_suite.assert_control_passes(v, no_difference=False)
    assert check(v, "position_ids").value == 0


def test_plain_rope_in_float32_is_off_by_rounding_only(qwen_run):
    # mlx-lm's fused RoPE vs mlx-vlm's explicit cos/sin: same positions, float32 rounding
    # apart (why the add-on applies mlx-vlm's rotary to text prompts too).
    v = verdict(qwen_run, "fp32_text--NoPositions")
    assert check(v, "position_ids").value == 0
    assert check(v, "embeddings").value == 0
    assert v.status is Status.FAIL and v.first_failure == "layer.0"
    assert 0 < check(v, "layer.0").value < 1e-4
    assert 0 < check(v, "logits").value < 1e-3


def test_stale_positions_fail_the_session_state_check(qwen_run):
    # First capture in a fresh session: every stage exact; after the warm-up image
    # prompts the text prompt is rotated by their positions.
    v = verdict(qwen_run, "text--StalePositions--session_state")
    assert v.status is Status.FAIL
    assert v.first_failure == v.first_divergence == "session_state"
    assert all(c.passed for c in v.checks if c.stage != "session_state")
    row = check(v, "session_state", None)
    assert "position_ids differs" in row.detail, row.detail


def test_stale_positions_leak_into_the_next_text_prompt(qwen_run):
    image = verdict(qwen_run, "one_image--StalePositions")
    after = verdict(qwen_run, "text--StalePositions--after")
    assert image.status is Status.PASS, image.first_failure_detail
    assert after.status is Status.FAIL
    assert after.first_failure == after.first_divergence == "position_ids"
    assert check(after, "input_ids").value == 0


def test_same_path_checks_ran(qwen_run):
    # The shipped cases' own session-state, prompt-cache and batch checks (exact, exact,
    # tokens equal): the rows exist and passed.
    wanted = {
        "one_image": "session_state",
        "text": "batch",
        "split_prefill": "prompt_cache",
    }
    for name, stage in wanted.items():
        v = verdict(qwen_run, PREFIX + name)
        row = check(v, stage, None)
        assert row.passed and row.gating, row.detail
    state = check(verdict(qwen_run, PREFIX + "text"), "session_state", None)
    assert state.value == 0 and "image prompt" in state.detail


def test_plain_rope_first_differs_inside_the_image(qwen_run):
    # The image's first row (index 34) is (34, 34, 34) under M-RoPE too; its second row
    # is (34, 34, 35) against a plain RoPE's 35.
    row = check(verdict(qwen_run, "one_image--NoPositions--exact"), "position_ids")
    assert row.value == 53 and "first mismatch at (35, 0)" in row.detail, row.detail


# --- the synthesizer --------------------------------------------------------------------


def test_same_spec_same_bytes(tmp_path):
    arch_suite.assert_same_spec_same_bytes(ARCH, tmp_path, quantize_bits=4)


def test_config_writes_every_value_whose_default_differs():
    import mlx.core as mx
    from mlx_lm.models import qwen2 as lm_text
    from mlx_vlm.models.qwen2_5_vl import config as vlm

    model_dir = ensure_checkpoint("qwen2_5_vl", _case("one_image").model.options)
    config = json.loads((model_dir / "config.json").read_text())
    # The libraries' defaults differ (or are wrong for a tiny model): pin why each is written.
    assert lm_text.ModelArgs.__dataclass_fields__["max_position_embeddings"].default == 32768
    assert vlm.TextConfig.__dataclass_fields__["max_position_embeddings"].default == 128000
    assert vlm.ModelConfig.__dataclass_fields__["image_token_id"].default == 151655
    assert config["max_position_embeddings"] == 128000
    assert config["rope_scaling"] == {"type": "mrope", "mrope_section": [2, 3, 3]}
    assert sum(config["rope_scaling"]["mrope_section"]) * 2 * 4 == config["hidden_size"]
    assert config["tie_word_embeddings"] is True
    assert config["vocab_size"] == 512 and config["image_token_id"] < 512
    assert config["vision_config"]["model_type"] == "qwen2_5_vl"
    assert config["vision_config"]["out_hidden_size"] == config["hidden_size"]
    weights = mx.load(str(model_dir / "model.safetensors"))
    assert "language_model.lm_head.weight" not in weights
    # PyTorch layout (out, in, T, kH, kW): mlx-vlm's sanitize transposes it on load.
    assert weights["vision_tower.patch_embed.proj.weight"].shape == (32, 3, 2, 14, 14)
    tokenizer = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer["tokenizer_class"] == "PreTrainedTokenizerFast"
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert (pre["min_pixels"], pre["max_pixels"]) == (3136, 50176)
    for name in ("processor_config.json", "video_preprocessor_config.json", "chat_template.jinja"):
        assert (model_dir / name).exists(), name


def test_call_positions_slice_the_prompt_then_shift():
    """The rows the patched decoder hands a forward call: the stored prompt's rows at the
    cache offset, `index + rope_deltas` past the prompt, `index` on all 3 sections when
    nothing is stored."""
    import mlx.core as mx

    from harness.architectures.qwen2_5_vl.addon import PromptPositions, call_positions

    prompt = np.array([[0, 1, 2, 2, 2, 3], [0, 1, 2, 2, 3, 4], [0, 1, 2, 3, 2, 4]])
    stored = PromptPositions(mx.array(prompt)[:, None], mx.array([[-1]]))
    assert np.array_equal(np.array(call_positions(stored, 2, 1, 3))[:, 0], prompt[:, 2:5])
    tail = np.array(call_positions(stored, 5, 1, 3))[:, 0]
    assert np.array_equal(tail, [[3, 5, 6], [4, 5, 6], [4, 5, 6]])
    text = np.array(call_positions(None, 7, 1, 2))[:, 0]
    assert np.array_equal(text, [[7, 8]] * 3)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"num_heads": 3}, "num_heads"),
        ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads"),
        ({"mrope_section": (2, 2, 2)}, "mrope_section"),
        ({"vision_heads": 3}, "vision_heads"),
        ({"vision_hidden_size": 24, "vision_heads": 4}, "vision_heads"),
        ({"fullatt_block_indexes": (2,)}, "fullatt_block_indexes"),
        ({"patch_size": 3}, "patch_size"),
        ({"window_size": 100}, "window_size"),
        ({"min_pixels": 5000, "max_pixels": 4000}, "max_pixels"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"dtype": "float16"}, "dtype"),
        ({"quantize_bits": 3}, "quantize_bits"),
        ({"seed": -1}, "seed"),
        ({"preset": "7b"}, "preset"),
        ({"colour": "red"}, "colour"),
        ({"hidden_size": 100_000}, "hidden_size"),
        ({"max_pixels": 1 << 30}, "max_pixels"),
    ],
)
def test_invalid_options_are_refused_naming_the_option(options, field):
    arch_suite.assert_option_refused(ARCH, options, field)
