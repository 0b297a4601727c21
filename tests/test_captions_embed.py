"""CLIP text embeddings of captions and their on-disk cache (tiny random CLIP, no hub)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from conftest import not_a_clip, tiny_bert
import torch

from tgmae.captions.embed import (EmbeddingCache, EmbeddingCacheError, ModelIdentity, TextEmbedder,
                                  default_cache_path, embed_texts, text_key)
from tgmae.captions.provider import CaptionProvider
from tgmae.captions.store import CaptionRecord, write_store
from tgmae.captions.tiny import save_tiny_clip

TEXTS = ["a man is jumping", "a dog runs on a field", "a red ball", "a man is jumping", "émoji-free café"]


def main(argv: list[str]) -> int:
    """`tgmae embed-captions ARGV` through the command line's error boundary (bad input: exit 2)."""
    from tgmae.cli import main as cli_main

    return cli_main(["embed-captions", *argv])



@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return str(save_tiny_clip(tmp_path_factory.mktemp("clip") / "tiny-clip", dim=16))


@pytest.fixture(scope="module")
def other_clip_dir(tmp_path_factory):
    return str(save_tiny_clip(tmp_path_factory.mktemp("clip2") / "tiny-clip", dim=12))


@pytest.fixture(scope="module")
def embedder(clip_dir):
    return TextEmbedder(clip_dir)


