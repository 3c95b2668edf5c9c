"""Idefics3: `mlx_lm.load` rejects the checkpoint, the add-on's `load_text_model` returns
what `mlx_lm.load` returns for the same decoder stored as a plain Llama checkpoint, the
reference add-on is bit-exact with native mlx-vlm on every shipped case (every stage, max
abs diff 0), and every mutant add-on in tests/idefics3_mutants.py FAILS at the stage where
its mistake enters. Everything runs through the built-in registries and paths
(`synth: idefics3`, `addon: idefics3`, mlx-vlm vs unified)."""

from __future__ import annotations

import json
import shutil

import arch_suite
import pytest
from arch_suite import PROFILES, check, verdict

from harness.records import Status
from harness.synth import ensure_checkpoint

ARCH = "idefics3"

# (case, mutant class in tests/idefics3_mutants.py, first diverging stage, first failing
# stage under the image profile, whose per-layer checks do not gate)
MUTANTS = [
    ("idefics3_one_image", "ShuffleSkipped", "embeddings", "embeddings"),
    ("idefics3_single_tile", "ShuffleByTwoRepeated", "embeddings", "embeddings"),
    ("idefics3_one_image", "Bf16Pixels", "embeddings", "embeddings"),
    ("idefics3_two_images", "GlobalImageFirst", "embeddings", "embeddings"),
    ("idefics3_text", "DefaultRopeTheta", "layer.0", "logits"),
]
# Mistakes that only show on some configs: the same add-on passes here.
CONTROLS = [
    # Scale factor 2: one factor-2 shuffle is the shuffle.
    ("idefics3_one_image", "ShuffleByTwoRepeated"),
    # No grid: each image is its global tile alone.
    ("idefics3_single_tile", "GlobalImageFirst"),
]
# Float32 features handed to mlx-lm: within the image profile's tolerance, caught by exact.
FLOAT32_FEATURES = "idefics3_one_image--Float32Features"


def _case(name: str):
    return arch_suite.case(ARCH, name)


@pytest.fixture(scope="module")
def idefics3_run():
    """Every shipped Idefics3 case, every mutant and every control, in one run."""
    mutants = [*MUTANTS, ("idefics3_one_image", "Float32Features")]
    return arch_suite.arch_run(ARCH, mutants, CONTROLS)


SHIPPED = arch_suite.shipped_ids(ARCH)


# --- the text model: mlx_lm.load cannot, load_text_model does ----------------------------


def test_mlx_lm_load_rejects_the_checkpoint():
    """Why the add-on needs the `load_text_model` hook at all."""
    import mlx_lm
    from mlx_lm.models import llama
    from mlx_lm.utils import _get_classes

    model_dir = ensure_checkpoint("idefics3", _case("idefics3_text").model.options)
    with pytest.raises(ValueError, match="Model type idefics3 not supported"):
        mlx_lm.load(str(model_dir))
    # ... although mlx-lm has the text model.
    text_config = json.loads((model_dir / "config.json").read_text())["text_config"]
    assert _get_classes(text_config) == (llama.Model, llama.ModelArgs)


