"""`mlx-parity doctor`: what this environment is, and whether the gate was tested on it.

Prints Python and the mlx / mlx-lm / mlx-vlm / transformers versions, MLX's backend, where
the installed stack stands in the tested matrix (harness/matrix/tested.json), the synthesized
checkpoint cache and the Hugging Face cache.

Exit 0 when mlx, mlx-lm and mlx-vlm are installed and each lies between the oldest and the
newest tested version (an exact tested point, or an untested combination inside the range:
said so, with the nearest tested point); exit 1 when one is missing or outside that range
(or the tested matrix cannot be read), so a CI job can refuse an untested stack with
`mlx-parity doctor`.
"""

from __future__ import annotations

import contextlib
import os
import platform
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_UNTESTED = 0, 1
_TRUE = {"1", "true", "yes", "on"}


def backend() -> dict[str, str]:
    """MLX's default device and whether Metal is there; an MLX that does not import is
    reported, not raised."""
    try:
        import mlx.core as mx

        return {"device": str(mx.default_device()), "metal": str(mx.metal.is_available())}
    except Exception as exc:  # a broken install is exactly what the doctor reports
        return {"device": f"unavailable ({type(exc).__name__}: {exc})", "metal": "unknown"}


def _tree_size(root: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += (Path(dirpath) / name).lstat().st_size
    return total


def synth_cache() -> dict[str, Any]:
    """The synthesized-checkpoint cache: location, complete checkpoints, size, and the
    staging directories of unfinished builds (stale ones: their builder is gone)."""
    import time

    from .synth import COMPLETE_MARKER, _is_stale, cache_root

    root = cache_root()
    facts: dict[str, Any] = {"path": str(root), "exists": root.is_dir()}
    if not root.is_dir():
        return {**facts, "checkpoints": 0, "bytes": 0, "staging": 0, "stale_staging": 0}
    entries = [e for e in root.iterdir() if e.is_dir() and not e.is_symlink()]
    staging = [e for e in entries if e.name.startswith(".")]
    now = time.time()
    return {
        **facts,
        "checkpoints": sum((e / COMPLETE_MARKER).exists() for e in entries),
        "bytes": _tree_size(root),
        "staging": len(staging),
        "stale_staging": sum(_is_stale(e, now) for e in staging),
    }


def hf_cache() -> dict[str, Any]:
    try:
        from huggingface_hub import constants

        path = str(constants.HF_HUB_CACHE)
    except Exception:  # huggingface_hub missing: report the default it would use
        path = os.environ.get("HF_HUB_CACHE", str(Path.home() / ".cache/huggingface/hub"))
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in _TRUE
    return {"path": path, "exists": Path(path).is_dir(), "offline": offline}


def collect() -> dict[str, Any]:
    from . import provenance
    from .matrix import MatrixError, load, status

    versions = dict(provenance.library_versions())
    facts: dict[str, Any] = {
        "python": f"{platform.python_version()} ({platform.python_implementation()}, "
        f"{platform.system()} {platform.machine()})",
        "versions": versions,
        "backend": backend(),
        "synth_cache": synth_cache(),
        "hf_cache": hf_cache(),
    }
    try:
        points = load()
    except MatrixError as exc:
        facts["matrix"] = {"error": str(exc)}
        return facts
    found = status(versions, points)
    facts["matrix"] = {"status": found, "points": [p.name for p in points]}
    return facts


def matrix_lines(found: Any) -> list[str]:
    """The verdict on the installed stack, in words (`found`: a matrix.MatrixStatus)."""
    if found.exact is not None:
        line = f"tested: matches the tested point `{found.exact}`"
        extra = [f"  note: {lib}: {why}" for lib, why in found.differs.items()]
        return [line, *extra]
    if found.in_range:
        lines = [
            f"within the tested range, an untested combination; nearest tested point "
            f"`{found.nearest}`"
        ]
    else:
        lines = [f"OUTSIDE the tested range; nearest tested point `{found.nearest}`"]
        lines += [f"  {lib}: {why}" for lib, why in found.outside.items()]
    lines += [f"  {lib}: {why}" for lib, why in found.differs.items() if lib not in found.outside]
    return lines


def render(facts: dict[str, Any]) -> list[str]:
    versions = facts["versions"]
    cache, hub, device = facts["synth_cache"], facts["hf_cache"], facts["backend"]
    lines = [f"python        {facts['python']}"]
    lines += [
        f"{lib:<13} {versions.get(lib, 'absent')}"
        for lib in ("mlx", "mlx-lm", "mlx-vlm", "transformers", "tokenizers")
    ]
    lines.append(f"backend       {device['device']} (metal available: {device['metal']})")
    matrix = facts["matrix"]
    if "error" in matrix:
        lines.append(f"matrix        unavailable: {matrix['error']}")
    else:
        verdict = matrix_lines(matrix["status"])
        lines.append(f"matrix        {verdict[0]}")
        lines += [f"              {line.strip()}" for line in verdict[1:]]
    state = (
        "missing (built on first use)"
        if not cache["exists"]
        else (
            f"{cache['checkpoints']} checkpoint(s), {cache['bytes'] / 2**20:.1f} MiB, "
            f"{cache['staging']} staging dir(s) ({cache['stale_staging']} stale)"
        )
    )
    lines.append(f"synth cache   {cache['path']}: {state}")
    offline = (
        "offline (HF_HUB_OFFLINE)"
        if hub["offline"]
        else ("online allowed (mlx-parity forces offline while it loads models)")
    )
    present = "" if hub["exists"] else " (missing)"
    lines.append(f"hf cache      {hub['path']}{present}: {offline}")
    return lines


def exit_code(facts: dict[str, Any]) -> int:
    matrix = facts["matrix"]
    return EXIT_OK if "status" in matrix and matrix["status"].in_range else EXIT_UNTESTED


def main() -> int:
    facts = collect()
    for line in render(facts):
        print(line)
    return exit_code(facts)
