"""A small byte-fallback BPE tokenizer trained locally, for synthesized checkpoints.

Architecture synthesizers pass their own special tokens; the BPE recipe (Gemma/Llama-style
"\u2581" space marker, byte fallback, specials never normalized) is shared.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

CORPUS = """
Describe this image in one sentence. What is in the picture? The picture shows a
small red square on a blue background. There is a cat sitting next to a window
and the light is soft. Please answer the question about the image. A photo of a
dog running on the grass in the park. The user asks the model to describe the
colors, the shapes and the objects. The model answers with a short and clear
description. Hello, how are you today? I am fine, thank you. What time is it?
It is late in the evening and the sky is dark. Count the number of objects in
the image. There are three circles and two squares. The text in the image says
hello world. Summarize the document. Translate the sentence into French.
Compare the two images. Which one is brighter? The first one has more stripes.
user model system thought tool response call image audio video
The quick brown fox jumps over the lazy dog. 0123456789 , . ? ! : ; - ( ) [ ] { }
"""

_ALPHABET = list(
    "\u2581abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?!:;-()[]{}'\"\n"
)
_SPACE = "\u2581"


def build_bpe_tokenizer(
    out: Path, specials: Sequence[str], vocab_size: int, bos_token: str | None = None
) -> dict[str, int]:
    """Write `tokenizer.json` with exactly `vocab_size` ids; return the special-token ids.

    Layout: specials first (stable ids), then the 256 byte-fallback pieces, then learned merges.
    With `bos_token`, a post-processor prepends it whenever special tokens are asked for
    (`encode(text)`, `add_special_tokens=True`), as Gemma's published tokenizers do;
    without it (the default) nothing is added and the file is what it always was.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    n_learned = vocab_size - len(specials) - len(byte_tokens)
    if n_learned < 100:
        raise ValueError(
            f"vocab_size={vocab_size} leaves {n_learned} learned pieces; "
            f"need at least {len(specials) + len(byte_tokens) + 100}"
        )

    trainer_model = Tokenizer(BPE(unk_token="<unk>"))
    trainer_model.normalizer = normalizers.Replace(" ", _SPACE)
    trainer = BpeTrainer(
        vocab_size=n_learned,
        special_tokens=[],
        show_progress=False,
        initial_alphabet=_ALPHABET,
        limit_alphabet=200,
    )
    trainer_model.train_from_iterator(CORPUS.strip().split("\n") * 4, trainer=trainer)
    learned = sorted(trainer_model.get_vocab().items(), key=lambda kv: kv[1])
    merges = json.loads(trainer_model.to_str())["model"]["merges"]

    vocab: dict[str, int] = {}
    for piece in [*specials, *byte_tokens, *(p for p, _ in learned)]:
        vocab.setdefault(piece, len(vocab))
    # Pad with unused placeholder pieces so the vocab size is exact (the embedding
    # tables in config.json must match it).
    while len(vocab) < vocab_size:
        vocab[f"<unused{len(vocab)}>"] = len(vocab)
    pairs = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    pairs = [m for m in pairs if m[0] in vocab and m[1] in vocab and m[0] + m[1] in vocab]

    tok = Tokenizer(
        BPE(vocab=vocab, merges=pairs, unk_token="<unk>", fuse_unk=True, byte_fallback=True)
    )
    tok.normalizer = normalizers.Replace(" ", _SPACE)
    tok.pre_tokenizer = pre_tokenizers.Split(
        pattern=" ", behavior="merged_with_previous", invert=False
    )
    tok.decoder = decoders.Sequence(
        [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    if bos_token is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos_token} $A",
            pair=f"{bos_token} $A {bos_token} $B",
            special_tokens=[(bos_token, vocab[bos_token])],
        )
    tok.save(str(out / "tokenizer.json"))
    if tok.get_vocab_size() != vocab_size:
        raise AssertionError(f"tokenizer has {tok.get_vocab_size()} ids, expected {vocab_size}")
    return {t: vocab[t] for t in specials}
