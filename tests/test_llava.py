"""LLaVA: the synthesizer builds checkpoints both libraries load identically, the reference
add-on is bit-exact with native mlx-vlm on every shipped case (every stage, max abs diff 0),
and every mutant add-on in tests/llava_mutants.py FAILS at the stage where its mistake
enters (under the exact and the image profile; float32 features, under one bf16 ulp, fail
the exact profile only) and passes on a config where its mistake is invisible.
Everything runs through the built-in registries and paths (`synth: llava`, `addon: llava`,
mlx-vlm vs unified), as `make parity` runs the cases."""

from __future__ import annotations

import dataclasses
import json
import math
import sys

import arch_suite
import numpy as np
import pytest
from arch_suite import PROFILES, verdict

from harness.records import Status
from harness.synth import ensure_checkpoint

ARCH = "llava"

# (case, mutant class in tests/llava_mutants.py, first diverging stage)
MUTANTS = [
    ("llava_one_image", "LastRowDropped", "embeddings"),
    ("llava_one_image", "LastLayerFeatures", "embeddings"),
    ("llava_one_image", "EveryCheckpointFull", "input_ids"),
    ("llava_one_image", "Bfloat16Tower", "embeddings"),
]
# Float32 image rows differ from native's bf16-rounded ones by under one bf16 ulp: the
# exact profile fails them at the embeddings, the image profile (one ulp) cannot.
EXACT_ONLY = [("llava_one_image", "Float32Features", "embeddings")]
# Mistakes that only show on some configs: the same add-on passes here.
CONTROLS = [
    ("llava_full_strategy_last_layer", "LastRowDropped"),  # `full` slices nothing
    ("llava_full_strategy_last_layer", "EveryCheckpointFull"),  # right, by luck
    ("llava_full_strategy_last_layer", "LastLayerFeatures"),  # the config asks for it
    ("llava_fp32", "Float32Features"),  # nothing to cast
    ("llava_fp32", "Bfloat16Tower"),  # the cast is a no-op
]


def _case(name: str):
    return arch_suite.case(ARCH, name)


@pytest.fixture(scope="module")
def llava_run():
    """Every shipped LLaVA case, every mutant and every control, in one run."""
    # The published BOS policy on a text prompt: native one <bos>, unified none.
    bos_text = _case("llava_text").model_copy(
        update={"id": "llava_text--bos", "model": _case("llava_4bit").model}
    )
    return arch_suite.arch_run(ARCH, MUTANTS + EXACT_ONLY, CONTROLS, extra=[bos_text])


def _prompt_length(v) -> int:
    return sum(arch_suite.prefill_chunks(v))


SHIPPED = arch_suite.shipped_ids(ARCH)


# --- the cases --------------------------------------------------------------------------


def test_shipped_cases_exist():
    assert {
        "llava_text",
        "llava_one_image",
        "llava_two_images",
        "llava_split_prefill",
        "llava_4bit",
        "llava_fp32",
        "llava_full_strategy_last_layer",
    } <= set(SHIPPED)


@pytest.mark.parametrize("case_id", SHIPPED)
def test_case_is_bit_exact(llava_run, case_id):
    arch_suite.assert_bit_exact(verdict(llava_run, case_id))


def test_placeholder_expansion_follows_the_strategy(llava_run):
    # The same prompt; "<image>" (1 token) becomes 16 patch tokens under `default`, 17
    # (CLS too) under `full`: the captured prompts differ by exactly that one row.
    default = verdict(llava_run, "llava_one_image")
    full = verdict(llava_run, "llava_full_strategy_last_layer")
    assert _prompt_length(full) - _prompt_length(default) == 1
    (grid,) = default.image_token_errors
    assert grid.size == 16  # one error cell per image token: 4 x 4 patches


def test_split_prefill_splits_the_image_span(llava_run):
    # The 16 image tokens sit at prompt positions 6..21.
    arch_suite.assert_prefill_splits(verdict(llava_run, "llava_split_prefill"), 6, 21)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("case_name", "mutant", "stage"), MUTANTS)
def test_mutant_fails_at_its_stage(llava_run, case_name, mutant, stage, profile):
    # Under the shipped exact profile and under the engine's looser image profile alike.
    arch_suite.assert_fails_at(verdict(llava_run, f"{case_name}--{mutant}--{profile}"), stage)


