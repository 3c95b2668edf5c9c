"""Idefics3 (`model_type: idefics3`): a SigLIP-style vision tower, a pixel-shuffle connector
(`scale_factor`) and a Llama text decoder. Images are split into `max_image_size` tiles plus
one downscaled global image; the processor expands each `<image>` placeholder into
`<fake_token_around_image><row_i_col_j><image>*n ... <global-img><image>*n
<fake_token_around_image>`.

`mlx_lm.load` rejects these checkpoints ("Model type idefics3 not supported") although
mlx-lm has their text model (`text_config.model_type: llama`): the add-on supplies the
text-model loader (`AddOn.load_text_model`).

No aliases: SmolVLM (`model_type: smolvlm`) runs mlx-vlm's Idefics3 model class
(`smolvlm.Model` subclasses it unchanged), but its processor is another class
(`SmolVLMProcessor`: video input, image tokens read from the tokenizer,
`processor_config.json` `image_processor` overrides) and its config classes have other
defaults (every `TextConfig` / `VisionConfig` field has one; head counts derived from
`head_dim`). This add-on builds its configs with mlx-vlm's idefics3 classes, and this
folder's synthesizer writes `model_type: idefics3` only, so `synth: smolvlm` would build a
checkpoint of the wrong type. Serving SmolVLM takes the smolvlm config classes in the
add-on and a synthesizer option for the model_type: not done, not measured.
"""

ALIASES: tuple[str, ...] = ()
