"""An HF-layout (transformers) copy of an MLX-layout checkpoint, cached on disk.

mlx-vlm checkpoints (and the ones the synthesizers write) carry mlx-vlm's key names,
quantized weights and the layout mlx-vlm's `sanitize` produced (convolutions channels-last).
transformers wants its own names, float weights and PyTorch layouts. The conversion is:
rename by per-architecture prefix rules, dequantize with MLX itself (the values MLX
computes with), transpose any tensor whose shape is the channels-last permutation of the
shape transformers expects (conv weights), and check that every parameter transformers
builds has a source (a tied LM head excepted). The copy is keyed by the checkpoint's hash,
this module's version and the transformers version, and built beside its cache name then
renamed, so a killed build never leaves a half-written copy under that name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import provenance
from . import PathError

# Bump when the files written change.
CONVERT_VERSION = 1
COMPLETE_MARKER = ".mlx-parity-complete"
# A float32 copy larger than this is refused: the path is meant for tiny checkpoints.
MAX_FLOAT32_BYTES = 4 * 1024**3
# Files copied beside the weights (tokenizer, templates, processor configs). Never code.
COPIED_SUFFIXES = (".json", ".jinja", ".model", ".txt")
SKIPPED_FILES = ("model.safetensors.index.json", "synth_spec.json")


def _gemma_renames(key: str) -> str:
    """mlx-vlm's Gemma 3 / Gemma 4 names -> transformers' (`model.` + the rest, with the
    text model and the vision model one level up)."""
    if key.startswith("language_model.model."):
        return "model.language_model." + key.removeprefix("language_model.model.")
    if key.startswith("language_model.lm_head."):
        return "lm_head." + key.removeprefix("language_model.lm_head.")
    if key.startswith("vision_tower.vision_model."):  # SigLIP (Gemma 3)
        return "model.vision_tower." + key.removeprefix("vision_tower.vision_model.")
    return "model." + key


# model_type -> key renaming. Another architecture adds its rule here (and a processor
# factory in transformers_path.PROCESSORS when AutoProcessor cannot build its processor).
RENAMES: dict[str, Callable[[str], str]] = {
    "gemma4": _gemma_renames,
    "gemma3": _gemma_renames,
}


def hf_cache_root() -> Path:
    default = Path.home() / ".cache" / "mlx-parity"
    return Path(os.environ.get("MLX_PARITY_CACHE", default)) / "hf"


def _key(model_dir: Path) -> str:
    blob = json.dumps(
        {
            "checkpoint": provenance.checkpoint_hash(model_dir),
            "convert_version": CONVERT_VERSION,
            "transformers": provenance.library_versions().get("transformers"),
        },
        sort_keys=True,
    ).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def hf_copy(model_dir: Path, model_type: str) -> Path:
    """The cached HF-layout copy of `model_dir`, built on first use."""
    if model_type not in RENAMES:
        known = ", ".join(sorted(RENAMES))
        raise PathError(f"the transformers path converts {known} checkpoints, not {model_type!r}")
    root = hf_cache_root()
    target = root / f"{model_type}-{_key(model_dir)}"
    if (target / COMPLETE_MARKER).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.{os.getpid()}.", dir=root))
    try:
        _convert(model_dir, staging, RENAMES[model_type])
        (staging / COMPLETE_MARKER).write_text("")
        try:
            staging.rename(target)
        except OSError:
            if not (target / COMPLETE_MARKER).exists():  # a concurrent build won: fine
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _quantization(config: dict[str, Any], module: str) -> dict[str, Any] | None:
    """Group size and bits of a quantized module (mlx-lm's `quantization` config: global
    values, optionally overridden per module path)."""
    quant = config.get("quantization") or config.get("quantization_config")
    if not isinstance(quant, dict):
        return None
    override = quant.get(module)
    if override is False:
        return None
    chosen = override if isinstance(override, dict) else quant
    return {
        "group_size": int(chosen.get("group_size", 64)),
        "bits": int(chosen.get("bits", 4)),
        "mode": str(chosen.get("mode", "affine")),
    }


def _float_tensors(model_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Every tensor as float32 MLX arrays (quantized weights dequantized), under its MLX
    name; integer tensors (none in these architectures) are refused."""
    import mlx.core as mx

    raw: dict[str, Any] = {}
    for shard in sorted(model_dir.glob("*.safetensors")):
        if not shard.is_file():
            raise PathError(f"{shard} is not a regular file")
        raw.update(mx.load(str(shard)))
    out: dict[str, Any] = {}
    for name, value in raw.items():
        if name.endswith((".scales", ".biases")):
            continue
        module = name.rsplit(".", 1)[0]
        if f"{module}.scales" in raw:
            quant = _quantization(config, module)
            if quant is None:
                raise PathError(f"{name} has scales but the config names no quantization")
            value = mx.dequantize(
                value, raw[f"{module}.scales"], raw.get(f"{module}.biases"), **quant
            )
        if not mx.issubdtype(value.dtype, mx.floating):
            raise PathError(f"{name}: unsupported tensor dtype {value.dtype}")
        out[name] = value.astype(mx.float32)
    return out


