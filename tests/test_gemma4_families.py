"""Cases that expose whole bug families of a Gemma 4 add-on, each proved by a mutant
(tests/mutants.py) that FAILS its case at the stage where the mistake enters and PASSES
an older case that is blind to it; and the bundled add-on's prefill schedule for
bidirectional image prompts (native mlx-vlm runs them in one call whatever the step)."""

from __future__ import annotations

import base64
import dataclasses
import json

import mlx.core as mx
import numpy as np
import pytest
from conftest import CASES, verdict_of

from harness.cases import load_case
from harness.policy import ImportPolicy
from harness.records import STAGE_ORDER, Status, stage_rank
from harness.runner import RunOptions, run_cases

# Mask mistakes show first in the captured attention mask when the harness records it,
# else in the output of decoder layer 0 (the first sliding and bidirectional layer).
MASK = "attention_mask" if "attention_mask" in STAGE_ORDER else "layer.0"
BIDIRECTIONAL_W32 = {"bidirectional": "vision", "sliding_window": 32}

# (case, mutant, first diverging stage, an older case the mutant passes)
FAMILIES = [
    ("gemma4_sliding_window", "WindowIgnored", MASK, "gemma4_one_image"),
    ("gemma4_sliding_window_text", "WindowIgnored", MASK, "gemma4_text"),
    ("gemma4_sliding_window", "PositionFromCacheSize", "per_layer_inputs", "gemma4_split_prefill"),
    (
        "gemma4_bidirectional_chunked",
        "LoopScheduleBidirectional",
        MASK,
        "gemma4_bidirectional",
    ),
    ("bidirectional_step1", "OneTokenChunkIsDecode", MASK, "gemma4_bidirectional_chunked"),
    ("gemma4_two_images_tall", "LandscapeOnly", "embeddings", "gemma4_two_images"),
    ("gemma4_4bit_textured", "JpegTransport", "embeddings", "gemma4_4bit"),
    ("gemma4_4bit_textured", "Mirrored", "embeddings", "gemma4_4bit"),
    ("gemma4_bos", "ReencodesWithSpecials", "input_ids", "gemma4_one_image"),
]


def _case(name: str):
    """A shipped case, or one of the test-only variants of the bidirectional case."""
    if name == "bidirectional_step1":
        # Fault (a): every prefill call of mlx-lm's loop is one token long.
        base = load_case(CASES / "gemma4_bidirectional_chunked.yaml")
        return base.model_copy(update={"id": name, "prefill_step_size": 1})
    if name == "bidirectional_window32":
        # Fault (b): a bidirectional image prompt longer than the sliding window.
        base = load_case(CASES / "gemma4_bidirectional_chunked.yaml")
        options = {**base.model.options, **BIDIRECTIONAL_W32}
        model = base.model.model_copy(update={"options": options})
        return base.model_copy(update={"id": name, "model": model})
    return load_case(CASES / f"{name}.yaml")


def _variant(name: str, mutant: str | None):
    case = _case(name)
    if mutant is None:
        return case
    return case.model_copy(update={"id": f"{name}--{mutant}", "addon": f"mutants:{mutant}"})


CORRECT = ["bidirectional_step1", "bidirectional_window32"]


@pytest.fixture(scope="module")
def family_run():
    cases = [_variant(case, mutant) for case, mutant, _, _ in FAMILIES]
    cases += [_variant(blind, mutant) for _, mutant, _, blind in FAMILIES]
    cases += [_variant(name, None) for name in CORRECT]
    unique = list({c.id: c for c in cases}.values())
    return run_cases(unique, options=RunOptions(imports=ImportPolicy(("mutants",))))


def _chunks(v, side: str) -> tuple[int, ...]:
    return tuple(int(n) for n in v.provenance[f"{side}_prefill_chunks"].split(","))


@pytest.mark.parametrize(("case", "mutant", "stage", "blind"), FAMILIES)
def test_mutant_fails_its_case_at_its_stage(family_run, case, mutant, stage, blind):
    v = verdict_of(family_run, f"{case}--{mutant}")
    gating_failures = [c for c in v.checks if c.gating and not c.passed]
    assert v.status is Status.FAIL and gating_failures, v.reason
    assert v.first_divergence == stage, v.reason
    failing = {c.stage for c in v.checks if not c.passed}
    assert all(stage_rank(s) >= stage_rank(stage) for s in failing)


