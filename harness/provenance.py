"""Where a result came from: library versions, machine, commit, checkpoint identity."""

from __future__ import annotations

import functools
import hashlib
import platform
import subprocess
from importlib import metadata
from pathlib import Path

TRACKED_DISTRIBUTIONS = ("mlx", "mlx-lm", "mlx-vlm", "transformers", "tokenizers")


@functools.cache
def library_versions() -> dict[str, str]:
    versions = {}
    for dist in TRACKED_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "absent"
    return versions


@functools.cache
def machine() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or "unknown",
    }


PROJECT_ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def git_commit(repo: Path = PROJECT_ROOT) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def checkpoint_hash(model_dir: Path) -> str:
    """Hash of config.json and the safetensors index: cheap, yet changes with the weights.

    Shards themselves are hashed by size + name only; hashing gigabytes per run would cost
    more than the parity check itself.
    """
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.json")) + sorted(model_dir.glob("*.safetensors")):
        digest.update(path.name.encode())
        if path.suffix == ".json":
            digest.update(path.read_bytes())
        else:
            digest.update(str(path.stat().st_size).encode())
    return digest.hexdigest()[:16]
