"""A CLIP tokenizer trained in code on a caption corpus (for `tgmae train-clip`).

Byte-level BPE with CLIP's own text pipeline (NFC + whitespace + lowercase normalizer, CLIP's
split regex, byte-level alphabet, "</w>" end-of-word suffix, <|startoftext|> ... <|endoftext|>
framing; the normalizer and pre-tokenizer come from `tokenizers`, the merges from a deterministic
learner here), wrapped as transformers' `CLIPTokenizer`, so
`AutoTokenizer.from_pretrained(DIR)` loads it exactly like a public CLIP's tokenizer.
Every byte, alone and word-final, is in the vocabulary: no text ever maps to the unknown token
(which CLIP shares with the end-of-text token that the text tower pools at).
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def learn_bpe_merges(words: Counter, num_merges: int) -> list[tuple[str, str]]:
    """Byte-pair merges of word counts {word: count}, each word a sequence of byte-level symbols
    whose last symbol carries the "</w>" suffix (Sennrich et al.'s algorithm, as CLIP's BPE).
    Each step merges the most frequent adjacent pair; ties go to the lexicographically smallest
    pair, so the result depends on the counts only (the `tokenizers` trainer breaks ties by token
    ids that it assigns in hash-map order, different in every process: huggingface/tokenizers#1794)."""
    seqs = {w: tuple(w[:-1]) + (w[-1] + "</w>",) for w in words if w}
    merges: list[tuple[str, str]] = []
    while len(merges) < num_merges:
        pairs: Counter = Counter()
        for w, seq in seqs.items():
            for pair in zip(seq, seq[1:]):
                pairs[pair] += words[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for w, seq in seqs.items():
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    out.append(joined)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[w] = tuple(out)
    return merges


def train_clip_tokenizer(texts: Iterable[str], vocab_size: int = 1024, max_length: int = 32):
    """Captions -> a `CLIPTokenizer` with a BPE vocabulary of about `vocab_size` tokens
    (at least the 512 byte symbols + 2 specials). bos id 0, eos = pad id 1. The same captions
    give the same tokenizer (ids included) in every process."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        raise ValueError("cannot train a tokenizer on no caption text")
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = CLIPTokenizer().backend_tokenizer  # CLIP's normalizer + pre-tokenizer
    words: Counter = Counter()
    for text in texts:
        words.update(w for w, _ in backend.pre_tokenizer.pre_tokenize_str(backend.normalizer.normalize_str(text)))
    base = [BOS, EOS] + alphabet + [ch + "</w>" for ch in alphabet]
    merges = learn_bpe_merges(words, max(vocab_size - len(base), 0))
    vocab: dict[str, int] = {}
    for token in base + [a + b for a, b in merges]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)