@pytest.mark.parametrize("case_name", ["idefics3_text", "idefics3_4bit"])
def test_load_text_model_returns_what_mlx_lm_load_returns(tmp_path, case_name):
    """The same decoder stored as a plain Llama checkpoint (its text_config and weights
    under mlx-lm's names) loads through `mlx_lm.load` to the same classes and arrays."""
    import mlx.core as mx
    import mlx_lm
    from mlx.utils import tree_flatten
    from mlx_lm.models import llama

    from harness.architectures.idefics3.addon import AddOn, native_text_args, text_weights

    model_dir = ensure_checkpoint("idefics3", _case(case_name).model.options)
    config = json.loads((model_dir / "config.json").read_text())
    plain = native_text_args(config["text_config"])
    if "quantization" in config:
        plain["quantization"] = config["quantization"]
    (tmp_path / "config.json").write_text(json.dumps(plain))
    stored = {}
    for shard in model_dir.glob("*.safetensors"):
        stored |= mx.load(str(shard))
    mx.save_safetensors(str(tmp_path / "model.safetensors"), text_weights(stored))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy(model_dir / name, tmp_path / name)
    (tmp_path / "chat_template.jinja").write_text((model_dir / "chat_template.jinja").read_text())

    want_model, want_tokenizer = mlx_lm.load(str(tmp_path))
    model, tokenizer = AddOn(model_dir).load_text_model(model_dir)
    assert type(model) is llama.Model is type(want_model)
    assert "sanitize" not in vars(model)  # the loader's instance hook is gone
    assert type(tokenizer) is type(want_tokenizer)
    assert tokenizer.eos_token_ids == want_tokenizer.eos_token_ids
    got, want = dict(tree_flatten(model.parameters())), dict(tree_flatten(want_model.parameters()))
    assert got.keys() == want.keys()
    assert all(mx.array_equal(got[k], want[k]).item() for k in want)
    assert [type(m).__name__ for _, m in model.named_modules()] == [
        type(m).__name__ for _, m in want_model.named_modules()
    ]
    assert model.args.rope_theta == config["text_config"]["rope_theta"]
    assert not model.args.tie_word_embeddings


def test_text_args_follow_what_native_runs():
    """Where mlx-lm would read a field mlx-vlm's decoder ignores or defaults differently,
    the add-on builds the decoder native runs (a published config may carry any of them)."""
    from harness.architectures.idefics3.addon import native_text_args

    text = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "num_hidden_layers": 2,
        "rms_norm_eps": 1e-5,
        "vocab_size": 512,
        "head_dim": 32,
        "tie_word_embeddings": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0},
        "sliding_window": 16,
        "eos_token_id": 1,
    }
    args = native_text_args(text)
    assert args["rope_theta"] == 1_000_000.0  # mlx-vlm's default; mlx-lm's is 10000
    assert args["head_dim"] == 16 and args["rope_scaling"] is None
    assert args["tie_word_embeddings"] is False and args["sliding_window"] is None
    assert "eos_token_id" not in args  # generation_config's ids stay at the top level


# --- the cases --------------------------------------------------------------------------


def test_shipped_cases_exist():
    assert {
        "idefics3_text",
        "idefics3_one_image",
        "idefics3_two_images",
        "idefics3_split_prefill",
        "idefics3_4bit",
        "idefics3_fp32",
    } <= set(SHIPPED)


@pytest.mark.parametrize("case_id", SHIPPED)
def test_case_is_bit_exact(idefics3_run, case_id):
    arch_suite.assert_bit_exact(verdict(idefics3_run, case_id))


def test_split_prefill_splits_the_image_span(idefics3_run):
    v = verdict(idefics3_run, "idefics3_split_prefill")
    # The image span (4 tiles and the global image) sits at prompt positions 4..37; the
    # first tile's image tokens at 6..9.
    arch_suite.assert_prefill_splits(v, 4, 37, at_least=3)
    arch_suite.assert_prefill_splits(v, 6, 9)


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize(("case_name", "mutant", "stage", "image_failure"), MUTANTS)
def test_mutant_fails_at_its_stage(idefics3_run, case_name, mutant, stage, image_failure, profile):
    v = verdict(idefics3_run, f"{case_name}--{mutant}--{profile}")
    arch_suite.assert_fails_at(v, stage, stage if profile == "exact" else image_failure)


def test_default_rope_theta_moves_the_first_token(idefics3_run):
    # The text model's own mistake: no image involved, top-1 changes on a text prompt.
    v = verdict(idefics3_run, "idefics3_text--DefaultRopeTheta--image")
    failed = {c.metric for c in v.checks if c.stage == "logits" and not c.passed}
    assert {"kl_ref_test", "top5_ids_order_mismatch"} <= failed


