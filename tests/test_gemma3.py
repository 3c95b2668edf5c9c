"""Gemma 3: the synthesizer builds checkpoints both libraries load identically, the reference
add-on is bit-exact with native mlx-vlm on every shipped case (every stage, max abs diff 0),
and every mutant add-on in tests/gemma3_mutants.py FAILS at the stage where its mistake
enters.
Everything runs through the built-in registries and paths (`synth: gemma3`,
`addon: gemma3`, mlx-vlm vs unified), as `make parity` runs the cases."""

from __future__ import annotations

import json
import math

import arch_suite
import pytest
from arch_suite import PROFILES, verdict

from harness.synth import ensure_checkpoint

ARCH = "gemma3"

# (case, mutant class in tests/gemma3_mutants.py, first diverging stage)
MUTANTS = [
    ("gemma3_one_image", "FeaturesNotDivided", "embeddings"),
    ("gemma3_embed_scale_not_pow2", "FeaturesNotDivided", "embeddings"),
    ("gemma3_one_image", "ScaleAppliedTwice", "embeddings"),
    ("gemma3_one_image", "Float32Projector", "embeddings"),
    ("gemma3_published_config", "DividesByTextHidden", "embeddings"),
    ("gemma3_one_image", "BidirectionalImages", "attention_mask"),
    ("gemma3_split_prefill", "BidirectionalImages", "attention_mask"),
]
# Mistakes that only show on some configs: the same add-on passes here.
CONTROLS = [
    # A top-level hidden_size equal to the text model's: both divisors are sqrt(64).
    ("gemma3_one_image", "DividesByTextHidden"),
    # A text prompt never calls the add-on's image code, nor has image blocks.
    ("gemma3_text", "BidirectionalImages"),
]


def _case(name: str):
    return arch_suite.case(ARCH, name)


@pytest.fixture(scope="module")
def gemma3_run():
    """Every shipped Gemma 3 case, every mutant and every control, in one run."""
    # Native's double <bos> on a text prompt: the unified text path feeds one.
    bos_text = _case("gemma3_text").model_copy(
        update={"id": "gemma3_text--bos", "model": _case("gemma3_bos").model}
    )
    return arch_suite.arch_run(ARCH, MUTANTS, CONTROLS, extra=[bos_text])


SHIPPED = arch_suite.shipped_ids(ARCH)


# --- the cases --------------------------------------------------------------------------


def test_shipped_cases_exist():
    assert {
        "gemma3_text",
        "gemma3_one_image",
        "gemma3_two_images",
        "gemma3_split_prefill",
        "gemma3_4bit",
        "gemma3_embed_scale_not_pow2",
    } <= set(SHIPPED)


@pytest.mark.parametrize("case_id", SHIPPED)
def test_case_is_bit_exact(gemma3_run, case_id):
    arch_suite.assert_bit_exact(verdict(gemma3_run, case_id))


def test_split_prefill_splits_the_image_span(gemma3_run):
    # The 16 soft tokens of the image sit at prompt positions 7..22.
    arch_suite.assert_prefill_splits(verdict(gemma3_run, "gemma3_split_prefill"), 7, 22)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("case_name", "mutant", "stage"), MUTANTS)
def test_mutant_fails_at_its_stage(gemma3_run, case_name, mutant, stage, profile):
    # Under the shipped exact profile and under the engine's looser image profile alike.
    arch_suite.assert_fails_at(verdict(gemma3_run, f"{case_name}--{mutant}--{profile}"), stage)


@pytest.mark.parametrize(("case_name", "mutant"), CONTROLS)
def test_mistake_invisible_on_this_config(gemma3_run, case_name, mutant):
    v = verdict(gemma3_run, f"{case_name}--{mutant}")
    arch_suite.assert_control_passes(v, no_difference=False)


def test_native_double_bos_on_text_prompts_is_caught_at_input_ids(gemma3_run):
    arch_suite.assert_bos_caught(verdict(gemma3_run, "gemma3_text--bos"), position=1)


