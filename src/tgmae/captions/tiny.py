"""Tiny random BLIP captioner and CLIP model, built from config objects with no download.

For offline tests and demos of the caption -> store -> embed path: they load through the same
code as real checkpoints (`AutoProcessor`/`AutoModelForImageTextToText`, `AutoTokenizer`/CLIP),
but their captions and embeddings mean nothing. Tokenizers are built in code: a word-level BERT
vocabulary for BLIP, a byte-level CLIP BPE with no merges (every byte is a token) for CLIP.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from tgmae.atomic import remove_stale_temps, temp_path

TINY_WORDS = ("a video of the person man woman dog cat ball car red blue green yellow small big is "
              "playing running jumping walking holding throwing moving on in with and field room street "
              "circle square triangle star left right up down").split()


def save_tiny_blip(path: str | Path, image_size: int = 32, seed: int = 0) -> Path:
    """A ~100k-parameter `BlipForConditionalGeneration` + `BlipProcessor` in `path`.

    Weights are drawn wider than usual (initializer_range 0.5) so that different images give
    different (meaningless) captions, which lets tests see the image -> caption plumbing;
    special tokens are never generated, so no caption comes out empty.
    """
    from transformers import (BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor,
                              BlipProcessor)

    from tgmae.hub import quiet_transformers

    path = Path(path)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]"]
    vocab = {w: i for i, w in enumerate(specials + list(dict.fromkeys(TINY_WORDS)))}
    restore = quiet_transformers()
    try:
        tokenizer = BertTokenizer(vocab=vocab)
        tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        config = BlipConfig(
            text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=64, pad_token_id=vocab["[PAD]"],
                             bos_token_id=vocab["[DEC]"], sep_token_id=vocab["[SEP]"],
                             eos_token_id=vocab["[SEP]"], initializer_range=0.5),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=image_size, patch_size=8, initializer_range=0.5),
            projection_dim=16,
            initializer_range=0.5,
        )
        torch.manual_seed(seed)
        model = BlipForConditionalGeneration(config).eval()
        with torch.no_grad():  # never emit special tokens: captions are always max_new_tokens words
            model.text_decoder.cls.predictions.bias[: len(specials)] = -1e4
        processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": image_size, "width": image_size}),
                                  tokenizer=tokenizer)
        processor.save_pretrained(path)
        model.save_pretrained(path)
    finally:
        restore()
    return path


def save_tiny_clip(path: str | Path, dim: int = 16, seed: int = 0, context: int = 77) -> Path:
    """A tiny `CLIPModel` (text width 32, projection `dim`) + its tokenizer in `path`: the 256 byte
    symbols (+ word-end forms) as its vocabulary, no merges."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    from tgmae.hub import quiet_transformers

    path = Path(path)
    chars = sorted(ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(chars)} | {c + "</w>": len(chars) + i for i, c in enumerate(chars)}
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    bos, eos = tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"])
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=context, bos_token_id=bos,
                         eos_token_id=eos, pad_token_id=eos),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=dim,
    )
    restore = quiet_transformers()
    try:
        torch.manual_seed(seed)
        CLIPModel(config).eval().save_pretrained(path)
        tokenizer.save_pretrained(path)
    finally:
        restore()
    return path


def save_word_encoder(path: str | Path, corpus: list[str], width: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """A random `BertModel` (width `width`, `layers` blocks) with a word-level tokenizer of
    `corpus`'s lower-cased words ([UNK] for others) in `path`: its mean-pooled embeddings keep which
    words a text has and nothing of their meaning, for offline studies without a text model.
    The folder appears whole (written aside, then renamed over any folder at `path`)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    from tgmae.hub import quiet_transformers

    path = Path(path)
    words = sorted({w for t in corpus for w in re.findall(r"\w+|[^\w\s]", t.lower())})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    # saved whole into a temp folder, then renamed into place: config.json is save_pretrained's first
    # file, and a folder killed after it (no weights, no tokenizer) looked like a finished encoder
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    work = temp_path(path)
    restore = quiet_transformers()
    try:
        torch.manual_seed(seed)
        BertModel(BertConfig(vocab_size=len(vocab), hidden_size=width, intermediate_size=2 * width,
                             num_hidden_layers=layers, num_attention_heads=2, max_position_embeddings=128)
                  ).eval().save_pretrained(work)
        BertTokenizer(vocab=vocab).save_pretrained(work)
        if path.is_dir():  # a half folder of a killed save (no config.json: its caller saves it again)
            shutil.rmtree(path)
        os.replace(work, path)
    finally:
        restore()
        shutil.rmtree(work, ignore_errors=True)
    return path
