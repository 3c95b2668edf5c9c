"""Deliberately broken Mistral 3 add-ons, each a realistic wiring mistake: the gate must FAIL
every one of them and name the stage where it enters (tests/test_mistral3.py). Loaded by the
runner as `mistral3_mutants:<Class>` (tests/ is on sys.path under pytest)."""

from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn

from harness.architectures.mistral3.addon import AddOn


class Float32Features(AddOn):
    """Vision hidden states upcast to float32 before the projector (an engine computing
    image features "in full precision"): the features, and so the merged embeddings, come
    out float32 where native keeps the checkpoint's dtype. Invisible on a float32
    checkpoint."""

    def project(self, selected, image_sizes):
        return super().project(selected.astype(mx.float32), image_sizes)


class ContiguousImageSpan(AddOn):
    """Each image's features written as one contiguous run from its first [IMG] (the
    LLaVA / Gemma layout, where an image is a single run of image tokens): the
    [IMG_BREAK] rows take features and the image's last [IMG] rows keep their token
    embeddings. Invisible on an image whose token grid is a single row (no breaks)."""

    def merge_features(self, input_ids, inputs_embeds, features):
        image, end = self.config.image_token_index, self.processor.image_end_token_id
        rows: list[int] = []
        start, k = None, 0
        for position, token in enumerate(input_ids[0].tolist()):
            if token == image:
                if start is None:
                    start, k = position, 0
                rows.append(start + k)  # the k-th [IMG] of the image, breaks not skipped
                k += 1
            elif token == end:
                start = None
        merged = inputs_embeds[0]
        merged[mx.array(rows)] = features.astype(merged.dtype)
        return merged[None]


class ProjectorNormSkipped(AddOn):
    """Pixtral's projector path reused for Mistral 3: patch merger and MLP without the
    RMSNorm Mistral 3 puts in front of them."""

    def project(self, selected, image_sizes):
        projector = self.multi_modal_projector
        if selected.ndim == 3 and selected.shape[0] == 1:
            selected = selected.squeeze(0)
        merged = projector.patch_merger(selected, image_sizes)
        return projector.linear_2(nn.gelu(projector.linear_1(merged)))


class SingleBos(AddOn):
    """Drops the second <bos> that mlx-vlm's tokenization adds after the template's: what
    the model expects, but not what native mlx-vlm 0.7.10 feeds (the gate's reference), so
    it diverges at input_ids. A no-op with a tokenizer that adds no BOS."""

    def processor_inputs(self, prompt, images):
        inputs = super().processor_inputs(prompt, images)
        ids = inputs["input_ids"]
        bos = self.processor.tokenizer.bos_token_id
        if ids.shape[1] > 1 and ids[0, 0].item() == bos and ids[0, 1].item() == bos:
            inputs["input_ids"] = ids[:, 1:]
            inputs["attention_mask"] = inputs["attention_mask"][:, 1:]
        return inputs
