"""Gemma 4 (`model_type: gemma4`; its text config is `gemma4_text`): synthesizer, the
bit-exact reference add-on, and the per-layer-input taps."""

ALIASES = ("gemma4_text",)
