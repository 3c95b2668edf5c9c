"""The transformers (PyTorch) path, end to end: an HF-layout copy of a synthesized Gemma 4
checkpoint loaded by transformers, captured stage by stage and compared three ways with
mlx-vlm and the unified path. The deviations the stack notes name are found in the
captured arrays: declared, they are reported (`known_deviation`) and the case passes;
undeclared, the case fails where they enter; declared where the arrays agree, it fails.

One checkpoint (float32, `bidirectional: vision`, no KV sharing, pad token <unk> = id 3:
both deviations at once), one in-process run of five cases. Skipped without torch (the
`torch` extra; `make test` installs it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import CASES  # noqa: E402

from harness.cases import KnownDeviation, load_case  # noqa: E402
from harness.paths import PathError  # noqa: E402
from harness.records import Status  # noqa: E402
from harness.runner import RunOptions, run_cases  # noqa: E402
from harness.three_way import DEVIATION_CHECK, TABLE_CHECK  # noqa: E402

OPTIONS = {
    "hidden_size": 64,
    "logit_scale": 4.0,
    "seed": 0,
    "dtype": "float32",
    "bidirectional": "vision",
    "kv_shared_layers": 0,
    "pad_token": "<unk>",
}
MASK = KnownDeviation(stage="attention_mask", reason="full-attention layers causal")
PAD = KnownDeviation(stage="per_layer_inputs", reason="pad id of image tokens")


def _case(name: str, id_: str, deviations: list[KnownDeviation]):
    case = load_case(CASES / "three_way" / f"{name}.yaml")
    model = case.model.model_copy(update={"options": OPTIONS})
    return case.model_copy(
        update={"id": id_, "model": model, "known_deviations": deviations, "decode_steps": 1}
    )


CASES_RUN = [
    ("three_way_gemma4_text", "text_agrees", []),
    ("three_way_gemma4_image", "image_declared", [PAD, MASK]),
    ("three_way_gemma4_image", "image_undeclared", []),
    ("three_way_gemma4_image", "image_mask_only", [MASK]),
    ("three_way_gemma4_text", "text_stale", [MASK]),
]


@pytest.fixture(scope="module")
def three_way_run():
    cases = [_case(*spec) for spec in CASES_RUN]
    return run_cases(cases, options=RunOptions(isolation="none"))


def _verdict(run, case_id):
    (v,) = [v for v in run.verdicts if v.case_id == case_id]
    return v


def _pair_value(v, stage, pair):
    (row,) = [c for c in v.checks if c.check == TABLE_CHECK and c.stage == stage and
              c.metric.startswith(pair + ":")]  # fmt: skip
    return row.value


def test_text_prompt_all_three_paths_agree(three_way_run):
    v = _verdict(three_way_run, "text_agrees")
    assert v.status is Status.PASS, v.first_failure_detail or v.reason
    for pair in ("mlx-vlm~transformers", "unified~transformers"):
        assert _pair_value(v, "input_ids", pair) == 0
        assert _pair_value(v, "attention_mask", pair) == 0
        assert 0 < _pair_value(v, "logits", pair) < 3e-3  # rounding, within `cross`
        assert _pair_value(v, "tokens", pair) == 0
    assert _pair_value(v, "logits", "mlx-vlm~unified") == 0  # the MLX pair: bit-exact


def test_declared_deviations_are_found_in_the_arrays(three_way_run):
    v = _verdict(three_way_run, "image_declared")
    assert v.status is Status.PASS, v.first_failure_detail or v.reason
    found = {(r.stage, r.metric.split(":")[0]) for r in v.checks if r.check == DEVIATION_CHECK}
    assert found == {
        (stage, f"{side}~transformers")
        for stage in ("attention_mask", "per_layer_inputs")
        for side in ("mlx-vlm", "unified")
    }
    assert all(r.passed and not r.gating for r in v.checks if r.check == DEVIATION_CHECK)
    # What the notes say: mlx-vlm overlays full-attention layers too, feeds pad id 0.
    assert _pair_value(v, "per_layer_inputs", "mlx-vlm~transformers") > 0.1
    (mask,) = [c for c in v.checks if c.check == TABLE_CHECK and c.stage == "attention_mask"
               and c.metric.startswith("mlx-vlm~transformers")]  # fmt: skip
    assert "full_attention" in mask.detail and "sliding_attention: 0 differ" in mask.detail
    assert _pair_value(v, "logits", "mlx-vlm~transformers") > 0.1
    # The MLX pair stays bit-exact and gating.
    assert _pair_value(v, "logits", "mlx-vlm~unified") == 0


def test_undeclared_deviation_fails_where_it_enters(three_way_run):
    v = _verdict(three_way_run, "image_undeclared")
    assert v.status is Status.FAIL
    assert v.first_failure == "per_layer_inputs"
    failed = [c for c in v.checks if c.gating and not c.passed]
    assert {c.metric.split(":")[0] for c in failed} == {
        "mlx-vlm~transformers",
        "unified~transformers",
    }


def test_deviation_earlier_than_declared_fails(three_way_run):
    v = _verdict(three_way_run, "image_mask_only")
    assert v.status is Status.FAIL and v.first_failure == "per_layer_inputs"


def test_declared_deviation_the_arrays_do_not_show_fails(three_way_run):
    v = _verdict(three_way_run, "text_stale")
    assert v.status is Status.FAIL and v.first_failure == "attention_mask"
    rows = [c for c in v.checks if c.check == DEVIATION_CHECK]
    assert rows and all(c.gating and not c.passed for c in rows)
    assert "declared but not found" in rows[0].detail


def test_capture_layout_matches_the_mlx_paths(three_way_run):
    v = _verdict(three_way_run, "image_declared")
    assert v.provenance["reference_prefill_chunks"].count(",") == 0  # one prefill call
    layer_stages = {c.stage for c in v.checks if c.metric.startswith("mlx-vlm~transformers")}
    assert {"input_ids", "per_layer_inputs", "embeddings", "attention_mask"} <= layer_stages
    assert {f"layer.{i}" for i in range(4)} <= layer_stages
    assert {"logits", "decode.1", "tokens"} <= layer_stages


def test_hf_copy_is_cached_and_complete(three_way_run, synth_cache):
    copies = [p for p in (synth_cache / "hf").iterdir() if not p.name.startswith(".")]
    assert copies
    config = json.loads((copies[0] / "config.json").read_text())
    assert config["text_config"]["pad_token_id"] == 3
    assert (copies[0] / "model.safetensors").is_file()


def test_conv_weights_go_back_to_pytorch_layout():
    import mlx.core as mx

    from harness.paths.hf_convert import _to_torch_layout

    weight = mx.arange(2 * 3 * 3 * 4).reshape(2, 3, 3, 4)  # MLX [O, kH, kW, I]
    moved = _to_torch_layout(weight, (2, 4, 3, 3))
    assert moved is not None and np.array_equal(
        np.array(moved), np.array(weight).transpose(0, 3, 1, 2)
    )
    assert _to_torch_layout(weight, (2, 3, 3, 4)) is weight
    assert _to_torch_layout(weight, (5, 4, 3, 3)) is None


def test_unsupported_architecture_is_refused(tmp_path):
    from harness.paths.hf_convert import hf_copy

    with pytest.raises(PathError, match="converts gemma3, gemma4 checkpoints"):
        hf_copy(tmp_path, "qwen2_vl")


def test_missing_torch_is_one_line(monkeypatch):
    import sys

    from harness.paths import transformers_path

    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(PathError, match=r"mlx-parity\[torch\]"):
        transformers_path._torch()


def test_report_writes_the_three_way_table(three_way_run, tmp_path):
    from harness.report import write_reports

    outputs = write_reports(three_way_run, tmp_path / "report", figures="never")
    text = outputs["three_way"].read_text(encoding="utf-8")
    assert "### image\\_declared" in text or "### image_declared" in text
    assert "| `per_layer_inputs` |" in text and "(known)" in text and "**FAIL**" in text
    assert "mlx-vlm~transformers" in text.replace("\\", "")