def test_embeddings_are_normalised_projected_clip_text_features(embedder, clip_dir):
    from transformers import AutoTokenizer, CLIPModel

    emb = embedder(TEXTS, batch_size=2)
    assert emb.shape == (5, 16) and emb.dtype == torch.float32
    assert torch.allclose(emb.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert torch.equal(emb[0], emb[3]) and not torch.allclose(emb[0], emb[1])
    # Same numbers as the full CLIPModel's get_text_features (v5: an output object, .pooler_output).
    full = CLIPModel.from_pretrained(clip_dir).eval()
    tok = AutoTokenizer.from_pretrained(clip_dir)
    with torch.no_grad():
        ref = full.get_text_features(**tok(TEXTS[:3], padding=True, return_tensors="pt")).pooler_output
    assert torch.allclose(emb[:3], torch.nn.functional.normalize(ref, dim=-1), atol=1e-5)


def test_batching_does_not_change_embeddings(embedder):
    one = embedder(TEXTS, batch_size=1)
    many = embedder(TEXTS, batch_size=64)
    assert torch.allclose(one, many, atol=1e-5)


def test_long_captions_are_truncated_to_the_context(tmp_path):
    short = TextEmbedder(str(save_tiny_clip(tmp_path / "c", context=16)))
    assert short.max_length == 16
    assert short(["a very long caption " * 20]).shape == (1, 16)


def test_cache_roundtrip_lookup_and_atomic_save(tmp_path, clip_dir):
    ident = ModelIdentity.of(clip_dir)
    path = tmp_path / "cache.safetensors"
    cache = EmbeddingCache.open(path, ident)
    assert len(cache) == 0 and cache.missing(TEXTS) == ["a man is jumping", "a dog runs on a field", "a red ball",
                                                      "émoji-free café"]
    cache.add(["a", "b"], torch.eye(2, 3))
    cache.save(path)
    assert not list(tmp_path.glob(".*tmp*"))  # temp file renamed away
    back = EmbeddingCache.open(path, ident)
    assert len(back) == 2 and "a" in back and "c" not in back
    assert torch.equal(back.lookup(["b", "a", "b"]), torch.eye(2, 3)[[1, 0, 1]])
    with pytest.raises(EmbeddingCacheError, match="not in the embedding cache: 'c'"):
        back.lookup(["c"])
    with pytest.raises(EmbeddingCacheError, match="width 4 != cached width 3"):
        back.add(["z"], torch.zeros(1, 4))
    assert len(text_key("x")) == 16


def test_kill_during_save_leaves_the_old_cache(tmp_path, clip_dir, monkeypatch):
    import safetensors.torch as st

    ident = ModelIdentity.of(clip_dir)
    path = tmp_path / "cache.safetensors"
    cache = EmbeddingCache(ident)
    cache.add(["a"], torch.ones(1, 4))
    cache.save(path)
    original = path.read_bytes()

    def dying_save(tensors, filename, metadata=None):
        from pathlib import Path

        # as safetensors' save_file does: a `.tmpXXXXXX` of its own beside the file, renamed at the end
        with open(Path(filename).parent / ".tmpAb12Cd", "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt  # killed mid-write

    monkeypatch.setattr(st, "save_file", dying_save)
    cache.add(["b"], torch.zeros(1, 4))
    with pytest.raises(KeyboardInterrupt):
        cache.save(path)
    assert path.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == ["cache.safetensors"]  # safetensors' temp is not left beside it
    monkeypatch.undo()
    assert len(EmbeddingCache.open(path, ident)) == 1


def test_a_cache_is_kept_for_its_model_under_another_name(tmp_path, clip_dir, monkeypatch):
    """Re-trial 29B M1 (the sibling of caption stores): a cache records its model by its absolute
    path, so one folder from another working directory, by a relative path or a symlink, is the
    same model; so are its files moved (one weights fingerprint): the cache is read, not refused."""
    path = tmp_path / "cache.safetensors"
    want = embed_texts(TEXTS, clip_dir, path)
    (tmp_path / "link").symlink_to(clip_dir)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    moved = shutil.copytree(clip_dir, tmp_path / "moved")
    for name in ("../link", "../link/", os.path.relpath(clip_dir), str(moved)):
        assert torch.equal(embed_texts(TEXTS, name, path), want), name
    assert EmbeddingCache.read(path).identity.model == str(Path(clip_dir).resolve())


def test_model_mismatch_is_refused_or_rebuilt(tmp_path, clip_dir, other_clip_dir):
    path = tmp_path / "cache.safetensors"
    embed_texts(TEXTS, clip_dir, path)
    with pytest.raises(EmbeddingCacheError, match="was built with .*tiny-clip.*not comparable.*--rebuild"):
        embed_texts(TEXTS, other_clip_dir, path)
    emb = embed_texts(TEXTS, other_clip_dir, path, rebuild=True)
    assert emb.shape == (5, 12)
    assert EmbeddingCache.read(path).identity == ModelIdentity.of(other_clip_dir)
    good = path.read_bytes()
    path.write_bytes(good[:-7])  # a torn cache: its header names our format, its data is short
    with pytest.raises(EmbeddingCacheError, match="damaged embedding cache .*--rebuild"):
        embed_texts(TEXTS, clip_dir, path)
    assert embed_texts(TEXTS, clip_dir, path, rebuild=True).shape == (5, 16)


@pytest.mark.parametrize("content", [b"video,label\nv1.mp4,3\n", b"", b"garbage", "torn-foreign"])
def test_a_file_that_is_not_a_cache_is_never_replaced_rebuild_or_not(tmp_path, clip_dir, capsys, content):
    """Re-trial 24A S3: `embed-captions --out synE/train.csv` said `unreadable embedding cache (...
    header too large); delete it to rebuild`, and --rebuild replaced the data set's train list. A
    file that is not a safetensors file of ours (a CSV, an empty file, a torn model's weights) is
    named as not a cache, never replaced - by the command, nor by training's captions.embedding_cache
    or its default cache path - and the message does not tell the user to delete it."""
    from safetensors.torch import save_file

    from tgmae.config import CaptionConfig
    from tgmae.errors import UserError

    caps = tmp_path / "captions.jsonl"
    write_store(caps, [CaptionRecord("v1", ["a man"], "captioner", "blip")])
    out = tmp_path / "train.csv"
    if content == "torn-foreign":
        save_file({"w": torch.ones(64)}, str(out), metadata={"format": "pt"})
        content = out.read_bytes()[:-9]
    out.write_bytes(content)
    capsys.readouterr()
    for flags in ([], ["--rebuild"]):
        assert main(["--captions", str(caps), "--clip", clip_dir, "--out", str(out), "--device", "cpu",
                     "--no-progress", *flags]) == 2
        err = capsys.readouterr().err
        assert f"{out}: not a tgmae text-embedding cache" in err and "never replaced" in err, err
        assert "--out" in err and "delete" not in err and err.count("\n") == 1, err
    for cache in (str(out), ""):
        if not cache:  # the default cache path beside the captions
            default_cache_path(caps, clip_dir).write_bytes(content)
        with pytest.raises(UserError, match="not a tgmae text-embedding cache") as e:
            CaptionProvider.from_config(CaptionConfig(file=str(caps), clip_model=clip_dir, embedding_cache=cache))
        assert "delete" not in str(e.value)
    assert out.read_bytes() == content and default_cache_path(caps, clip_dir).read_bytes() == content


def test_config_hash_ignores_versions_but_sees_architecture(clip_dir, other_clip_dir, tmp_path):
    a, b = ModelIdentity.of(clip_dir), ModelIdentity.of(other_clip_dir)
    assert a.config_hash != b.config_hash and a.model.endswith("tiny-clip")
    copy = tmp_path / "copy"
    shutil.copytree(clip_dir, copy)
    conf = json.loads((copy / "config.json").read_text())
    conf["transformers_version"] = "0.0.1"
    (copy / "config.json").write_text(json.dumps(conf))
    assert ModelIdentity.of(str(copy)).config_hash == a.config_hash


def test_embed_texts_computes_only_missing_texts(tmp_path, clip_dir, monkeypatch):
    path = tmp_path / "cache.safetensors"
    first = embed_texts(TEXTS[:2], clip_dir, path)
    calls = []
    real_call = TextEmbedder.__call__

    def counting(self, texts, **kw):
        calls.append(list(texts))
        return real_call(self, texts, **kw)

    monkeypatch.setattr(TextEmbedder, "__call__", counting)
    both = embed_texts(TEXTS, clip_dir, path)
    assert calls == [["a red ball", "émoji-free café"]]
    assert torch.equal(both[:2], first)
    embed_texts(TEXTS, clip_dir, path)
    assert len(calls) == 1  # everything cached: the model is not even loaded
    assert torch.allclose(both, embed_texts(TEXTS, clip_dir, tmp_path / "fresh.safetensors"), atol=1e-5)


def test_cli_and_provider_share_the_cache(tmp_path, clip_dir, capsys):
    caps = tmp_path / "captions.jsonl"
    write_store(caps, [CaptionRecord("v1", ["a man", "a dog"], "captioner", "blip"),
                       CaptionRecord("v2", ["a dog"], "captioner", "blip")])
    out = tmp_path / "emb.safetensors"
    assert main(["--captions", str(caps), "--clip", clip_dir, "--out", str(out), "--device", "cpu",
                 "--no-progress"]) == 0
    assert "2 distinct captions of 2 videos" in capsys.readouterr().out
    prov = CaptionProvider.from_files(caps, clip_dir, str(out))
    assert prov.embeddings.shape == (2, 16)
    cid, emb = prov.draw("v2", torch.Generator().manual_seed(0))
    assert prov.texts[cid] == "a dog" and torch.equal(emb, EmbeddingCache.read(out).lookup(["a dog"])[0])
    default = CaptionProvider.from_files(caps, clip_dir)  # cache next to the captions file
    assert default_cache_path(caps, clip_dir).exists() and torch.equal(default.embeddings, prov.embeddings)
    assert main(["--captions", str(tmp_path / "none.jsonl"), "--clip", clip_dir]) == 2
    assert "caption file not found" in capsys.readouterr().err


def test_unavailable_clip_gives_instructions_not_a_trace(tmp_path, monkeypatch, capsys):
    caps = tmp_path / "captions.jsonl"
    write_store(caps, [CaptionRecord("v1", ["a man"], "captioner", "blip")])
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main(["--captions", str(caps), "--clip", "no-such-org/no-such-clip"]) == 2
    err = capsys.readouterr().err
    assert "'no-such-org/no-such-clip'" in err and "huggingface-cli download no-such-org/no-such-clip" in err
    assert "HF_HOME" in err and "Traceback" not in err


def test_text_only_checkpoint_and_other_clip_families(tmp_path, clip_dir):
    """A saved CLIPTextModelWithProjection, and a non-CLIP model with get_text_features (ChineseCLIP)."""
    from transformers import (AutoConfig, AutoTokenizer, BertTokenizer, ChineseCLIPConfig, ChineseCLIPModel,
                              CLIPTextModelWithProjection)

    from tgmae.captions.tiny import TINY_WORDS

    cfg = AutoConfig.from_pretrained(clip_dir)
    cfg.text_config.projection_dim = cfg.projection_dim
    text_only = tmp_path / "text-only"
    CLIPTextModelWithProjection.from_pretrained(clip_dir, config=cfg.text_config).save_pretrained(text_only)
    AutoTokenizer.from_pretrained(clip_dir).save_pretrained(text_only)
    assert torch.allclose(TextEmbedder(str(text_only))(TEXTS), TextEmbedder(clip_dir)(TEXTS), atol=1e-5)

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(TINY_WORDS)])}
    other = tmp_path / "chinese-clip"
    torch.manual_seed(0)
    model = ChineseCLIPModel(ChineseCLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=40, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=8)).eval()
    model.save_pretrained(other)
    tok = BertTokenizer(vocab=vocab)
    tok.save_pretrained(other)
    emb = TextEmbedder(str(other))(TEXTS[:3])
    with torch.no_grad():
        ref = model.get_text_features(**tok(TEXTS[:3], padding=True, return_tensors="pt"))
    ref = ref if isinstance(ref, torch.Tensor) else ref.pooler_output
    assert emb.shape == (3, 8) and torch.allclose(emb, torch.nn.functional.normalize(ref, dim=-1), atol=1e-5)


