"""mlx-parity: parity gate between native mlx-vlm and unified mlx-lm + vision add-on paths."""

import os

# mlx-parity never downloads a model: the hub libraries read these when first imported,
# so they are set before anything imports them.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
