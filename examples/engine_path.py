"""Gate an engine's own `generate` with mlx-parity: a path is a class constructed as
`Session(model_dir, options)` with `capture(case) -> Capture` and `close()`.

Run it against native mlx-vlm (the module must be importable, and allowed: a case file
alone never makes the gate import code):

    PYTHONPATH=examples mlx-parity run examples/engine_case.yaml --allow-import engine_path

`ToyEngine` stands in for an engine (its own prompt cache, mlx-lm's stream_generate);
replace it with yours. The gate needs the engine's model object (probes hook its decoder
layers), the prompt ids it feeds, and a way to pass logits processors to its sampler.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
from mlx_lm import load, stream_generate
from mlx_lm.models.cache import make_prompt_cache

from harness.capture import capture_first_token
from harness.paths import SessionOptions
from harness.paths.loading import model_type_of


class ToyEngine:
    def __init__(self, model_dir: Path) -> None:
        self.model, self.tokenizer = load(str(model_dir))

    def prompt_ids(self, messages: list[dict[str, Any]], **template: Any) -> mx.array:
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **template
        )
        return mx.array(self.tokenizer.encode(text, add_special_tokens=False))

    def generate(self, ids: mx.array, max_tokens: int, logits_processors: list[Any], step: int):
        cache = make_prompt_cache(self.model)  # an engine would look its prefix up here
        return stream_generate(
            self.model, self.tokenizer, ids, max_tokens=max_tokens, prefill_step_size=step,
            logits_processors=logits_processors, prompt_cache=cache,
        )  # fmt: skip


class EngineSession:
    name = "toy-engine"
    takes_addon = False  # the engine brings its own vision code, if any

    def __init__(self, model_dir: Path, options: SessionOptions) -> None:
        self.engine = ToyEngine(model_dir)
        self.model = self.engine.model  # what the probes hook
        self.model_type = model_type_of(model_dir)
        self.layer_probes = options.layer_probes
        self.provenance = {"path": self.name, "engine": "ToyEngine (examples/engine_path.py)"}

    def capture(self, case):
        ids = self.engine.prompt_ids(case.template_messages(), **case.chat_template_kwargs)
        return capture_first_token(
            self, case.id, ids,
            lambda processors: self.engine.generate(
                ids, case.decode_steps + 1, processors, case.prefill_step_size
            ),
            decode_steps=case.decode_steps, tokenizer=self.engine.tokenizer,
        )  # fmt: skip

    def close(self) -> None:
        del self.engine, self.model
