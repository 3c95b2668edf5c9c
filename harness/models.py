"""Resolve a case's model spec to a checkpoint directory, never downloading anything."""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
import struct
from pathlib import Path

from pydantic import ValidationError

from .case_yaml import one_line, open_regular, read_capped
from .cases import CaseError, CaseSpec, HubModel, LocalModel, SynthModel
from .synth import UnknownSynthesizerError, ensure_checkpoint_within

# --- a checkpoint's JSON files, read in the parent as untrusted data ---------------------

MAX_JSON_BYTES = 16 << 20  # config.json: real ones are a few KiB


class DataFileError(ValueError):
    """A checkpoint's JSON file that cannot be used; `str()` is one line naming the file
    by name, never its content."""


class UnreadableFileError(DataFileError):
    """Not read at all: not a regular file, over the size cap, or an I/O error."""


def read_json(path: Path, limit: int = MAX_JSON_BYTES) -> object:
    """A JSON file as untrusted data: regular, at most `limit` bytes, UTF-8. Every problem is
    a `DataFileError` (a missing file stays FileNotFoundError): a FIFO does not block, a
    link to /dev/zero is not read, a 5000-digit number or deep nesting is a named error."""
    name = one_line(path.name)
    try:
        raw = read_capped(path, limit)
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the name
        reason = getattr(exc, "strerror", None) or "not a usable file name"
        raise UnreadableFileError(f"{name} cannot be read: {reason}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DataFileError(f"{name} is not UTF-8 text (invalid byte at {exc.start})") from None
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno}, column {exc.colno}"
        raise DataFileError(f"{name} is not valid JSON ({where}): {exc.msg}") from None
    except RecursionError:
        raise DataFileError(f"{name} is not usable JSON: nested too deeply") from None
    except ValueError:  # an integer past Python's digit limit
        raise DataFileError(f"{name} is not usable JSON: a number with too many digits") from None


_MODEL_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_\-]{0,63}")
_JSON_TYPES = {dict: "object", list: "array", bool: "boolean", type(None): "null", str: "string"}


def model_type_problem(value: object) -> str | None:
    """Why a config.json `model_type` is unusable, or None. Loaders import modules by it
    and the report stores it as text: a plain name (letters, digits, _ and -), nothing else."""
    if not isinstance(value, str):
        return f"model_type must be a name, not a JSON {_JSON_TYPES.get(type(value), 'number')}"
    if not _MODEL_TYPE.fullmatch(value):
        return "model_type must be a plain name (letters, digits, _ and -, at most 64)"
    return None


class ModelUnavailable(Exception):
    """The checkpoint is not on this machine: the case is skipped with this reason."""


def resolve_model(case: CaseSpec, timeout: float = 3600.0) -> Path:
    """The case's checkpoint directory; a synthesized one is built (on a cache miss) in a
    child process stopped after `timeout` seconds."""
    spec = case.model
    if isinstance(spec, SynthModel):
        return _synthesize(case, spec, timeout)
    if isinstance(spec, LocalModel):
        path = Path(spec.path).expanduser()
        path = path if path.is_absolute() else case.base_dir / path
        field = "model.path"
        if not path.exists():
            # A path the case file names is part of the case: a typo is a config error (exit
            # 2), not a skip. Only `model.hf` can legitimately be "not on this machine".
            raise CaseError(case.source, f"local checkpoint {path} does not exist", case.id, field)
    else:
        field = "model.hf"
        try:
            path = _from_hf_cache(spec)
        except ValueError as exc:  # huggingface_hub's HFValidationError: a bad repo id
            message = f"not a usable repo id or revision ({type(exc).__name__})"
            raise CaseError(case.source, message, case.id, field) from None
    try:
        validate_checkpoint(path)
    except CheckpointError as exc:
        raise CaseError(case.source, str(exc), case.id, field) from None
    return path


class CheckpointError(ValueError):
    pass


def validate_checkpoint(path: Path) -> None:
    """Cheap structural checks, so a broken checkpoint gets one clear line instead of a
    traceback from deep inside a loader: config.json readable, every safetensors file
    complete (header parses, tensor data as long as the header says)."""
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory")
    try:
        parsed = read_json(path / "config.json")
    except FileNotFoundError:
        raise CheckpointError(f"{path} has no config.json") from None
    except DataFileError as exc:
        raise CheckpointError(str(exc)) from None
    if not isinstance(parsed, dict) or "model_type" not in parsed:
        raise CheckpointError("config.json has no model_type")
    problem = model_type_problem(parsed["model_type"])
    if problem:
        raise CheckpointError(f"config.json: {problem}")
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise CheckpointError(f"{path} holds no *.safetensors weights")
    for shard in shards:
        try:
            _check_safetensors(shard)
        except OSError as exc:
            raise CheckpointError(f"{shard.name} cannot be read: {exc.strerror or exc}") from None