def test_float32_features_fail_exact_and_sit_within_the_image_profile(idefics3_run):
    """Image rows handed over unrounded in float32 (and a float32 decoder): under half a
    bf16 ulp at the embeddings, KL ~1e-4 at the first token: the image profile accepts
    it as noise (within the embeddings' noise envelope), exact does not."""
    exact = verdict(idefics3_run, f"{FLOAT32_FEATURES}--exact")
    assert exact.status is Status.FAIL
    assert exact.first_divergence == exact.first_failure == "embeddings"
    image = verdict(idefics3_run, f"{FLOAT32_FEATURES}--image")
    assert image.status is Status.PASS, image.first_failure_detail
    assert 0 < check(image, "embeddings", "max_ulp_diff").value <= 0.5
    assert 0 < check(image, "logits", "kl_ref_test").value < 1e-3


@pytest.mark.parametrize(("case_name", "mutant"), CONTROLS)
def test_mistake_invisible_on_this_config(idefics3_run, case_name, mutant):
    arch_suite.assert_control_passes(verdict(idefics3_run, f"{case_name}--{mutant}"))


# --- the synthesizer --------------------------------------------------------------------


def test_same_spec_same_bytes(tmp_path):
    arch_suite.assert_same_spec_same_bytes(ARCH, tmp_path, quantize_bits=4, split_factor=3)


def test_config_writes_every_value_whose_default_differs():
    from mlx_lm.models import llama
    from mlx_vlm.models import idefics3 as vlm

    model_dir = ensure_checkpoint("idefics3", _case("idefics3_one_image").model.options)
    config = json.loads((model_dir / "config.json").read_text())
    text = config["text_config"]
    # The libraries' defaults differ: pin why each is written.
    lm_fields = llama.ModelArgs.__dataclass_fields__
    vlm_fields = vlm.TextConfig.__dataclass_fields__
    assert lm_fields["rope_theta"].default == 10000
    assert vlm_fields["rope_theta"].default == 1_000_000.0
    assert text["rope_theta"] not in (10000, 1_000_000.0)
    assert lm_fields["tie_word_embeddings"].default is True
    assert text["tie_word_embeddings"] is False is config["tie_word_embeddings"]
    assert text["head_dim"] == text["hidden_size"] // text["num_attention_heads"]
    assert text["model_type"] == "llama" and text["rope_scaling"] is None
    assert vlm.ModelConfig.__dataclass_fields__["image_token_id"].default == 49153
    assert isinstance(config["image_token_id"], int) and config["scale_factor"] == 2
    keys = json.loads((model_dir / "model.safetensors.index.json").read_text())["weight_map"]
    assert "lm_head.weight" in keys and "model.text_model.embed_tokens.weight" in keys
    pre = json.loads((model_dir / "preprocessor_config.json").read_text())
    assert pre["image_processor_type"] == "Idefics3ImageProcessor"
    assert pre["size"] == {"longest_edge": 84} and pre["max_image_size"] == {"longest_edge": 28}
    assert json.loads((model_dir / "processor_config.json").read_text())["image_seq_len"] == 4
    vocab = json.loads((model_dir / "tokenizer.json").read_text())["added_tokens"]
    names = {t["content"] for t in vocab}
    assert {"<fake_token_around_image>", "<image>", "<global-img>", "<row_4_col_4>"} <= names


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"num_heads": 4, "num_kv_heads": 3}, "num_kv_heads"),
        ({"hidden_size": 60, "num_heads": 4, "num_kv_heads": 2}, "num_kv_heads"),
        ({"patch_size": 5}, "patch_size"),
        ({"vision_hidden_size": 4, "vision_heads": 2}, "patch_size"),
        ({"vision_heads": 3}, "vision_heads"),
        ({"scale_factor": 3}, "scale_factor"),
        ({"split_factor": 5}, "split_factor"),
        ({"vocab_size": 100}, "vocab_size"),
        ({"rope_theta": 0}, "rope_theta"),
        ({"dtype": "float16"}, "dtype"),
        ({"quantize_bits": 3}, "quantize_bits"),
        ({"layout": "gguf"}, "layout"),
        ({"seed": -1}, "seed"),
        ({"colour": "red"}, "colour"),
        ({"hidden_size": 100_000}, "hidden_size"),
        ({"image_size": 14_000}, "image_size"),
    ],
)
def test_invalid_options_are_refused_naming_the_option(options, field):
    arch_suite.assert_option_refused(ARCH, options, field)
