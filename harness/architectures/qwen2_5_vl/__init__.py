"""Qwen2.5-VL (`model_type: qwen2_5_vl`): a windowed-attention ViT with a 2x2 patch merger in
front of a Qwen2 decoder whose rotary positions are 3-D (M-RoPE: temporal, height, width
sections of the rotated dimensions).

mlx-lm 0.32.2 maps `qwen2_5_vl` -> `qwen2_vl` -> a plain `qwen2` text model with a 1-D RoPE:
the unified path needs more than embeddings. The add-on (addon.py) patches the loaded
mlx-lm instance so that its decoder rotates by mlx-vlm's M-RoPE positions, and the probes
(probes.py) record those positions as the `position_ids` stage.

No aliases yet: `qwen2_vl` (Qwen2-VL) has a different vision tower (no window attention,
LayerNorm, a different mlx-vlm module) and is not served by this folder.
"""

ALIASES: tuple[str, ...] = ()
