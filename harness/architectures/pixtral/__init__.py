"""Pixtral (`model_type: pixtral`, Pixtral 12B as mlx-vlm converts it): the Pixtral vision
tower Mistral 3 also uses, a LLaVA projector (linear, GELU, linear, with biases; no norm,
no patch merger: one image token per 16 px patch) and a Mistral text decoder (mlx-lm:
`pixtral` -> `llama`).

Prompts look like Mistral 3's: `[IMG]` per image in the template, expanded by the processor
into rows of `[IMG]` separated by `[IMG_BREAK]` and closed by `[IMG_END]`.
"""

ALIASES: tuple[str, ...] = ()
