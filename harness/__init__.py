"""mlx-parity: parity gate between native mlx-vlm and unified mlx-lm + vision add-on paths."""

import os


def offline() -> None:
    """mlx-parity never downloads a model. The hub libraries read these when first imported,
    so every entry point (CLI, pytest plugin with --parity-cases, run_cases) calls this
    before anything imports them; importing the package alone changes nothing (the pytest
    plugin is imported in every pytest session of a venv that has mlx-parity)."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