def test_new_weights_in_the_same_folder_are_embedded_again(tmp_path):
    """Weights written over a CLIP folder: the default cache is a new file (fresh embeddings), an
    explicit cache path is refused as stale (or rebuilt) - never the old model's embeddings."""
    from tgmae.captions.embed import default_cache_path
    from tgmae.captions.provider import CaptionProvider

    caps = tmp_path / "captions.jsonl"
    write_store(caps, [CaptionRecord(f"v{i}", [t], "captioner", "blip") for i, t in enumerate(TEXTS)])
    clip = str(save_tiny_clip(tmp_path / "clip", dim=16, seed=0))
    old = CaptionProvider.from_files(caps, clip).embeddings
    explicit = tmp_path / "explicit.safetensors"
    embed_texts(TEXTS, clip, explicit)
    first_default = default_cache_path(caps, clip)

    save_tiny_clip(tmp_path / "clip", dim=16, seed=1)  # retrained: same folder, same config
    want = TextEmbedder(clip)(list(CaptionProvider.from_files(caps).texts))
    assert default_cache_path(caps, clip) != first_default
    new = CaptionProvider.from_files(caps, clip).embeddings  # training's automatic fill-in
    assert torch.allclose(new, want, atol=1e-5) and (new - old).abs().max() > 0.05
    with pytest.raises(EmbeddingCacheError, match="other weights of .*stale.*--rebuild"):
        embed_texts(TEXTS, clip, explicit)
    assert torch.allclose(embed_texts(TEXTS, clip, explicit, rebuild=True), TextEmbedder(clip)(TEXTS), atol=1e-5)


