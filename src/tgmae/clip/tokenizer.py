"""A CLIP tokenizer trained in code on a caption corpus (for `tgmae train-clip`).

Byte-level BPE with CLIP's own text pipeline (NFC + whitespace + lowercase normalizer, CLIP's
split regex, byte-level alphabet, "</w>" end-of-word suffix, <|startoftext|> ... <|endoftext|>
framing), trained with the `tokenizers` library and wrapped as transformers' `CLIPTokenizer`, so
`AutoTokenizer.from_pretrained(DIR)` loads it exactly like a public CLIP's tokenizer.
Every byte, alone and word-final, is in the vocabulary: no text ever maps to the unknown token
(which CLIP shares with the end-of-text token that the text tower pools at).
"""

from __future__ import annotations

import json
from typing import Iterable

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def train_clip_tokenizer(texts: Iterable[str], vocab_size: int = 1024, max_length: int = 32):
    """Captions -> a `CLIPTokenizer` with a BPE vocabulary of about `vocab_size` tokens
    (at least the 512 byte symbols + 2 specials). bos id 0, eos = pad id 1."""
    from tokenizers import pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("cannot train a tokenizer on no caption text")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    backend = CLIPTokenizer().backend_tokenizer  # CLIP's normalizer + pre-tokenizer, empty BPE
    trainer = trainers.BpeTrainer(
        vocab_size=max(vocab_size, 2 * len(alphabet) + 2),
        special_tokens=[BOS, EOS],
        initial_alphabet=alphabet,
        end_of_word_suffix="</w>",
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    vocab: dict[str, int] = dict(model["vocab"])
    for ch in alphabet:  # every byte, mid-word and word-final
        for token in (ch, ch + "</w>"):
            vocab.setdefault(token, len(vocab))
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


__all__ = ["BOS", "EOS", "train_clip_tokenizer"]
