"""The randomized sweep's case generator (`harness.sweep`): a seeded draw of valid Gemma 4
synthesizer options, image forms, message layouts, prefill steps and profiles, written as
self-contained case files (no `include:`, images beside them).

Every dimension is drawn by shuffled cycles (each value once per cycle, in a seeded random
order): a sweep of N cases covers every value of every dimension as soon as N reaches the
dimension's size, while the combinations stay random. Checkpoints come from a small pool
(each one is synthesized once, ~1-3 s, and cached), drawn the same way and validated by the
synthesizer's own `Spec`, so no case names options it would refuse."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .sweep_images import FORMS, ImageForm, write_image

# Synthesizer options the sweep varies; None: left out (the preset's default).
MODEL_DIMENSIONS: dict[str, tuple[Any, ...]] = {
    "hidden_size": (48, 64),
    "dtype": ("bfloat16", "float32"),
    "quantize_bits": (None, 4),
    "bidirectional": ("none", "vision"),
    "sliding_window": (8, 16, 32, 64),
    "per_layer_input_size": (0, None),
    "seed": (0, 1, 2, 3),
}
# Fixed for every sweep checkpoint: peaky logits, so that top-k checks mean something (the
# shipped cases' base uses the same).
MODEL_FIXED: dict[str, Any] = {"logit_scale": 4.0}

# Layout -> number of images it places.
LAYOUTS: dict[str, int] = {
    "text_only": 0,
    "text_items": 0,  # several text items in one message, no image
    "image_before": 1,
    "image_after": 1,
    "image_between": 1,
    "two_images": 2,
    "multi_text": 1,  # several text items in one message, with an image
    "history": 1,  # image in the first user turn, then an assistant turn
    "history_late": 1,  # user + assistant turn first, image in the last user turn
    "system": 1,
    "image_in_system": 1,
    "image_in_assistant": 1,
}
TEXTS = ("short", "short", "unicode", "long")
PREFILL_STEPS: tuple[int | None, ...] = (None, 1, 7, 16, 64)
PROFILES = ("exact", "image")

SHORT = (
    "Describe this image in one sentence.",
    "What colors do you see?",
    "Count the shapes.",
    "Is there any text in the picture?",
    "Compare what you see with a sunset.",
)
UNICODE = (
    "Décris l'image — en français, s'il te plaît. 日本語で説明してください。 "
    "Ελληνικά, русский, العربية, עברית, हिन्दी; emoji 🙂🎨🌈 and a zero-width\u200bjoiner.",
    "¿Qué ves? Ça va? Straße, naïve café, 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 math 𝑥² + 𝑦² = 𝑟², "
    "combining a\u0301 e\u0308, CJK 中文字符, tab\tand nbsp\u00a0space.",
)
# fmt: off
WORDS = (
    "the", "model", "looks", "at", "colors", "shapes", "light", "shadow", "edges",
    "texture", "pattern", "a", "an", "of", "in", "on", "with", "under", "over", "between",
    "bright", "dark", "red", "green", "blue", "yellow", "gradient", "stripe", "circle",
    "square", "line", "corner", "background", "foreground", "picture", "image", "detail",
    "small", "large", "wide", "tall", "smooth", "rough", "wave", "noise", "flat", "object",
    "scene", "describe", "explain", "compare", "count", "answer",
)
# fmt: on


@dataclass(frozen=True)
class GeneratedCase:
    case_id: str
    path: Path
    knobs: dict[str, Any] = field(hash=False)


class _Cycler:
    """Values of one dimension in shuffled cycles: balanced marginals, random combinations."""

    def __init__(self, values: Sequence[Any], rng: random.Random) -> None:
        self.values, self.rng, self.queue = list(values), rng, []

    def draw(self) -> Any:
        if not self.queue:
            self.queue = self.values[:]
            self.rng.shuffle(self.queue)
        return self.queue.pop()


def _valid(options: dict[str, Any]) -> bool:
    from pydantic import ValidationError

    from .architectures.gemma4.spec import Spec

    try:
        Spec.model_validate(options)
    except ValidationError:
        return False
    return True


def model_pool(count: int, rng: random.Random) -> list[dict[str, Any]]:
    """`count` distinct valid checkpoint option sets (fewer if the ranges hold fewer)."""
    cyclers = {name: _Cycler(values, rng) for name, values in MODEL_DIMENSIONS.items()}
    pool: list[dict[str, Any]] = []
    for _ in range(count * 20):
        if len(pool) == count:
            break
        drawn = {name: cycler.draw() for name, cycler in cyclers.items()}
        options = {k: v for k, v in drawn.items() if v is not None or k == "quantize_bits"}
        options = {**options, **MODEL_FIXED}
        if options not in pool and _valid(options):
            pool.append(options)
    return pool


def default_model_count(n: int) -> int:
    """Few checkpoints: one per ~12 cases, between 1 and 5."""
    return max(1, min(5, math.ceil(n / 12)))


def long_text(rng: random.Random, words: int) -> str:
    sentences, left = [], words
    while left > 0:
        length = min(left, rng.randint(6, 16))
        sentence = " ".join(rng.choice(WORDS) for _ in range(length))
        sentences.append(sentence[:1].upper() + sentence[1:] + ".")
        left -= length
    return " ".join(sentences)


def _text(kind: str, rng: random.Random) -> str:
    if kind == "unicode":
        return rng.choice(UNICODE)
    if kind == "long":
        return long_text(rng, rng.randint(200, 320))
    return rng.choice(SHORT)


def _messages(layout: str, text: str, images: list[str], rng: random.Random) -> list[dict]:
    def img(index: int = 0) -> dict:
        return {"type": "image", "image": images[index]}

    def txt(value: str) -> dict:
        return {"type": "text", "text": value}

    short = rng.choice(SHORT)
    answer = "It shows a few shapes on a colored background."
    if layout == "text_only":
        return [{"role": "user", "content": text}]
    if layout == "text_items":
        return [{"role": "user", "content": [txt(text), txt(short)]}]
    if layout == "image_before":
        return [{"role": "user", "content": [img(), txt(text)]}]
    if layout == "image_after":
        return [{"role": "user", "content": [txt(text), img()]}]
    if layout == "image_between":
        return [{"role": "user", "content": [txt(text), img(), txt(short)]}]
    if layout == "two_images":
        return [{"role": "user", "content": [img(0), txt(text), img(1), txt(short)]}]
    if layout == "multi_text":
        return [{"role": "user", "content": [img(), txt(text), txt(short)]}]
    if layout == "history":
        return [
            {"role": "user", "content": [img(), txt(short)]},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": text},
        ]
    if layout == "history_late":
        return [
            {"role": "user", "content": short},
            {"role": "assistant", "content": answer},
            {"role": "user", "content": [txt(text), img()]},
        ]
    if layout == "system":
        return [
            {"role": "system", "content": "You are a careful assistant that describes images."},
            {"role": "user", "content": [img(), txt(text)]},
        ]
    if layout == "image_in_system":
        return [
            {"role": "system", "content": [img(), txt("Use this reference image.")]},
            {"role": "user", "content": text},
        ]
    if layout == "image_in_assistant":
        return [
            {"role": "user", "content": short},
            {"role": "assistant", "content": [img(), txt(answer)]},
            {"role": "user", "content": text},
        ]
    raise ValueError(f"unknown layout {layout!r}")


class _NoAliases(yaml.SafeDumper):
    """Case files may not hold YAML aliases: never emit one for a repeated object."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def case_document(case_id: str, knobs: dict[str, Any], messages: list[dict]) -> dict:
    document: dict[str, Any] = {
        "id": case_id,
        "description": "sweep: " + ", ".join(f"{k}={knobs[k]}" for k in _DESCRIBED),
        "model": {"synth": "gemma4", "options": dict(knobs["model_options"])},
        "paths": {"reference": "mlx-vlm", "candidate": "unified"},
        "addon": "gemma4",
        "chat_template_kwargs": {"enable_thinking": False},
        "profile": knobs["profile"],
        "messages": messages,
        "markers": ["sweep", f"layout-{knobs['layout']}", f"text-{knobs['text']}"]
        + [f"image-{label.split('/')[0]}" for label in knobs["images"]],
    }
    if knobs["prefill_step_size"] is not None:
        document["prefill_step_size"] = knobs["prefill_step_size"]
    return document