def test_a_plain_text_model_is_a_mean_pooled_sentence_encoder(tmp_path):
    """captions.text_model may be any transformers text model: its last hidden states are pooled
    over the real tokens (padding left out), as a sentence-transformers folder says (mean by default)."""
    texts = ["a man is jumping", "a dog", "a red ball on the street"]
    model, tok = tiny_bert(tmp_path / "bert")
    emb = TextEmbedder(str(tmp_path / "bert"))(texts)
    with torch.no_grad():
        for i, t in enumerate(texts):  # one text at a time: no padding at all
            ref = model(**tok([t], return_tensors="pt")).last_hidden_state[0].mean(0)
            assert torch.allclose(emb[i], torch.nn.functional.normalize(ref, dim=0), atol=1e-5)
    cls_model, cls_tok = tiny_bert(tmp_path / "st", pooling="cls")
    with torch.no_grad():
        ref = cls_model(**cls_tok(texts[:1], return_tensors="pt")).last_hidden_state[0, 0]
    assert torch.allclose(TextEmbedder(str(tmp_path / "st"))(texts[:1])[0],
                          torch.nn.functional.normalize(ref, dim=0), atol=1e-5)


def test_captions_text_model_gives_the_contrastive_targets(tmp_path, clip_dir):
    """captions.text_model replaces captions.clip_model's text tower for the targets; its cache is
    keyed by its weights (new weights in the same folder embed again)."""
    from tgmae.config import CaptionConfig

    caps = tmp_path / "captions.jsonl"
    write_store(caps, [CaptionRecord(f"v{i}", [t], "captioner", "blip") for i, t in enumerate(TEXTS)])
    tiny_bert(tmp_path / "bert", seed=0)
    cfg = CaptionConfig(file=str(caps), clip_model=clip_dir, text_model=str(tmp_path / "bert"))
    assert cfg.target_model == str(tmp_path / "bert")
    provider = CaptionProvider.from_config(cfg)
    assert provider.embeddings.shape == (4, 24)  # BERT width, not the CLIP's projection (16)
    assert torch.allclose(provider.embeddings, TextEmbedder(str(tmp_path / "bert"))(provider.texts), atol=1e-5)
    assert CaptionProvider.from_config(CaptionConfig(file=str(caps), clip_model=clip_dir)).embeddings.shape == (4, 16)
    tiny_bert(tmp_path / "bert", seed=1)  # retrained in place
    again = CaptionProvider.from_config(cfg).embeddings
    assert (again - provider.embeddings).abs().max() > 0.05