def test_float32_projector_moves_layer_zero_by_a_few_hundredths(gemma3_run):
    # mlx-engine's Gemma 3 bug: small at the embeddings, ~0.06-0.08 after layer 0.
    v = verdict(gemma3_run, "gemma3_one_image--Float32Projector--exact")
    (emb,) = [c for c in v.checks if c.stage == "embeddings" and c.metric.startswith("max_abs")]
    assert 0 < emb.value < 0.05
    assert 0.01 < arch_suite.check(v, "layer.0").value < 0.5


def test_case_descriptions_state_the_image_attention_policy():
    text = _case("gemma3_one_image").description
    assert "causal" in text and "never" in text and "Transformers" in text


# --- the synthesizer --------------------------------------------------------------------


def test_same_spec_same_bytes(tmp_path):
    arch_suite.assert_same_spec_same_bytes(ARCH, tmp_path, quantize_bits=4, hidden_size=48)


def test_config_writes_every_value_whose_default_differs():
    from mlx_lm.models import gemma3_text as lm_text
    from mlx_vlm.models import gemma3 as vlm

    model_dir = ensure_checkpoint("gemma3", _case("gemma3_one_image").model.options)
    config = json.loads((model_dir / "config.json").read_text())
    text = config["text_config"]
    # The libraries' defaults differ (or are wrong for a tiny model): pin why each is written.
    assert lm_text.ModelArgs.__dataclass_fields__["sliding_window"].default == 512
    assert vlm.TextConfig.__dataclass_fields__["sliding_window"].default == 1024
    assert vlm.ModelConfig.__dataclass_fields__["hidden_size"].default == 2048
    assert vlm.TextConfig.__dataclass_fields__["mm_tokens_per_image"].default == 256
    assert text["rope_theta"] == text["rope_global_base_freq"]
    assert text["sliding_window"] == 512
    assert config["vocab_size"] == text["vocab_size"] == 512
    assert config["hidden_size"] == text["hidden_size"] == 64
    assert config["mm_tokens_per_image"] == text["mm_tokens_per_image"] == 16
    for key in ("image_token_index", "boi_token_index", "eoi_token_index", "pad_token_id"):
        assert isinstance(config[key], int)
    tokenizer = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer["boi_token"] == "<start_of_image>"
    assert tokenizer["image_token"] == "<image_soft_token>"
    assert tokenizer["eoi_token"] == "<end_of_image>"
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "Gemma3ImageProcessor"
    assert json.loads((model_dir / "processor_config.json").read_text())["image_seq_length"] == 16
    assert (model_dir / "chat_template.jinja").exists()


def test_published_layout_leaves_out_the_top_level_hidden_size():
    model_dir = ensure_checkpoint("gemma3", {"write_top_level_hidden_size": False})
    assert "hidden_size" not in json.loads((model_dir / "config.json").read_text())


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"head_dim": 15}, "head_dim"),
        ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads"),
        ({"num_layers": 2, "sliding_window_pattern": 3}, "sliding_window_pattern"),
        ({"mm_tokens_per_image": 15}, "mm_tokens_per_image"),
        ({"mm_tokens_per_image": 9}, "mm_tokens_per_image"),
        ({"patch_size": 15}, "patch_size"),
        ({"vision_hidden_size": 8}, "patch_size"),
        ({"vision_heads": 3}, "vision_heads"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"vocab_size": 300_000}, "vocab_size"),
        ({"query_pre_attn_scalar": 1.5}, "query_pre_attn_scalar"),
        ({"dtype": "float16"}, "dtype"),
        ({"quantize_bits": 3}, "quantize_bits"),
        ({"logit_scale": math.inf}, "logit_scale"),
        ({"rope_scaling_factor": 0.5}, "rope_scaling_factor"),
        ({"seed": -1}, "seed"),
        ({"preset": "e2b"}, "preset"),
        ({"colour": "red"}, "colour"),
        # Upper bounds: a case file cannot ask for a multi-gigabyte allocation.
        ({"hidden_size": 100_000}, "hidden_size"),
        ({"image_size": 14_000}, "image_size"),
        ({"num_layers": 1000}, "num_layers"),
    ],
)
def test_invalid_options_are_refused_naming_the_option(options, field):
    arch_suite.assert_option_refused(ARCH, options, field)
