"""LLaVA 1.5 (`model_type: llava`): a CLIP vision tower (`clip_vision_model`, with a CLS
token) and a two-layer GELU projector in front of a Llama text decoder.

mlx-lm serves it through MODEL_REMAPPING (`llava` -> `mistral3`), which builds
`mlx_lm.models.llama` from `text_config`; mlx-vlm has `mlx_vlm.models.llava`.

No aliases: `llava_next` / `llava_onevision` are other architectures (image tiling,
`mlx_lm.load` rejects them). The chat template renders `<image>` once per image, the image
token itself, so no PLACEHOLDER_CONFIG_KEY: the processor repeats it into one run per image.
"""

ALIASES: tuple[str, ...] = ()

# mlx-vlm 0.7.10's LlavaProcessor fails every image prompt under transformers 5 (it hands
# the tokenizer's `padding` to the strict image processor). The sessions apply this fix
# before loading a LLaVA checkpoint and name it in the report's provenance (see compat.py;
# no number changes).
from .compat import fix_llava_processor  # noqa: E402

LIBRARY_FIXES = (fix_llava_processor,)
