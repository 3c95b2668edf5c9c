"""LFM2-VL (`model_type: lfm2-vl`): a SigLIP2 NaFlex vision tower (packed patches, one row
per view), a pixel-unshuffle + LayerNorm/MLP projector, and the LFM2 text decoder, a hybrid
of short gated convolutions (`ArraysCache` state) and attention layers (mlx-lm:
`lfm2-vl` -> `lfm2`; mlx-vlm: `lfm2_vl`).

The published checkpoints spell the model_type with a hyphen, and mlx-lm 0.32.2 only has
`mlx_lm/models/lfm2-vl.py` (no remapping of `lfm2_vl`), so synthesized checkpoints write
`lfm2-vl`. The folder is a Python identifier; the hyphenated spelling is the alias.
"""

ALIASES: tuple[str, ...] = ("lfm2-vl",)

# The chat template renders the image token `<image>` itself once per image (config
# `image_token_id`); mlx-vlm's processor expands it. No PLACEHOLDER_CONFIG_KEY needed.
