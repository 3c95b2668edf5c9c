"""Mistral 3 (`model_type: mistral3`, Mistral Small 3.1 / 3.2 layout): a Pixtral vision tower
(2-D RoPE over each image's own patch grid, block-diagonal attention between images), a
projector that RMS-normalises, merges each 2x2 patch block (`spatial_merge_size`) and runs a
GELU MLP, in front of a Mistral text decoder (mlx-lm: `mistral3` -> `llama` for
`text_config.model_type: mistral`, `ministral3` / `mistral4` otherwise).

The chat template renders `[IMG]` once per image; the processor expands it into the image's
token grid: a row of `[IMG]` per merged patch row, `[IMG_BREAK]` between rows and
`[IMG_END]` after the last. Only the `[IMG]` rows take image features; break and end rows
keep their token embeddings.

No aliases: `pixtral` has its own folder (a different projector, no patch merger).
"""

ALIASES: tuple[str, ...] = ()
