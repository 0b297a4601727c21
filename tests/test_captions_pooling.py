"""Sentence-transformers folders read as they are: every pooling mode against a hand computation,
modules and modes tgmae does not reproduce refused by name (tiny random BERT, no hub)."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from conftest import tiny_bert
from tgmae.captions.embed import EmbeddingCache, EmbeddingCacheError, ModelIdentity, TextEmbedder, embed_texts
from tgmae.captions.pooling import POOLINGS, pool_tokens, sentence_pooling
from tgmae.errors import SettingsError

TEXTS = ["a man is jumping over a red ball", "a dog", "a red ball on the street", "a man"]


def _by_hand(h: torch.Tensor, mode: str) -> torch.Tensor:
    """One text's sentence vector [H] from its real tokens' states h [n, H], as sentence-transformers'
    Pooling defines each mode (weightedmean: token i weighted i, 1-based)."""
    n = h.shape[0]
    w = torch.arange(1, n + 1, dtype=h.dtype)[:, None]
    return {"cls": h[0], "max": h.max(0).values, "mean": h.mean(0), "mean_sqrt_len_tokens": h.sum(0) / math.sqrt(n),
            "weightedmean": (h * w).sum(0) / w.sum(), "lasttoken": h[-1]}[mode]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("mode", [*POOLINGS, "cls+mean_sqrt_len_tokens", "max+mean+lasttoken"])
def test_each_pooling_mode_is_the_hand_computation(tmp_path, mode, side):
    """Re-trial 24A S5: lasttoken, weightedmean and mean_sqrt_len fell silently to mean, and several
    modes (sentence-transformers concatenates them) to the first. Texts of different lengths in one
    padded batch, padding on either side: each row is its real tokens pooled as the mode says."""
    model, tok = tiny_bert(tmp_path / "st", pooling=mode, modules=["Pooling", "Normalize"])
    if side == "left":  # as LLM embedders' tokenizers say (save_pretrained does not write it)
        tok.padding_side = "left"
        config = json.loads((tmp_path / "st" / "tokenizer_config.json").read_text())
        (tmp_path / "st" / "tokenizer_config.json").write_text(json.dumps({**config, "padding_side": "left"}))
    assert sentence_pooling(str(tmp_path / "st")) == mode
    emb = TextEmbedder(str(tmp_path / "st"))(TEXTS, batch_size=len(TEXTS))
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state  # the same padded batch TextEmbedder ran
    assert enc["attention_mask"][:, 0 if side == "left" else -1].min() == 0  # some text is padded
    for i in range(len(TEXTS)):
        h = hidden[i, enc["attention_mask"][i].bool()]
        ref = torch.cat([_by_hand(h, m) for m in mode.split("+")])
        assert emb.shape[1] == 24 * len(mode.split("+"))
        assert torch.allclose(emb[i], torch.nn.functional.normalize(ref, dim=0), atol=1e-5), (mode, i)


def test_pool_tokens_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="unknown pooling 'median'"):
        pool_tokens(torch.zeros(1, 2, 3), torch.ones(1, 2), "median")


def test_a_dense_module_is_refused_naming_it_even_with_a_filled_cache(tmp_path, capsys):
    """Re-trial 24A S5: modules.json was never read, so a 2_Dense projection (LaBSE, distiluse, the
    multilingual CLIP text models) was dropped: vectors of another width and space, no word. Refused
    naming the folder, the module and the setting, also when a cache of its pooled states exists."""
    from tgmae.captions.store import CaptionRecord, write_store
    from tgmae.cli import main

    folder = tmp_path / "labse"
    tiny_bert(folder, pooling="cls")
    cache = tmp_path / "e.safetensors"
    embed_texts(TEXTS, str(folder), cache)  # before modules.json was there
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    for call in (lambda: TextEmbedder(str(folder), setting="captions.text_model"),
                 lambda: embed_texts(TEXTS, str(folder), cache, setting="captions.text_model")):
        with pytest.raises(SettingsError) as e:
            call()
        msg = str(e.value)
        assert str(folder) in msg and "Dense module (2_Dense)" in msg and "captions.text_model" in msg, msg
    caps = tmp_path / "captions.jsonl"
    write_store(caps, [CaptionRecord("v1", ["a man"], "captioner", "blip")])
    capsys.readouterr()
    assert main(["embed-captions", "--captions", str(caps), "--clip", str(folder), "--out", str(cache)]) == 2
    err = capsys.readouterr().err
    assert "Dense module (2_Dense)" in err and "--clip" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("config, named", [
    ({"pooling_mode_fancy_tokens": True}, "pooling mode pooling_mode_fancy_tokens"),
    ({"pooling_mode_mean_tokens": False}, "no pooling mode"),
    ({"pooling_mode": "median"}, "pooling mode median"),
])
def test_a_pooling_mode_tgmae_does_not_know_is_refused(tmp_path, config, named):
    tiny_bert(tmp_path / "st", pooling="mean")
    (tmp_path / "st" / "1_Pooling" / "config.json").write_text(json.dumps({"word_embedding_dimension": 24, **config}))
    with pytest.raises(SettingsError, match=f"1_Pooling/config.json names {named}, which tgmae does not"):
        sentence_pooling(str(tmp_path / "st"), "captions.text_model")


def test_a_default_prompt_is_refused_and_a_pooling_mode_string_is_read(tmp_path):
    """sentence-transformers prepends a default prompt to every text, and `pooling_mode` overrides
    the per-mode flags."""
    tiny_bert(tmp_path / "st", pooling="mean")
    (tmp_path / "st" / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode": "LastToken"}))
    assert sentence_pooling(str(tmp_path / "st")) == "lasttoken"
    (tmp_path / "st" / "config_sentence_transformers.json").write_text(json.dumps(
        {"prompts": {"query": "query: "}, "default_prompt_name": "query"}))
    with pytest.raises(SettingsError, match="names a default prompt \\('query'\\)"):
        sentence_pooling(str(tmp_path / "st"))


def test_a_cache_pooled_before_tgmae_read_the_mode_is_stale(tmp_path):
    """Caches now record their pooling; one written before, for a lasttoken model (then read as
    mean), is refused as stale (or rebuilt); an older cache of a cls / max / mean model is read."""
    for mode, stale in (("lasttoken", True), ("cls", False)):
        folder = tmp_path / mode
        tiny_bert(folder, pooling=mode)
        identity = ModelIdentity.of(str(folder))
        assert identity.pooling == mode
        path = tmp_path / f"{mode}.safetensors"
        old = EmbeddingCache(replace(identity, pooling=""))  # as written before the record
        old.add(TEXTS, torch.nn.functional.normalize(torch.ones(len(TEXTS), 24), dim=-1))
        old.save(path)
        if not stale:
            assert torch.equal(embed_texts(TEXTS, str(folder), path), old.lookup(TEXTS))
            continue
        with pytest.raises(EmbeddingCacheError, match="pooled otherwise .*unrecorded.* pools lasttoken.*stale"):
            embed_texts(TEXTS, str(folder), path)
        want = TextEmbedder(str(folder))(TEXTS)
        assert torch.allclose(embed_texts(TEXTS, str(folder), path, rebuild=True), want, atol=1e-5)
        assert EmbeddingCache.read(path).identity.pooling == "lasttoken"