def _expected_shapes(hf_dir: Path) -> tuple[dict[str, tuple[int, ...]], bool]:
    """Parameter shapes of the transformers model the config describes (built on the meta
    device: no memory), and whether its LM head is tied to the embeddings."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(hf_dir)
    model_class = model_class_for(config)
    with torch.device("meta"):
        model = model_class(config)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    tied = bool(getattr(config.get_text_config(), "tie_word_embeddings", False)) or bool(
        getattr(config, "tie_word_embeddings", False)
    )
    return shapes, tied


def model_class_for(config: Any) -> Any:
    """The class the checkpoint's `architectures` names in transformers, else the
    image-text-to-text auto class (never remote code)."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        found = getattr(transformers, str(name), None)
        if isinstance(found, type):
            return found
    return transformers.AutoModelForImageTextToText._model_mapping[type(config)]


def _to_torch_layout(value: Any, shape: tuple[int, ...]) -> Any:
    """Channels-last convolution weights (what mlx-vlm's sanitize wrote) back to PyTorch's
    channels-first layout when that is what the target shape asks for."""
    if tuple(value.shape) == shape:
        return value
    import mlx.core as mx

    if value.ndim >= 3:
        moved = mx.moveaxis(value, -1, 1)  # [O, *spatial, I] -> [O, I, *spatial]
        if tuple(moved.shape) == shape:
            return moved
    return None


def _convert(model_dir: Path, out: Path, rename: Callable[[str], str]) -> None:
    import mlx.core as mx

    for path in sorted(model_dir.iterdir()):
        if path.suffix in COPIED_SUFFIXES and path.is_file() and path.name not in SKIPPED_FILES:
            shutil.copyfile(path, out / path.name)
    config = json.loads((out / "config.json").read_text())
    tensors = _float_tensors(model_dir, config)
    for key in ("quantization", "quantization_config"):
        config.pop(key, None)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    expected, tied = _expected_shapes(out)
    converted: dict[str, Any] = {}
    total = 0
    for name, value in tensors.items():
        hf_name = rename(name)
        if hf_name not in expected:
            continue  # e.g. k/v projections of KV-shared layers transformers drops
        fitted = _to_torch_layout(value, expected[hf_name])
        if fitted is None:
            raise PathError(
                f"{name}: shape {tuple(value.shape)} does not fit {hf_name} "
                f"{expected[hf_name]} in transformers"
            )
        converted[hf_name] = fitted
        total += fitted.size * 4
        if total > MAX_FLOAT32_BYTES:
            raise PathError(
                f"{model_dir}: a float32 copy exceeds {MAX_FLOAT32_BYTES >> 30} GiB; "
                "the transformers path is for small checkpoints"
            )
    missing = sorted(set(expected) - set(converted) - ({"lm_head.weight"} if tied else set()))
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise PathError(
            f"{model_dir}: no source for transformers parameters {', '.join(missing[:3])}{more}"
        )
    mx.save_safetensors(str(out / "model.safetensors"), converted, metadata={"format": "pt"})