@pytest.mark.parametrize(("case_name", "mutant", "stage"), EXACT_ONLY)
def test_float32_features_fail_exact_and_hide_within_one_ulp(llava_run, case_name, mutant, stage):
    exact = verdict(llava_run, f"{case_name}--{mutant}--exact")
    assert exact.status is Status.FAIL
    assert exact.first_divergence == exact.first_failure == stage
    # Measured 0.0019: bf16 rounding of the image rows.
    assert 0 < arch_suite.check(exact, stage).value < 0.01
    # The engine's image profile tolerates one ulp at the embeddings: the mistake passes,
    # still reported as the first difference; later drift stays within its noise envelope.
    image = verdict(llava_run, f"{case_name}--{mutant}--image")
    assert image.status is Status.PASS, image.first_failure_detail
    assert image.first_difference == stage
    assert 0 < arch_suite.check(image, stage, "max_ulp_diff").value <= 0.5
    assert "noise envelope" in image.envelope_note


@pytest.mark.parametrize(("case_name", "mutant"), CONTROLS)
def test_mistake_invisible_on_this_config(llava_run, case_name, mutant):
    arch_suite.assert_control_passes(verdict(llava_run, f"{case_name}--{mutant}"))


def test_wrong_feature_rows_touch_only_image_rows(llava_run):
    # Text rows are looked up from the same table: only the image tokens' cells differ,
    # and a one-row shift or a wrong layer moves every one of them.
    for mutant in ("LastRowDropped", "LastLayerFeatures"):
        v = verdict(llava_run, f"llava_one_image--{mutant}--exact")
        (grid,) = v.image_token_errors
        assert (grid > 0).all(), (mutant, grid)


def test_published_bos_policy_on_text_prompts_is_caught_at_input_ids(llava_run):
    arch_suite.assert_bos_caught(verdict(llava_run, "llava_text--bos"), position=0)


# --- the processor workaround -------------------------------------------------------------


def test_mlx_vlm_llava_processor_needs_the_kwarg_routing_fix():
    """Pins why harness/architectures/llava/compat.py exists: transformers 5's image
    processor refuses the `padding` mlx-vlm's LlavaProcessor hands it; the fixed processor
    hands the image processor exactly the call without it (same pixels), the tokenizer
    keeping it. When the image processor takes `padding`, the fix can go."""
    # Importing mlx-vlm's llava module installs its AutoProcessor hook (as mlx_vlm.load
    # and the add-on do); without it AutoProcessor returns transformers' own processor.
    from mlx_vlm.models.llava.processing_llava import LlavaProcessor
    from mlx_vlm.utils import load_processor
    from PIL import Image

    from harness.architectures.llava import compat
    from harness.paths.loading import apply_library_fixes

    # What every session does before loading a LLaVA checkpoint (and names in the report).
    assert apply_library_fixes("llava") == ["llava.fix_llava_processor"]
    model_dir = ensure_checkpoint("llava", _case("llava_one_image").model.options)
    processor = load_processor(model_dir, add_detokenizer=False, trust_remote_code=False)
    assert type(processor) is LlavaProcessor and getattr(LlavaProcessor, compat.FIXED)
    image = Image.new("RGB", (80, 60), (200, 30, 30))
    with pytest.raises(TypeError, match="padding"):
        processor.image_processor([image], padding=True)
    fixed = processor(images=[image], text="<image>", padding=True)
    alone = np.stack(processor.image_processor([image])["pixel_values"])
    assert np.array_equal(np.array(fixed["pixel_values"]), alone)
    assert fixed["input_ids"].shape == (1, 16)


FAKE_PROCESSING = """
class LlavaProcessor:
    def __init__(self, image_processor):
        self.image_processor = image_processor

    def __call__(self, images=None, text=None, **kwargs):
        return self.image_processor(images, **kwargs), kwargs
"""


def test_fix_routes_only_tokenizer_keywords(tmp_path, monkeypatch):
    # On a stand-in processor class: the image processor loses `padding`, nothing else.
    from harness.architectures.llava import compat

    (tmp_path / "fake_llava_processing.py").write_text(FAKE_PROCESSING)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        import fake_llava_processing as fake

        compat.fix_processor_class(fake.LlavaProcessor)
        compat.fix_processor_class(fake.LlavaProcessor)  # idempotent
        seen = []
        processor = fake.LlavaProcessor(lambda images, **kw: seen.append(kw) or "pixels")
        pixels, text_kwargs = processor(images=["x"], text="t", padding=True, size=3)
        assert getattr(fake.LlavaProcessor, compat.FIXED)
        assert pixels == "pixels" and seen == [{"size": 3}]  # padding kept from images
        assert text_kwargs == {"padding": True, "size": 3}  # the tokenizer still gets it
    finally:
        sys.modules.pop("fake_llava_processing", None)