_DESCRIBED = ("checkpoint", "layout", "text", "images", "prefill_step_size", "profile")


def generate(n: int, seed: int, cases_dir: Path, models: int | None = None) -> list[GeneratedCase]:
    """Write `n` case files (and their images under `cases_dir/images/`); deterministic in
    `seed` (and `models`, the checkpoint pool size)."""
    rng = random.Random(seed)
    pool = model_pool(models or default_model_count(n), random.Random(rng.getrandbits(64)))
    cyclers = {
        "checkpoint": _Cycler(range(len(pool)), rng),
        "layout": _Cycler(LAYOUTS, rng),
        "text": _Cycler(TEXTS, rng),
        "form": _Cycler(FORMS, rng),
        "textured": _Cycler((True, False), rng),
        "prefill_step_size": _Cycler(PREFILL_STEPS, rng),
        "profile": _Cycler(PROFILES, rng),
    }
    cases_dir.mkdir(parents=True, exist_ok=True)
    out = []
    for index in range(n):
        case_id = f"sweep_s{seed}_{index:03d}"
        drawn = {name: cycler.draw() for name, cycler in cyclers.items() if name != "form"}
        forms = [
            ImageForm(
                cyclers["form"].draw(), cyclers["textured"].draw() if i else drawn["textured"]
            )
            for i in range(LAYOUTS[drawn["layout"]])
        ]
        names = [f"images/{write_image(f, cases_dir / 'images').name}" for f in forms]
        knobs = {
            "case_id": case_id,
            "checkpoint": f"m{drawn['checkpoint']}",
            "model_options": pool[drawn["checkpoint"]],
            "layout": drawn["layout"],
            "text": drawn["text"],
            "images": [f.label for f in forms],
            "prefill_step_size": drawn["prefill_step_size"],
            "profile": drawn["profile"],
        }
        messages = _messages(drawn["layout"], _text(drawn["text"], rng), names, rng)
        path = cases_dir / f"{case_id}.yaml"
        document = case_document(case_id, knobs, messages)
        text = yaml.dump(
            document, Dumper=_NoAliases, sort_keys=False, allow_unicode=True, width=100
        )
        path.write_text(text, encoding="utf-8")
        out.append(GeneratedCase(case_id, path, knobs))
    return out