@pytest.mark.parametrize(("case", "mutant", "stage", "blind"), FAMILIES)
def test_older_case_is_blind_to_the_mutant(family_run, case, mutant, stage, blind):
    # Why the new case is needed: the mutant passes a case that existed before it.
    v = verdict_of(family_run, f"{blind}--{mutant}")
    assert v.status is Status.PASS, v.reason


NEW_CASES = [
    "gemma4_sliding_window",
    "gemma4_sliding_window_text",
    "gemma4_bidirectional_chunked",
    "gemma4_two_images_tall",
    "gemma4_4bit_textured",
    "gemma4_bos",
]


@pytest.mark.parametrize("case_id", NEW_CASES)
def test_new_case_passes_bit_exact_with_the_bundled_addon(shipped_run, case_id):
    v = verdict_of(shipped_run, case_id)
    assert v.status is Status.PASS, v.reason
    assert all(c.passed and c.required == 0.0 for c in v.checks)


# The schedules stated in the case descriptions (decoder calls that covered the prompt).
SCHEDULES = {
    "gemma4_sliding_window": (24, 24, 24, 20, 1),
    "gemma4_sliding_window_text": (24, 24, 24, 7, 1),
    # Native turns chunking off for bidirectional image prompts; the add-on follows.
    "gemma4_bidirectional_chunked": (112,),
    "gemma4_bos": (89, 1),
}


@pytest.mark.parametrize(("case_id", "chunks"), SCHEDULES.items())
def test_prefill_schedules_are_as_stated(shipped_run, case_id, chunks):
    v = verdict_of(shipped_run, case_id)
    assert _chunks(v, "reference") == _chunks(v, "candidate") == chunks


@pytest.mark.parametrize("case_id", CORRECT)
def test_bidirectional_prompt_runs_in_one_pass_whatever_the_step(family_run, case_id):
    # Native runs the whole prompt in one call; so does the add-on, even when mlx-lm's loop
    # asks for one-token chunks (a) or the prompt outgrows the sliding window (b).
    v = verdict_of(family_run, case_id)
    assert v.status is Status.PASS, v.reason
    assert all(c.passed and c.required == 0.0 for c in v.checks)
    (length,) = _chunks(v, "reference")
    assert _chunks(v, "candidate") == (length,) and length > 32


def test_split_image_block_is_refused_without_the_whole_prompt():
    """Without the prompt's embeddings (an add-on that sets its own state), the one-pass
    prefill cannot run: a chunk that splits an image block is refused, naming the case
    field to change; a one-token chunk inside the block is refused too."""
    model, addon, input_ids, embeddings = _unified(BIDIRECTIONAL_W32)
    from mlx_lm.models.cache import make_prompt_cache

    decoder = model.language_model.model
    decoder.prompt_state = dataclasses.replace(decoder.prompt_state, embeddings=None)
    blocks = np.array(decoder.prompt_state.vision_blocks[0])
    first = int(np.flatnonzero(blocks >= 0)[0])
    for step in (first + 4, 1):
        cache = make_prompt_cache(model)
        with pytest.raises(ValueError, match="prefill_step_size"):
            for start in range(0, first + 8, step):
                stop = start + step
                decoder(input_ids[None, start:stop], cache, embeddings[None, start:stop])
                mx.eval([c.state for c in cache])


def test_image_mask_over_a_rotating_cache_holding_a_prefix_past_the_window():
    """Fault (b): a bidirectional image chunk whose sliding-window cache already holds a
    prefix longer than the window (the cache hands attention fewer keys than the prompt
    has positions). The rows equal those of the whole prompt run in one call."""
    from mlx_lm.models.cache import make_prompt_cache

    model, addon, input_ids, embeddings = _unified(BIDIRECTIONAL_W32)
    decoder = model.language_model.model
    state = decoder.prompt_state
    length = input_ids.shape[0]
    first = int(np.flatnonzero(np.array(state.vision_blocks[0]) >= 0)[0])
    whole = decoder(input_ids[None], make_prompt_cache(model), embeddings[None])

    prefix = first - 2  # text only, longer than the 32-token window
    assert prefix > 32
    cache = make_prompt_cache(model)
    decoder.prompt_state = None  # the prefix as an engine's prompt cache would hold it
    decoder(input_ids[None, :prefix], cache)
    decoder.prompt_state = state
    parts, start = [], prefix
    while start < length:
        stop = min(start + 16, length)
        parts.append(decoder(input_ids[None, start:stop], cache, embeddings[None, start:stop]))
        start = stop
    rest = mx.concatenate(parts, axis=1)
    assert cache[0].keys.shape[2] < length  # the rotating cache dropped early keys
    diff = mx.abs(rest.astype(mx.float32) - whole[:, prefix:].astype(mx.float32)).max()
    assert diff.item() == 0.0


