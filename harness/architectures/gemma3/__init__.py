"""Gemma 3 (`model_type: gemma3`): a SigLIP vision tower and an average-pooling projector in
front of the Gemma 3 text decoder (mlx-lm: `gemma3` -> `gemma3_text`).

No aliases: `gemma3_text` is the text-only family (Gemma 3 1B), which has no vision tower and
which mlx-vlm loads as a model of its own (`mlx_vlm.models.gemma3_text`); serving it from
this folder would make `synth: gemma3_text` build a vision model under the wrong name and
`addon: auto` look for a vision tower that is not there.
"""

ALIASES: tuple[str, ...] = ()

# The chat template renders <start_of_image> once per image (config `boi_token_index`); the
# processor expands it into "\n\n<start_of_image>", mm_tokens_per_image soft tokens
# (`image_token_index`, the image rows) and "<end_of_image>\n\n". Paths counting a prompt's
# image placeholders must count this id, not the soft token.
PLACEHOLDER_CONFIG_KEY = "boi_token_index"
