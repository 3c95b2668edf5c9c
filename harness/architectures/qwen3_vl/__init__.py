"""Qwen3-VL (`model_type: qwen3_vl`): a ViT with 3-D patch embedding, interpolated absolute
position embeddings and 2-D rotary attention, a 2x2 patch merger, and DeepStack mergers whose
features are ADDED to the text hidden state after the first decoder layers; in front of the
Qwen3 text decoder with interleaved M-RoPE (mlx-lm: `qwen3_vl` -> a plain `qwen3` model with
1-D RoPE and no DeepStack: the add-on patches the loaded instance, see addon.py).

No aliases: `qwen3_vl_moe` has a mixture-of-experts text model (mlx-lm `qwen3_moe`) and
its own mlx-vlm module; serving it from this folder would synthesize the wrong decoder.
"""

ALIASES: tuple[str, ...] = ()

# The chat template renders <|vision_start|><|image_pad|><|vision_end|> per image; the
# processor expands the one <|image_pad|> (config `image_token_id`, the image rows) into
# (grid_h * grid_w) / merge_size**2 copies. The placeholder is the image token itself, so
# no PLACEHOLDER_CONFIG_KEY.