def _unified(options: dict):
    """The bundled add-on's unified model on a text + image + text prompt."""
    import mlx_lm

    from harness.addons.gemma4 import AddOn
    from harness.paths.loading import load_quietly
    from harness.synth import ensure_checkpoint

    path = ensure_checkpoint("gemma4", {"hidden_size": 64, "logit_scale": 4.0, **options})
    addon = load_quietly(AddOn, path)
    model, tokenizer = load_quietly(mlx_lm.load, str(path))
    addon.patch_text_model(model)
    messages = [
        {
            "role": "user",
            "content": [
                {
                    "type": "text",
                    "text": "Hello, how are you today? Please answer with a "
                    "short and clear description of the picture.",
                },
                {"type": "image"},
                {"type": "text", "text": "Describe this image."},
            ],
        }
    ]
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    prompt = mx.array(tokenizer.encode(text, add_special_tokens=False))
    image = base64.b64encode((CASES / "images" / "red_square_400x300.png").read_bytes())
    input_ids, embeddings = addon.compute_embeddings(model, prompt, [image.decode()], None)
    return model, addon, input_ids, embeddings


def test_bos_tokenizer_gives_native_a_double_bos_on_image_prompts_only():
    """The documented state of gemma4_bos: mlx-vlm 0.7.10 drops add_special_tokens=False
    for Gemma4Processor, so image prompts start <bos><bos> (text prompts <bos>). If an
    mlx-vlm upgrade fixes it, this fails: update the case description."""
    from harness.models import resolve_model
    from harness.paths import SessionOptions
    from harness.paths.native import NativeSession

    image_case = load_case(CASES / "gemma4_bos.yaml")
    text_case = load_case(CASES / "gemma4_sliding_window_text.yaml")
    model_dir = resolve_model(image_case)
    assert resolve_model(text_case) == model_dir
    bos = json.loads((model_dir / "config.json").read_text())["text_config"]["bos_token_id"]
    session = NativeSession(model_dir, SessionOptions())
    try:
        image_ids = session.capture(image_case).arrays["input_ids"]
        text_ids = session.capture(text_case).arrays["input_ids"]
    finally:
        session.close()
    assert list(image_ids[:3] == bos) == [True, True, False]
    assert list(text_ids[:2] == bos) == [True, False]


def test_add_bos_token_option_leaves_default_checkpoints_untouched():
    from harness.synth import cache_key, ensure_checkpoint, synthesizer

    module = synthesizer("gemma4")
    default = module.Spec.model_validate({})
    assert "add_bos_token" not in default.model_dump(mode="json")
    explicit = module.Spec.model_validate({"add_bos_token": False})
    assert cache_key("gemma4", explicit, module) == cache_key("gemma4", default, module)
    with_bos = module.Spec.model_validate({"add_bos_token": True})
    assert cache_key("gemma4", with_bos, module) != cache_key("gemma4", default, module)

    plain = ensure_checkpoint("gemma4", {})
    adds = ensure_checkpoint("gemma4", {"add_bos_token": True})
    assert "add_bos_token" not in json.loads((plain / "tokenizer_config.json").read_text())
    assert json.loads((plain / "tokenizer.json").read_text())["post_processor"] is None
    assert "add_bos_token" not in json.loads((plain / "synth_spec.json").read_text())
    assert json.loads((adds / "tokenizer_config.json").read_text())["add_bos_token"] is True
    assert json.loads((adds / "synth_spec.json").read_text())["add_bos_token"] is True
