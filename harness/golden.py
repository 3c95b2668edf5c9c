"""Recordings of a reference path's capture (`mlx-parity record`), replayed as the `golden`
path: `<root>/<architecture>/<case_id>/` holds

- `arrays.safetensors`: the stages kept exactly (ids, positions, tokens, logits, attention
  masks as packed bits; every stage with `--full`);
- `recording.json` (sorted keys): where and from what it was recorded (library versions,
  platform and MLX backend, checkpoint hash and spec, a hash of the case's content), the
  prefill schedule, each stage's dtype and how it is stored, the digests (sha256 +
  statistics, harness.digests) of the stages kept as fingerprints, the sha256 of the
  arrays file and a seal over the whole: an edited or corrupted recording is refused.

Same capture, same bytes: no time stamps, no absolute paths, sorted keys. A recording is
data from the repository (possibly from a pull request): read as untrusted, size-capped,
never through a symlink, never outside the root the command line names.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np

from . import provenance
from .case_yaml import read_capped
from .cases import CaseSpec, SynthModel
from .digests import digest_from_json, digest_json, digest_of
from .records import Capture, Digest

FORMAT = "mlx-parity-recording/1"
ARRAYS, META = "arrays.safetensors", "recording.json"
MAX_ARRAYS_BYTES = 1 << 30
MAX_META_BYTES = 64 << 20
# Top-k kept of a real checkpoint's logits (per step), with the log-sum-exp.
TOPK = 64
MASK = "attention_mask"
EXACT_STAGES = ("input_ids", "position_ids", "tokens")
# Captured arrays that are no stage of their own: rebuilt (mask views) or only needed by
# checks a digest cannot run (ulps of the hidden state around DeepStack additions).
DERIVED = (MASK + ".", "deepstack_scale.")

LogitsMode = Literal["auto", "full", "topk"]


class RecordingError(ValueError):
    """A recording that cannot be used; `str()` is one line naming the file."""


# --- what identifies a recording ---------------------------------------------------------


def case_sha256(case: CaseSpec, with_addon: bool = False) -> str:
    """Hash of what a reference capture depends on: the model, messages (with each image
    file's bytes), template arguments, prefill step, decode steps, and the add-on when the
    recorded path takes one. A case edited since its recording makes the recording stale;
    its tolerances, texts and candidate do not count."""
    fields = {
        "model", "messages", "chat_template_kwargs", "prefill_step_size", "decode_steps",
        "trust_remote_code",
    } | ({"addon"} if with_addon else set())  # fmt: skip
    data = case.model_dump(mode="json", include=fields)
    data["images"] = [hashlib.sha256(p.read_bytes()).hexdigest() for p in case.image_files]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def mlx_backend() -> str:
    import mlx.core as mx

    return mx.default_device().type.name  # "cpu" or "gpu" (Metal)


def environment() -> dict[str, str]:
    """Where a capture is made: what a recording is compared against when replayed."""
    return {
        **{f"version_{k}": v for k, v in provenance.library_versions().items()},
        **{k: v for k, v in provenance.machine().items() if k != "processor"},
        "mlx_backend": mlx_backend(),
    }


def architecture_of(model_dir: Path) -> str:
    from .architectures import folder
    from .paths.loading import model_type_of

    model_type = model_type_of(model_dir)
    return folder(model_type) or model_type


def recording_dir(root: Path, architecture: str, case_id: str) -> Path:
    """`root/<architecture>/<case_id>`, refused unless it stays inside `root` with no
    symlink on the way (ids and model types are validated names; this holds anyway)."""
    from .case_yaml import valid_id
    from .models import model_type_problem

    if not valid_id(case_id) or model_type_problem(architecture):
        raise RecordingError(f"not a usable recording name: {architecture!r}/{case_id!r}")
    base = root.resolve()
    target = base / architecture / case_id
    for part in (base / architecture, target):
        if part.is_symlink():
            raise RecordingError(f"{part} is a symlink: recordings are read from {base} only")
    if not target.resolve().is_relative_to(base):
        raise RecordingError(f"{target} leaves {base}")
    return target


# --- writing ------------------------------------------------------------------------------


def _logits_mode(case: CaseSpec, full: bool, logits: LogitsMode) -> str:
    if full or logits == "full":
        return "full"
    if logits == "topk":
        return "topk"
    return "full" if isinstance(case.model, SynthModel) else "topk"


def _stored(key: str, array: np.ndarray, full: bool, logits_mode: str) -> str:
    if key == MASK:
        return "bits"
    if key in EXACT_STAGES or array.dtype.kind in "biu" or full:
        return "exact"
    if key == "logits" or key.startswith("decode."):
        return "exact" if logits_mode == "full" else "topk"
    return "digest"


def encode(
    capture: Capture,
    case: CaseSpec,
    model_dir: Path,
    *,
    full: bool = False,
    logits: LogitsMode = "auto",
    with_addon: bool = False,
) -> tuple[bytes, bytes]:
    """(arrays.safetensors, recording.json) bytes of a capture; `with_addon`: the recorded
    path used the case's add-on (it is then part of the case's hash)."""
    from safetensors.numpy import save

    logits_mode = _logits_mode(case, full, logits)
    tensors: dict[str, np.ndarray] = {}
    stages: dict[str, dict[str, Any]] = {}
    for key in sorted(capture.arrays):
        array = capture.arrays[key]
        if key.startswith(DERIVED) and not full:
            continue
        how = _stored(key, array, full, logits_mode)
        entry: dict[str, Any] = {"stored": how, "shape": list(array.shape)}
        if how == "bits":
            tensors[key] = np.packbits(array.astype(bool).reshape(-1))
        elif how == "exact":
            tensors[key] = np.ascontiguousarray(array)
        else:
            entry |= digest_json(digest_of(array, TOPK if how == "topk" else 0))
        stages[key] = entry
    blob = save(tensors, metadata={"format": FORMAT})
    meta = {
        "format": FORMAT,
        "case_id": case.id,
        "architecture": architecture_of(model_dir),
        "path": capture.path,
        "case_sha256": case_sha256(case, with_addon),
        "case_addon": with_addon,
        "mode": "full" if full else "compact",
        "logits": logits_mode,
        "environment": environment(),
        "checkpoint": {
            "hash": provenance.checkpoint_hash(model_dir),
            "model": case.model.model_dump(mode="json"),
            **_synth_version(case),
        },
        "prefill_chunks": list(capture.prefill_chunks),
        "dtypes": dict(capture.dtypes),
        "layer_tree": capture.layer_tree,
        "prompt_text": capture.prompt_text,
        "tokens": list(capture.tokens),
        "provenance": {k: v for k, v in capture.provenance.items() if k != "checkpoint"},
        "stages": stages,
        "arrays_sha256": hashlib.sha256(blob).hexdigest(),
    }
    meta["seal"] = seal(meta)
    return blob, (json.dumps(meta, sort_keys=True, indent=1) + "\n").encode()


def _synth_version(case: CaseSpec) -> dict[str, str]:
    if not isinstance(case.model, SynthModel):
        return {}
    from .synth import synthesizer

    return {"synth_version": str(synthesizer(case.model.synth).SYNTH_VERSION)}


def seal(meta: Mapping[str, Any]) -> str:
    body = {k: v for k, v in meta.items() if k != "seal"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def write_recording(
    capture: Capture,
    case: CaseSpec,
    model_dir: Path,
    root: Path,
    *,
    full: bool = False,
    logits: LogitsMode = "auto",
    with_addon: bool = False,
) -> Path:
    """Write the recording of `capture` under `root`; returns its directory. Each file is
    replaced atomically, arrays first: a crash in between leaves a recording whose
    metadata names other arrays, which replay refuses."""
    blob, meta = encode(capture, case, model_dir, full=full, logits=logits, with_addon=with_addon)
    target = recording_dir(root, architecture_of(model_dir), case.id)
    target.mkdir(parents=True, exist_ok=True)
    for name, data in ((ARRAYS, blob), (META, meta)):
        staging = target / f".{name}.{os.getpid()}.tmp"
        staging.write_bytes(data)
        os.replace(staging, target / name)
    return target


# --- reading ------------------------------------------------------------------------------


def _read(path: Path, limit: int) -> bytes:
    if path.is_symlink():
        raise RecordingError(f"{path}: a symlink, not a recording file")
    try:
        return read_capped(path, limit)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RecordingError(f"{path} cannot be read: {exc.strerror or exc}") from None


def read_recording(directory: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """The checked metadata and arrays of a recording directory."""
    from .golden_schema import check_meta

    meta_path, arrays_path = directory / META, directory / ARRAYS
    raw_meta = _read(meta_path, MAX_META_BYTES)
    try:
        meta = json.loads(raw_meta.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise RecordingError(f"{meta_path}: not valid JSON") from None
    check_meta(meta, meta_path)
    if meta["format"] != FORMAT:
        raise RecordingError(f"{meta_path}: format {meta['format']!r}, expected {FORMAT!r}")
    if seal(meta) != meta["seal"]:
        raise RecordingError(f"{meta_path}: edited after recording (its seal does not match)")
    blob = _read(arrays_path, MAX_ARRAYS_BYTES)
    if hashlib.sha256(blob).hexdigest() != meta["arrays_sha256"]:
        raise RecordingError(f"{arrays_path}: changed after recording (sha256 differs)")
    try:
        from safetensors.numpy import load

        arrays = load(blob)
    except Exception as exc:
        raise RecordingError(f"{arrays_path}: unreadable ({type(exc).__name__})") from None
    return meta, arrays


def to_capture(meta: Mapping[str, Any], arrays: Mapping[str, np.ndarray], where: str) -> Capture:
    """The Capture a recording stands for: exact stages as arrays, masks unpacked (with
    their per-type views), fingerprinted stages as digests."""
    out: dict[str, np.ndarray] = {}
    digests: dict[str, Digest] = {}
    for key, entry in meta["stages"].items():
        shape = tuple(entry["shape"])
        if entry["stored"] in ("exact", "bits"):
            if key not in arrays:
                raise RecordingError(f"{where}: {key} is missing from {ARRAYS}")
            array = arrays[key]
            if entry["stored"] == "bits":
                count = int(np.prod(shape))
                if array.dtype != np.uint8 or array.size != (count + 7) // 8:
                    raise RecordingError(f"{where}: {key} bits do not fit shape {shape}")
                array = np.unpackbits(array, count=count).reshape(shape)
            elif tuple(array.shape) != shape:
                raise RecordingError(f"{where}: {key} has shape {array.shape}, not {shape}")
            out[key] = array
        else:
            digests[key] = digest_from_json(entry)
    extra = sorted(set(arrays) - set(out))
    if extra:
        raise RecordingError(f"{where}: {ARRAYS} holds arrays the metadata does not list")
    types = meta["provenance"].get("attention_mask_types", "")
    if MASK in out and types and MASK + "." + types.split(",")[0] not in out:
        for index, kind in enumerate(types.split(",")):
            out[f"{MASK}.{kind}"] = out[MASK][:, index, :]
    return Capture(
        path=f"golden:{meta['path']}",
        case_id=meta["case_id"],
        arrays=out,
        dtypes=meta["dtypes"],
        prefill_chunks=tuple(meta["prefill_chunks"]),
        provenance=meta["provenance"],
        layer_tree=meta["layer_tree"],
        prompt_text=meta["prompt_text"],
        tokens=tuple(meta["tokens"]),
        digests=digests,
        recording=where,
    )


def environment_diff(recorded: Mapping[str, str], now: Mapping[str, str]) -> dict[str, str]:
    return {
        key: f"recorded {recorded.get(key, '?')}, now {now.get(key, '?')}"
        for key in sorted(set(recorded) | set(now))
        if recorded.get(key) != now.get(key)
    }