def test_word_encoder_keeps_the_words_apart(tmp_path):
    """The study's `text_model: words`: a random word-level encoder over the corpus, loaded and
    mean-pooled by TextEmbedder; texts differing in one word differ, unseen words are [UNK]."""
    from transformers import AutoTokenizer

    from tgmae.captions.tiny import save_word_encoder

    path = save_word_encoder(tmp_path / "words", ["a red circle slides left.", "a blue star slides right"], width=32)
    emb = TextEmbedder(str(path))(["a red circle slides left", "a red circle slides right", "a red circle slides left"])
    assert emb.shape == (3, 32) and torch.allclose(emb[0], emb[2]) and float(emb[0] @ emb[1]) < 0.999
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.convert_ids_to_tokens(tok("slides LEFT. upward")["input_ids"])[1:-1] == ["slides", "left", ".", "[UNK]"]


def test_an_existing_folder_as_out_is_refused_not_called_an_unreadable_cache(tmp_path, clip_dir, capsys):
    """`embed-captions --out EXISTING_FOLDER` said `unreadable embedding cache (No such device (os
    error 19)); delete it to rebuild`: advice to delete the user's folder."""
    from tgmae.cli import main as cli_main

    caps = tmp_path / "captions.jsonl"
    write_store(caps, [CaptionRecord("v1", ["a man"], "captioner", "blip")])
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "keep.txt").write_text("mine")
    assert cli_main(["embed-captions", "--captions", str(caps), "--clip", clip_dir, "--out", str(folder),
                     "--device", "cpu", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert f"{folder} (--out) is a folder, not a file" in err and "delete" not in err and err.count("\n") == 1, err
    with pytest.raises(EmbeddingCacheError, match="is a folder, not an embedding cache file") as e:
        EmbeddingCache.open(folder, ModelIdentity.of(clip_dir))
    assert "delete" not in str(e.value)
    assert (folder / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("kind", ["empty", "videomae", "run"])
def test_a_folder_that_is_not_a_text_model_is_one_line_naming_it_and_the_key(tmp_path, kind, capsys):
    """issue 28: --clip W/hf1 (a VideoMAE export) ended in "ValueError ... sentencepiece or tiktoken",
    an empty folder or a run folder in "ValueError: Unrecognized model ... model_type" tracebacks."""
    from tgmae.config import CaptionConfig
    from tgmae.errors import UserError

    caps = tmp_path / "captions.jsonl"
    write_store(caps, [CaptionRecord("v1", ["a man"], "captioner", "blip")])
    bad = not_a_clip(tmp_path, kind)
    capsys.readouterr()
    assert main(["--captions", str(caps), "--clip", bad, "--out", str(tmp_path / "e.safetensors")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and bad in err[0] and "--clip" in err[0], err
    for key in ("clip_model", "text_model"):
        with pytest.raises(UserError) as e:
            CaptionProvider.from_config(CaptionConfig(file=str(caps), **{key: bad}))
        assert bad in str(e.value) and f"captions.{key}" in str(e.value) and "\n" not in str(e.value)


def test_out_never_replaces_the_captions_read_or_another_safetensors_file(tmp_path, clip_dir, capsys):
    """issue 28: `embed-captions --out` = its own --captions (with --rebuild) replaced the caption
    store with the cache, and --rebuild replaced any safetensors file that is not a cache (the
    CLIP's model.safetensors, a run's weights). Now one line naming the file, exit 2, the file
    unchanged; a torn cache of ours is still started anew with --rebuild."""
    from safetensors.torch import load_file, save_file

    from tgmae.cli import main as cli_main

    caps = tmp_path / "captions.jsonl"
    write_store(caps, [CaptionRecord("v1", ["a man"], "captioner", "blip")])
    before = caps.read_bytes()
    weights = tmp_path / "model.safetensors"
    save_file({"w": torch.ones(2)}, str(weights), metadata={"format": "pt"})
    args = ["embed-captions", "--captions", str(caps), "--clip", clip_dir, "--device", "cpu", "--no-progress"]
    for out, flags in ((caps, []), (caps, ["--rebuild"]), (weights, ["--rebuild"])):
        assert cli_main([*args, "--out", str(out), *flags]) == 2, out
        err = capsys.readouterr().err
        assert str(out) in err and err.count("\n") == 1, (out, err)
    assert caps.read_bytes() == before and torch.equal(load_file(str(weights))["w"], torch.ones(2))


def test_a_blip_captioner_is_refused_as_the_text_model_naming_the_flag(tmp_path, capsys):
    """Issue 28 (re-trial 18, B3): `embed-captions --clip <a BLIP captioner>` was accepted: transformers
    built a BlipModel whose text encoder and projection the captioner's checkpoint lacks, so the cache
    held embeddings of random weights. One line naming --clip and the model's kind, nothing written;
    the same for captions.text_model / clip_model."""
    from tgmae.captions.tiny import save_tiny_blip
    from tgmae.config import CaptionConfig
    from tgmae.errors import UserError

    blip = str(save_tiny_blip(tmp_path / "tiny-blip"))
    caps = tmp_path / "captions.jsonl"
    write_store(caps, [CaptionRecord("v1", ["a man"], "captioner", "blip")])
    out = tmp_path / "e.safetensors"
    capsys.readouterr()
    assert main(["--captions", str(caps), "--clip", blip, "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tgmae")]
    assert len(err) == 1 and blip in err[0] and "--clip" in err[0] and "BlipForConditionalGeneration" in err[0], err
    assert not out.exists()
    for key in ("clip_model", "text_model"):
        with pytest.raises(UserError) as e:
            CaptionProvider.from_config(CaptionConfig(file=str(caps), **{key: blip}))
        assert blip in str(e.value) and f"captions.{key}" in str(e.value) and "\n" not in str(e.value)