def test_reports_name_the_library_fix(llava_run):
    v = verdict(llava_run, "llava_one_image")
    assert v.provenance["library_fixes"] == "llava.fix_llava_processor"


# --- the synthesizer --------------------------------------------------------------------


def test_same_spec_same_bytes(tmp_path):
    arch_suite.assert_same_spec_same_bytes(
        ARCH, tmp_path, quantize_bits=4, vision_feature_select_strategy="full"
    )


def test_config_writes_every_value_whose_default_differs():
    from mlx_lm.models import llama as lm_llama
    from mlx_lm.models import mistral3 as lm_mistral3
    from mlx_vlm.models import llava as vlm

    # The libraries' defaults differ (or are wrong for this checkpoint): pin why each is
    # written.
    assert lm_llama.ModelArgs.__dataclass_fields__["tie_word_embeddings"].default is True
    assert lm_mistral3.ModelArgs(model_type="llava", text_config={}).text_config == {
        "tie_word_embeddings": False
    }
    assert vlm.TextConfig.__dataclass_fields__["tie_word_embeddings"].default is False
    assert vlm.TextConfig.__dataclass_fields__["rms_norm_eps"].default == 1e-6
    # mlx-lm's llama has no default (required), mlx-vlm's is 1e-6.
    assert lm_llama.ModelArgs.__dataclass_fields__["rms_norm_eps"].default is dataclasses.MISSING
    assert vlm.ModelConfig.__dataclass_fields__["image_token_index"].default == 32000
    assert vlm.ModelConfig.__dataclass_fields__["vocab_size"].default == 32000

    model_dir = ensure_checkpoint("llava", _case("llava_one_image").model.options)
    config = json.loads((model_dir / "config.json").read_text())
    text = config["text_config"]
    assert text["model_type"] == "llama"
    assert config["vision_config"]["model_type"] == "clip_vision_model"
    assert text["tie_word_embeddings"] is False and config["tie_word_embeddings"] is False
    assert text["rms_norm_eps"] == 1e-5
    assert text["head_dim"] == text["hidden_size"] // text["num_attention_heads"]
    assert config["vocab_size"] == text["vocab_size"] == 512
    assert config["image_token_index"] == config["image_token_id"] != 32000
    assert config["vision_feature_layer"] == -2
    assert config["vision_feature_select_strategy"] == "default"
    assert config["projector_hidden_act"] == "gelu"
    tokenizer = json.loads((model_dir / "tokenizer_config.json").read_text())
    assert tokenizer["image_token"] == "<image>"
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "CLIPImageProcessor"
    assert pre["crop_size"] == {"height": 56, "width": 56}
    processor = json.loads((model_dir / "processor_config.json").read_text())
    assert processor["patch_size"] == 14
    assert processor["vision_feature_select_strategy"] == "default"
    assert processor["num_additional_image_tokens"] == 1
    assert (model_dir / "chat_template.jinja").exists()


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"num_heads": 3}, "num_heads"),  # 64 / 3
        ({"hidden_size": 48, "num_heads": 16}, "num_heads"),  # odd head_dim 3
        ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads"),
        ({"patch_size": 15}, "patch_size"),
        ({"vision_hidden_size": 8}, "patch_size"),
        ({"vision_heads": 3}, "vision_heads"),
        ({"vision_feature_layer": 4}, "vision_feature_layer"),
        ({"vision_feature_layer": -5}, "vision_feature_layer"),
        ({"vision_feature_select_strategy": "cls"}, "vision_feature_select_strategy"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"dtype": "float16"}, "dtype"),
        ({"quantize_bits": 3}, "quantize_bits"),
        ({"logit_scale": math.inf}, "logit_scale"),
        ({"rope_theta": 0}, "rope_theta"),
        ({"seed": -1}, "seed"),
        ({"preset": "7b"}, "preset"),
        ({"colour": "red"}, "colour"),
        # Upper bounds: a case file cannot ask for a multi-gigabyte allocation.
        ({"hidden_size": 100_000}, "hidden_size"),
        ({"image_size": 14_000}, "image_size"),
        ({"num_layers": 1000}, "num_layers"),
    ],
)
def test_invalid_options_are_refused_naming_the_option(options, field):
    arch_suite.assert_option_refused(ARCH, options, field)
