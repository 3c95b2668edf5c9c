"""Gemma 3n (`model_type: gemma3n`): a MobileNetV5 vision tower, a Conformer audio tower
and multimodal embedders (hard-token embeddings for the vision/audio vocabularies,
soft-token projection of tower features) in front of the Gemma 3n decoder (per-layer
inputs, AltUp, LAuReL, KV sharing). Synthesizer, the reference add-on, and taps for the
AltUp-stacked decoder state and the per-layer inputs.

No aliases: `gemma3n_text` names only the text config inside a gemma3n checkpoint; serving
it from here would let `synth: gemma3n_text` build a vision model under the wrong name.
The chat template renders the image soft token itself once per image (the processor
expands it), so the placeholder is `image_token_id`: no PLACEHOLDER_CONFIG_KEY.
"""

ALIASES: tuple[str, ...] = ()