# The safetensors format caps the header at 100 MB; a larger length is corrupt or hostile
# (it would be read into memory whole).
MAX_HEADER_BYTES = 100_000_000
# Bits per element of the byte-aligned safetensors dtypes; others skip the size check.
DTYPE_BITS = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E4M3": 8, "F8_E5M2": 8, "F8_E8M0": 8,
    "U16": 16, "I16": 16, "F16": 16, "BF16": 16,
    "U32": 32, "I32": 32, "F32": 32, "U64": 64, "I64": 64, "F64": 64, "C64": 64,
}  # fmt: skip


def _check_safetensors(shard: Path) -> None:
    with open_regular(shard) as handle:  # a FIFO or a device is refused without blocking
        size = os.fstat(handle.fileno()).st_size
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise CheckpointError(f"{shard.name} is truncated ({size} bytes)")
        header_len = struct.unpack("<Q", prefix)[0]
        if header_len > size - 8:
            raise CheckpointError(
                f"{shard.name} is truncated or corrupt: header of "
                f"{header_len} bytes in a {size}-byte file"
            )
        if header_len > MAX_HEADER_BYTES:
            raise CheckpointError(
                f"{shard.name} has a {header_len}-byte header, over the safetensors limit of "
                f"{MAX_HEADER_BYTES}"
            )
        try:
            header = json.loads(handle.read(header_len))
        except (ValueError, RecursionError):  # bad UTF-8 or JSON, a 5000-digit number
            raise CheckpointError(f"{shard.name} has a corrupt header") from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"{shard.name} has a corrupt header: a JSON {type(header).__name__}, not an object"
        )
    ends = [0]
    for name, entry in header.items():
        if name == "__metadata__":
            if not isinstance(entry, dict) or not all(isinstance(v, str) for v in entry.values()):
                raise CheckpointError(
                    f"{shard.name} has a corrupt header: __metadata__ must map names to strings"
                )
            continue
        problem = _entry_problem(entry)
        if problem:
            raise CheckpointError(
                f"{shard.name} has a corrupt header: tensor {reprlib.repr(name)} {problem}"
            )
        ends.append(entry["data_offsets"][1])
    expected = 8 + header_len + max(ends)
    if size < expected:
        raise CheckpointError(f"{shard.name} is truncated: {size} bytes, header needs {expected}")


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _entry_problem(entry: object) -> str:
    """What is wrong with one tensor entry of a safetensors header ('' if nothing)."""
    if not isinstance(entry, dict):
        return f"is a JSON {type(entry).__name__}, not an object"
    missing = [k for k in ("dtype", "shape", "data_offsets") if k not in entry]
    if missing:
        return f"has no {', '.join(missing)}"
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str):
        return f"has dtype {reprlib.repr(dtype)}, not a name"
    if not isinstance(shape, list) or not all(_is_count(d) for d in shape):
        return f"has shape {reprlib.repr(shape)}, not a list of non-negative integers"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_count(o) for o in offsets)
        or offsets[0] > offsets[1]
    ):
        return f"has data_offsets {reprlib.repr(offsets)}, not [begin, end] with 0 <= begin <= end"
    begin, end = offsets
    bits = DTYPE_BITS.get(dtype)
    if bits is not None and math.prod(shape) * bits != (end - begin) * 8:
        return f"holds {end - begin} bytes for shape {reprlib.repr(shape)} of {dtype}"
    return ""


def _synthesize(case: CaseSpec, spec: SynthModel, timeout: float) -> Path:
    try:
        return ensure_checkpoint_within(spec.synth, spec.options, timeout)
    except UnknownSynthesizerError as exc:
        raise CaseError(case.source, str(exc), case.id, "model.synth") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(["model.options", *map(str, first["loc"])])
        raise CaseError(case.source, first["msg"], case.id, field) from None


def _from_hf_cache(spec: HubModel) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(spec.hf, revision=spec.revision, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError) as exc:
        raise ModelUnavailable(
            f"{spec.hf} is not in the local Hugging Face cache (mlx-parity never downloads): "
            f"{type(exc).__name__}"
        ) from None
