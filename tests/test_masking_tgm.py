"""Text-guided masking: CLIP patch features (faithful, dense), the similarity cache written by
`tgmae masks` (resume, sharding, manifest checks, bad input) and the TGM generators."""

from __future__ import annotations

import dataclasses

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import not_a_clip
import torch
import torch.nn.functional as F

from tgmae.mask_contract import CropParams, MaskContext, num_masked
from tgmae.masking.cache import CacheMismatchError, MissingCacheEntry, SimilarityCache
from tgmae.clip.features import ClipPatchScorer, cosine_maps, embed_texts, load_clip, map_grid
from tgmae.masking.resample import full_frame_crop
from tgmae.masking.select import topk_iou
from tgmae.masking.tgm import BatchTGMMask, CachedTGMMask, OnlineTGMMask

TINY = dict(image_size=32, patch_size=8, width=32, layers=2, heads=2, text_width=32, text_layers=1,
            text_heads=2, embed_dim=16, vocab_size=300)



@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tgmae.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synth_tgm")
    generate_synthetic_dataset(root, num_videos=5, frames=16, size=128, seed=1, val_fraction=0.4)
    return root


@pytest.fixture(scope="module")
def tiny_clip(synth, tmp_path_factory):
    """A randomly initialized tiny CLIP saved like a public one (model, tokenizer, processor)."""
    from tgmae.captions.store import read_store
    from tgmae.study.clip.tokenizer import train_clip_tokenizer
    from tgmae.study.clip.train import ClipTrainConfig, build_clip_model, save_clip

    cfg = ClipTrainConfig(**TINY)
    texts = [c for r in read_store(synth / "captions.jsonl").records for c in r.captions]
    tok = train_clip_tokenizer(texts, cfg.vocab_size, cfg.context)
    model = build_clip_model(cfg, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    out = tmp_path_factory.mktemp("clip")
    save_clip(out, model, tok, cfg.image_size)
    return str(out)


def masks_main(argv: list[str]) -> int:
    """`tgmae masks ARGV` through the command line's error boundary (bad input: exit 2)."""
    from tgmae.cli import main

    return main(["masks", *argv])


@pytest.fixture(scope="module")
def bundle(tiny_clip):
    return load_clip(tiny_clip)


def run_masks(synth, clip, out, *extra) -> int:
    return masks_main(["--format", "csv", "--root", str(synth), str(synth / "annotations.csv"),
                 "--captions", str(synth / "captions.jsonl"), "--clip", clip, "--out", str(out),
                 "--image-size", "128", "--no-progress", *extra])


def test_clip_directory_loads_like_a_public_clip(tiny_clip, bundle):
    from transformers import AutoProcessor, AutoTokenizer, CLIPModel

    assert isinstance(CLIPModel.from_pretrained(tiny_clip), CLIPModel)
    proc = AutoProcessor.from_pretrained(tiny_clip)
    px = proc(images=np.zeros((50, 70, 3), np.uint8), return_tensors="pt")["pixel_values"]
    assert px.shape == (1, 3, 32, 32)
    tok = AutoTokenizer.from_pretrained(tiny_clip)
    ids = tok(["a red circle"])["input_ids"][0]
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and tok.unk_token_id not in ids[1:-1]
    emb = embed_texts(bundle, ["a red circle", "a blue square moves up"])
    assert emb.shape == (2, 16) and torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="empty caption"):
        embed_texts(bundle, ["a red circle", "  "])
    # the same vectors as the captions package's text embedder (what the Dataset hands out)
    from tgmae.captions.embed import TextEmbedder

    texts = ["a red circle", "on a striped background a blue star rotates clockwise"]
    assert torch.allclose(TextEmbedder(tiny_clip)(texts), embed_texts(bundle, texts), atol=1e-5)


def test_faithful_feature_is_the_cls_embedding_of_the_resized_patch(bundle):
    frames = torch.rand(2, 3, 64, 48)
    feats = ClipPatchScorer(bundle, "faithful").features(frames, (4, 3), patch_size=16)
    assert feats.shape == (2, 4, 3, 16)
    patch = frames[1:, :, 16:32, 32:48]  # frame 1, row 1, column 2
    px = F.interpolate(patch, size=(32, 32), mode="bicubic", align_corners=False).clamp(0, 1)
    mean, std = torch.tensor(bundle.image_mean).view(1, 3, 1, 1), torch.tensor(bundle.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = bundle.model.get_image_features(pixel_values=(px - mean) / std).pooler_output
    assert torch.allclose(feats[1, 1, 2], F.normalize(ref, dim=-1)[0], atol=1e-5)


def test_dense_features_use_the_last_blocks_value_path(bundle):
    scorer = ClipPatchScorer(bundle, "dense")
    vision = bundle.model.vision_model
    frames = torch.rand(2, 3, 40, 56)
    x = (F.interpolate(frames, size=(40, 56), mode="bicubic", align_corners=False).clamp(0, 1)
         - torch.tensor(bundle.image_mean).view(1, 3, 1, 1)) / torch.tensor(bundle.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        # the manual layer loop reproduces the model's own forward ...
        hidden = vision.pre_layrnorm(vision.embeddings(x, interpolate_pos_encoding=True))
        for layer in vision.encoder.layers:
            hidden = layer(hidden, None)
        ref = vision(pixel_values=x, interpolate_pos_encoding=True).last_hidden_state
        assert torch.allclose(hidden, ref, atol=1e-5)
        # ... and the dense features are value -> out_proj -> post-LN -> projection of its input
        tokens = scorer._maskclip_tokens(vision, x)
    assert tokens.shape == (2, 5 * 7, 16)
    feats = scorer.dense_features(frames, (5, 7))  # grid == CLIP's own 8 px token grid at 40 x 56
    assert feats.shape == (2, 5, 7, 16)
    assert torch.allclose(feats.reshape(2, 35, 16), F.normalize(tokens, dim=-1), atol=1e-4)
    assert scorer.dense_size_for((14, 14)) == 14 * 8


def test_masks_command_writes_a_cache_resumes_and_shards(synth, tiny_clip, tmp_path, caplog):
    out = tmp_path / "cache"
    assert run_masks(synth, tiny_clip, out, "--mode", "dense", "--frame-stride", "4") == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["mode"] == "dense" and manifest["caption_source"] == "source=synthetic,model=template"
    cache = SimilarityCache(out)
    assert len(cache) == 5
    e = cache.entry("synth_00000")
    assert e.sim.shape == (3, 4, 8, 8) and e.frames.tolist() == [0, 4, 8, 12] and len(e.captions) == 3
    # resume: nothing recomputed, same maps
    before = (out / "maps" / "synth_00000.npz").stat().st_mtime_ns
    assert run_masks(synth, tiny_clip, out, "--mode", "dense", "--frame-stride", "4") == 0
    assert (out / "maps" / "synth_00000.npz").stat().st_mtime_ns == before
    # two shards (as torchrun ranks would run them) give the same cache after the merge
    from tgmae.masking.cache import merge_parts
    from tgmae.masking.precompute import PrecomputeOptions, precompute

    sharded = tmp_path / "sharded"
    videos = [(f"synth_{i:05d}", str(synth / "videos" / f"synth_{i:05d}.mp4")) for i in range(5)]
    opts = PrecomputeOptions(mode="dense", frame_stride=4, image_size=128)
    clip = load_clip(tiny_clip)
    counts = [precompute(videos, str(synth / "captions.jsonl"), clip, sharded, opts, rank=r, world=2, progress=False)
              for r in (0, 1)]
    assert [c["done"] for c in counts] == [3, 2]
    assert sorted((sharded / "parts").iterdir())[0].name == "rank0-of-2.jsonl"
    index = merge_parts(sharded)
    assert sorted(index["videos"]) == sorted(cache.videos)
    a, b = SimilarityCache(sharded).entry("synth_00003"), cache.entry("synth_00003")
    assert torch.allclose(a.sim, b.sim, atol=1e-3)


def test_a_second_writer_of_a_similarity_cache_is_refused_naming_the_first(tmp_path):
    """issue 28: only `tgmae masks` locked the cache; the study, `tgmae eval-masks` and `tgmae
    visualize masks` wrote it through `precompute` without a lock, so two writers interleaved
    their part files and maps. `precompute` takes the lock first thing (its rank's under torchrun)."""
    from test_locks import _holder
    from tgmae.locks import LockError
    from tgmae.masking.precompute import PrecomputeOptions, precompute

    out = tmp_path / "cache"
    proc = _holder(out, tmp_path)
    try:
        with pytest.raises(LockError) as e:
            precompute([("v", "v.mp4")], "captions.jsonl", None, out, PrecomputeOptions(), progress=False)
        assert f"pid {proc.pid}" in str(e.value) and "similarity cache" in str(e.value) and str(out) in str(e.value)
    finally:
        proc.kill()
        proc.wait()
    assert not out.exists()  # refused before writing anything


def test_cache_mismatch_is_refused(synth, tiny_clip, tmp_path, capsys):
    out = tmp_path / "cache"
    assert run_masks(synth, tiny_clip, out, "--mode", "dense", "--frame-stride", "8") == 0
    assert run_masks(synth, tiny_clip, out, "--mode", "faithful", "--frame-stride", "8") == 2
    assert "mode: cache has 'dense', requested 'faithful'" in capsys.readouterr().err
    other = tmp_path / "captions_other.jsonl"
    lines = (synth / "captions.jsonl").read_text().splitlines()
    other.write_text("\n".join(l.replace('"model": "template"', '"model": "blip"') for l in lines) + "\n")
    rc = masks_main(["--format", "csv", "--root", str(synth), str(synth / "annotations.csv"), "--captions", str(other),
               "--clip", tiny_clip, "--out", str(out), "--image-size", "128", "--frame-stride", "8", "--no-progress"])
    assert rc == 2 and "caption_source" in capsys.readouterr().err
    # at training time: another CLIP or another caption source
    with pytest.raises(CacheMismatchError, match="built with CLIP"):
        SimilarityCache(out, expect_clip="openai/clip-vit-base-patch32")
    with pytest.raises(CacheMismatchError, match="captions"):
        SimilarityCache(out, expect_caption_source="source=captioner,model=blip")
    SimilarityCache(out, expect_clip=tiny_clip, expect_caption_source="source=synthetic,model=template")


def test_missing_and_empty_captions(synth, tiny_clip, tmp_path, caplog, capsys):
    lines = (synth / "captions.jsonl").read_text().splitlines()
    missing = tmp_path / "missing.jsonl"
    missing.write_text("\n".join(lines[1:]) + "\n")  # no captions for synth_00000
    args = ["--format", "csv", "--root", str(synth), str(synth / "annotations.csv"), "--clip", tiny_clip,
            "--image-size", "128", "--frame-stride", "8", "--no-progress"]
    with caplog.at_level("WARNING"):
        assert masks_main([*args, "--captions", str(missing), "--out", str(tmp_path / "c1")]) == 0
    assert any("no captions for video 'synth_00000'" in r.message for r in caplog.records)
    cache = SimilarityCache(tmp_path / "c1")
    with pytest.raises(MissingCacheEntry, match="synth_00000.*no captions"):
        cache.entry("synth_00000")
    with pytest.raises(MissingCacheEntry, match="not in the annotations"):
        cache.entry("some_other_video")
    empty = tmp_path / "empty.jsonl"
    rec = json.loads(lines[0])
    rec["captions"][1] = "   "
    empty.write_text("\n".join([json.dumps(rec), *lines[1:]]) + "\n")
    assert masks_main([*args, "--captions", str(empty), "--out", str(tmp_path / "c2")]) == 2
    assert "caption 1 is empty" in capsys.readouterr().err


@pytest.fixture(scope="module")
def dense_cache(synth, tiny_clip, tmp_path_factory):
    out = tmp_path_factory.mktemp("dense_cache")
    assert run_masks(synth, tiny_clip, out, "--mode", "dense", "--frame-stride", "2") == 0
    return out


def ctx_of(entry, crop=None, text=None, frames=None, caption=None):
    ctx = MaskContext(grid=(4, 8, 8), frames=frames, frame_indices=torch.arange(0, 16, 2),
                      crop=crop or full_frame_crop(128, 128), video_id="synth_00001", text_embedding=text)
    if caption is not None:
        ctx.caption = caption
    return ctx


def assert_topk_of(mask: torch.Tensor, scores: torch.Tensor, k: int, atol: float = 1e-4) -> None:
    """mask [T, M] bool holds k tokens per row that are a top-k of scores [T, M] up to `atol`:
    no unselected token beats a selected one by more than atol. Which of (nearly) tied tokens is
    chosen is free, so the check does not depend on tie-breaking or thread-count float noise."""
    mask, scores = mask.reshape(scores.shape), scores.float()
    assert (mask.sum(1) == k).all()
    lowest_in = torch.where(mask, scores, torch.inf).amin(1)
    highest_out = torch.where(mask, -torch.inf, scores).amax(1)
    assert (highest_out <= lowest_in + atol).all(), (highest_out - lowest_in).max()


def test_topk_check_ignores_ties_but_not_wrong_picks():
    scores = torch.tensor([[0.1, 0.5, 0.5, 0.9]])
    assert_topk_of(torch.tensor([[False, True, False, True]]), scores, 2)
    assert_topk_of(torch.tensor([[False, False, True, True]]), scores, 2)  # the other of a tie
    with pytest.raises(AssertionError):
        assert_topk_of(torch.tensor([[True, False, False, True]]), scores, 2)


def test_cached_tgm_masks_with_the_drawn_caption(dense_cache):
    # The cache stores fp16 maps, so tokens often tie exactly and resampled values nearly tie:
    # every check accepts any top-k (assert_topk_of), never one particular tie-break.
    gen = CachedTGMMask(dense_cache, ratio=0.6)
    entry = gen.cache.entry("synth_00001")
    k = num_masked(64, 0.6)
    for c in range(3):
        m = gen(ctx_of(entry, text=entry.text[c] * 3.0), torch.Generator().manual_seed(0))  # scale-free match
        ref = entry.sim[c, [0, 2, 4, 6]].reshape(4, 64)  # tubelets start at frames 0, 4, 8, 12
        assert_topk_of(m.view(4, 64), ref, k)
        by_text = gen(ctx_of(entry, caption=entry.captions[c]), torch.Generator().manual_seed(0))
        assert torch.equal(by_text, m)  # the same map, the same generator: the same draw
    mean = CachedTGMMask(dense_cache, ratio=0.6, caption="mean")(ctx_of(entry), torch.Generator().manual_seed(0))
    assert_topk_of(mean.view(4, 64), entry.sim.float().mean(0)[[0, 2, 4, 6]].reshape(4, 64), k)
    scores = gen.scores(ctx_of(entry, text=entry.text[0])).reshape(4, 64)
    bottom = CachedTGMMask(dense_cache, ratio=0.4, select="bottom")(ctx_of(entry, text=entry.text[0]), torch.Generator())
    assert_topk_of(bottom.view(4, 64), -scores, num_masked(64, 0.4), atol=0.0)  # the bottom 40%


def test_cached_tgm_bad_input(dense_cache):
    gen = CachedTGMMask(dense_cache, ratio=0.6)
    entry = gen.cache.entry("synth_00001")
    with pytest.raises(ValueError, match="no text embedding"):
        gen(ctx_of(entry), torch.Generator())
    with pytest.raises(ValueError, match="dims"):
        gen(ctx_of(entry, text=torch.randn(7)), torch.Generator())
    unrelated = torch.linalg.svd(entry.text, full_matrices=True).Vh[-1]  # orthogonal to all captions
    with pytest.raises(ValueError, match="matches none"):
        gen(ctx_of(entry, text=unrelated), torch.Generator())
    with pytest.raises(ValueError, match="not among"):
        gen(ctx_of(entry, caption="a purple elephant dances"), torch.Generator())
    ctx = ctx_of(entry, text=entry.text[0])
    ctx.crop = None
    with pytest.raises(ValueError, match="crop"):
        gen(ctx, torch.Generator())


def test_cached_tgm_follows_crop_and_flip_and_reads_each_video_once(dense_cache, monkeypatch):
    gen = CachedTGMMask(dense_cache, ratio=0.6)
    entry = gen.cache.entry("synth_00001")
    plain = gen.scores(ctx_of(entry, text=entry.text[0]))
    flipped = gen.scores(ctx_of(entry, full_frame_crop(128, 128, flip=True), text=entry.text[0]))
    assert torch.allclose(flipped, plain.flip(-1), atol=1e-5)
    # top-right quarter zoomed 2x: each cell's token pair sits at -1/4 and +1/4 cell around its
    # centre, so bilinear sampling + 2x2 averaging = the cell map smoothed by [1/8, 3/4, 1/8]
    # (checked away from the border-clamped edges)
    crop = CropParams(0.0, 64.0, 64.0, 64.0, False, 128, 128)
    zoom = gen.scores(ctx_of(entry, crop, text=entry.text[0]))
    k = torch.tensor([0.125, 0.75, 0.125])
    smoothed = F.conv2d(plain[:, None], torch.outer(k, k)[None, None])[:, 0]  # centre (i+1, j+1)
    assert torch.allclose(F.avg_pool2d(zoom[:, None], 2)[:, 0, 1:, :3], smoothed[:, 0:3, 3:6], atol=1e-5)
    # after the first read, masks come from memory: no file is opened again, and each has the count
    ctx = ctx_of(entry, text=entry.text[0])
    reads = []
    load = np.load
    monkeypatch.setattr(np, "load", lambda *a, **k: reads.append(a[0]) or load(*a, **k))
    masks = [gen(ctx, torch.Generator().manual_seed(i)) for i in range(50)]
    assert reads == []
    assert all(int(m.sum()) == gen.masked_count(ctx.grid, 0.6) for m in masks)


def test_online_and_batch_tgm_agree_with_the_cache(synth, bundle, dense_cache):
    from tgmae.data.video import read_frames

    frames = torch.from_numpy(read_frames(synth / "videos" / "synth_00001.mp4", list(range(0, 16, 2))))
    unit = frames.permute(3, 0, 1, 2).float() / 255  # [C, T, H, W]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    video = (unit - torch.tensor(mean).view(3, 1, 1, 1)) / torch.tensor(std).view(3, 1, 1, 1)
    cached = CachedTGMMask(dense_cache, ratio=0.6)
    entry = cached.cache.entry("synth_00001")
    ctx = ctx_of(entry, text=entry.text[0], frames=video)
    online = OnlineTGMMask(ClipPatchScorer(bundle, "dense"), ratio=0.6)
    s_online, s_cached = online.scores(ctx), cached.scores(ctx)
    assert topk_iou(s_online.reshape(4, 64), s_cached.reshape(4, 64), 0.6) > 0.9
    batch = BatchTGMMask(ClipPatchScorer(bundle, "dense"), ratio=0.6)
    b = batch(torch.stack([video, video.flip(-1)]), entry.text[:1].expand(2, -1), (4, 8, 8))
    assert b.shape == (2, 256) and b.dtype == torch.bool
    # batched and single CLIP passes differ by float noise: the batch's masks are a top-k of the
    # online scores up to that noise (not one particular tie-break)
    k = num_masked(64, 0.6)
    assert_topk_of(b[0].view(4, 64), s_online.reshape(4, 64), k)
    s_flipped = online.scores(ctx_of(entry, text=entry.text[0], frames=video.flip(-1)))
    assert_topk_of(b[1].view(4, 64), s_flipped.reshape(4, 64), k)
    with pytest.raises(ValueError, match="dims"):
        online(ctx_of(entry, text=torch.randn(5), frames=video), torch.Generator())
    with pytest.raises(ValueError, match="no text embedding"):
        online(ctx_of(entry, frames=video), torch.Generator())


def test_faithful_and_dense_maps_are_comparable(synth, bundle):
    from tgmae.data.video import read_frames

    x = torch.from_numpy(read_frames(synth / "videos" / "synth_00002.mp4", [0, 8])).permute(0, 3, 1, 2).float() / 255
    text = embed_texts(bundle, ["a video of a shape"])
    grid = map_grid(128, 128, 128, 16)
    faithful = cosine_maps(ClipPatchScorer(bundle, "faithful").features(x, grid, 16), text)[0]
    dense = cosine_maps(ClipPatchScorer(bundle, "dense").features(x, grid), text)[0]
    assert faithful.shape == dense.shape == (2, 8, 8)
    assert 0.0 <= topk_iou(faithful.flatten(1), dense.flatten(1), 0.6) <= 1.0
    assert faithful.abs().max() <= 1.0 + 1e-5 and dense.abs().max() <= 1.0 + 1e-5


def test_factory_builds_tgm_and_mgm(dense_cache, tiny_clip, synth):
    from tgmae.config import MaskingConfig
    from tgmae.masking import MotionGuidedMask, build_mask_generator

    gen = build_mask_generator(MaskingConfig(name="tgm", ratio=0.6, cache_dir=str(dense_cache)),
                               captions_file=str(synth / "captions.jsonl"))
    assert isinstance(gen, CachedTGMMask) and gen.ratio == 0.6
    assert isinstance(build_mask_generator(MaskingConfig(name="mgm", ratio=0.75)), MotionGuidedMask)
    cfg = MaskingConfig(name="tgm", ratio=0.6)
    cfg.clip_model = tiny_clip  # field requested from the lead; set directly until it exists
    assert isinstance(build_mask_generator(cfg), OnlineTGMMask)


def test_unreadable_video_is_skipped_with_its_reason(tiny_clip, tmp_path, caplog):
    from tgmae.masking.precompute import PrecomputeOptions, precompute

    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"")
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"video_id": "bad", "captions": ["a red circle"], "source": "s", "model": "m"}) + "\n")
    with caplog.at_level("WARNING"):
        counts = precompute([("bad", str(bad))], str(captions), load_clip(tiny_clip), tmp_path / "c",
                            PrecomputeOptions(image_size=128), progress=False)
    assert counts == {"done": 0, "skipped": 1, "resumed": 0}
    assert any("unreadable video" in r.message for r in caplog.records)
    with pytest.raises(MissingCacheEntry, match="unreadable video"):
        SimilarityCache(tmp_path / "c").entry("bad")


def test_generators_inside_the_training_dataset(synth, tiny_clip, dense_cache, tmp_path):
    """The real Dataset (crop/flip augmentation, caption drawn by the provider and embedded by
    the captions package, codec motion) drives the cached TGM and MGM generators."""
    from tgmae.captions.provider import CaptionProvider
    from tgmae.config import DataConfig
    from tgmae.data.formats import load_annotations
    from tgmae.data.dataset import VideoDataset
    from tgmae.masking.mgm import MotionGuidedMask

    records, _ = load_annotations("csv", synth, "annotations.csv")
    cfg = DataConfig(root=str(synth), num_frames=8, frame_stride=2, image_size=128, with_motion=True,
                     crop_scales=(1.0, 0.75))
    provider = CaptionProvider.from_files(synth / "captions.jsonl", clip_model=tiny_clip,
                                          embedding_cache=str(tmp_path / "emb.safetensors"))
    k = num_masked(64, 0.6)
    for gen in (CachedTGMMask(dense_cache, ratio=0.6), MotionGuidedMask(0.6)):
        ds = VideoDataset(records, cfg, train=True, token_grid=(4, 8, 8), mask_generator=gen,
                          captions=provider, seed=0)
        for i in range(3):
            sample = ds[i]
            assert sample["mask"].shape == (256,) and (sample["mask"].view(4, 64).sum(1) == k).all()
        assert torch.equal(ds[1]["mask"], ds[1]["mask"])  # deterministic per (seed, epoch, index)
        # k = 3 views of one decode: each view masked on its own crop (view 0 = the k = 1 sample)
        views = VideoDataset(records, dataclasses.replace(cfg, num_sample=3), train=True, token_grid=(4, 8, 8),
                             mask_generator=gen, captions=provider, seed=0)
        for i in range(3):
            sample = views[i]
            assert torch.equal(sample["mask"][0], ds[i]["mask"])
            assert all((m.view(4, 64).sum(1) == k).all() for m in sample["mask"])
            crops = {tuple(c.tolist()) for c in sample["crop"]}
            masks = {tuple(m.tolist()) for m in sample["mask"]}
            assert len(masks) > 1 or len(crops) == 1  # other crops, other masks


def test_factory_online_tgm_undoes_the_runs_data_normalization(tiny_clip):
    from tgmae.config import MaskingConfig
    from tgmae.masking import OnlineTGMMask, build_mask_generator

    cfg = MaskingConfig(name="tgm", ratio=0.6, clip_model=str(tiny_clip))
    gen = build_mask_generator(cfg, data_mean=(0.5, 0.5, 0.5), data_std=(0.25, 0.25, 0.25))
    assert isinstance(gen, OnlineTGMMask)
    assert gen.data_mean == (0.5, 0.5, 0.5) and gen.data_std == (0.25, 0.25, 0.25)
    default = build_mask_generator(cfg)
    assert default.data_mean == pytest.approx((0.485, 0.456, 0.406))


def test_a_cache_is_kept_for_its_clip_under_another_name(synth, tiny_clip, tmp_path, monkeypatch):
    """Re-trial 29B M1 (the sibling of caption stores): the manifest records the CLIP's absolute
    path, so one folder named from another working directory or through a symlink is one CLIP, and
    so are its files moved (one fingerprint); a CLIP with other weights under another name is not."""
    import os
    import shutil

    from transformers import CLIPModel

    clip = shutil.copytree(tiny_clip, tmp_path / "models" / "clip")
    out = tmp_path / "cache"
    monkeypatch.chdir(tmp_path)
    assert run_masks(synth, "models/clip", out, "--mode", "dense", "--frame-stride", "8") == 0
    (tmp_path / "link").symlink_to(clip)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    moved = shutil.copytree(clip, tmp_path / "moved")
    for name in ("../models/clip/", "../link", str(clip), os.path.relpath(moved)):
        SimilarityCache(out, expect_clip=name)
    model = CLIPModel.from_pretrained(moved)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(moved)  # other weights, another name
    with pytest.raises(CacheMismatchError, match="built with CLIP .*models/clip'.*this run uses '../moved'"):
        SimilarityCache(out, expect_clip="../moved")


def test_cache_of_a_clip_retrained_into_the_same_folder_is_refused(synth, tiny_clip, bundle, tmp_path, capsys):
    """The training-time check of a similarity cache compares the CLIP's weights, not only its path."""
    import shutil

    from transformers import CLIPModel

    from tgmae.hub import weights_fingerprint

    assert weights_fingerprint(tiny_clip) == bundle.fingerprint()  # one fingerprint for both caches
    clip = tmp_path / "clip"
    shutil.copytree(tiny_clip, clip)
    out = tmp_path / "cache"
    assert run_masks(synth, str(clip), out, "--mode", "dense", "--frame-stride", "8") == 0
    SimilarityCache(out, expect_clip=str(clip))
    model = CLIPModel.from_pretrained(clip)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(clip)  # new weights, same folder and config
    with pytest.raises(CacheMismatchError, match="other weights of CLIP.*--rebuild"):
        SimilarityCache(out, expect_clip=str(clip))
    # the way out the message names: rerunning into the same --out says which fingerprints differ,
    # and --rebuild replaces the cache
    old_print, new_print = bundle.fingerprint(), weights_fingerprint(str(clip))
    capsys.readouterr()
    assert run_masks(synth, str(clip), out, "--mode", "dense", "--frame-stride", "8") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # (after the model-load progress bar)
    assert err.startswith("tgmae masks: ") and old_print in err and new_print in err and "--rebuild" in err, err
    assert run_masks(synth, str(clip), out, "--mode", "dense", "--frame-stride", "8", "--rebuild") == 0
    assert SimilarityCache(out, expect_clip=str(clip)).manifest.clip_fingerprint == new_print


def test_incomplete_or_stale_cache_and_missing_captions_are_refused_at_set_up(synth, tiny_clip, dense_cache,
                                                                               tmp_path):
    """Issue 28: an incomplete cache (a killed `tgmae masks`), captions edited after `tgmae masks`,
    a lost map file and captions missing for some videos were found in a DataLoader worker at
    step N (a traceback, the first blaming the annotations); now the dataset refuses at set-up,
    naming the cache or file and the videos."""
    import json
    import shutil

    from tgmae.captions.provider import CaptionProvider
    from tgmae.captions.store import CaptionStoreError
    from tgmae.config import DataConfig, MaskingConfig
    from tgmae.data.dataset import VideoDataset
    from tgmae.data.formats import load_annotations
    from tgmae.masking import build_mask_generator
    from tgmae.masking.cache import CacheMismatchError, MissingCacheEntry

    records, _ = load_annotations("csv", synth, "annotations.csv")
    cfg = DataConfig(root=str(synth), num_frames=8, frame_stride=2, image_size=128)
    ids = [r.video_id for r in records]

    def dataset(cache_dir, captions_file=synth / "captions.jsonl", provider=None):
        gen = build_mask_generator(MaskingConfig(name="tgm", ratio=0.6, cache_dir=str(cache_dir)),
                                   captions_file=str(captions_file))
        return VideoDataset(records, cfg, train=True, token_grid=(4, 8, 8), mask_generator=gen, captions=provider)

    dataset(dense_cache)  # complete and current: accepted
    cut = tmp_path / "cut"
    shutil.copytree(dense_cache, cut)
    index = json.loads((cut / "index.json").read_text())
    del index["videos"][ids[-1]]  # as a `tgmae masks` killed before the last video
    (cut / "index.json").write_text(json.dumps(index))
    with pytest.raises(MissingCacheEntry, match=rf"{cut} has no maps for 1 of this run's {len(ids)} videos "
                                                rf"\('{ids[-1]}'.*`tgmae masks` did not finish") as e:
        dataset(cut)
    assert "annotations when" not in str(e.value)

    lost = tmp_path / "lost"
    shutil.copytree(dense_cache, lost)
    next((lost / "maps").glob("*.npz")).unlink()
    with pytest.raises(MissingCacheEntry, match="map files listed in its index are missing"):
        dataset(lost)

    edited = tmp_path / "captions.jsonl"
    lines = (synth / "captions.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["captions"] = ["a completely different caption"]
    edited.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    with pytest.raises(CacheMismatchError, match=rf"maps of 1 of this run's {len(ids)} videos \('{first['video_id']}'\) "
                                                 rf"were made from other captions.*edited"):
        dataset(dense_cache, edited)

    few = tmp_path / "few.jsonl"
    few.write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(CaptionStoreError, match=rf"{few}: no captions for 1 of the {len(ids)} videos"):
        dataset(dense_cache, provider=CaptionProvider.from_files(few))


def test_same_named_videos_in_other_folders_get_their_own_maps(tmp_path):
    """issue 28: `Animation/clip1` and `Biking/clip1` shared one similarity map; ids are now
    root-relative paths, and the cache keeps one file per id."""
    from tgmae.masking.cache import CacheManifest, merge_parts, part_file, write_entry, write_manifest_or_check

    out = tmp_path / "maps"
    write_manifest_or_check(out, CacheManifest("clip", "fp", "faithful", "source=oracle,model={}", "sha", 1, 32,
                                               16, 1, None, 4))
    part_file(out, 0, 1).parent.mkdir(parents=True)
    with open(part_file(out, 0, 1), "w") as f:
        for i, vid in enumerate(("Animation/clip1", "Biking/clip1")):
            rel = write_entry(out, vid, torch.full((1, 1, 2, 2), float(i)), torch.zeros(1), torch.ones(1, 4), [vid])
            f.write(json.dumps({"video_id": vid, "file": rel}) + "\n")
    assert len(set(merge_parts(out)["videos"].values())) == 2
    cache = SimilarityCache(out)
    assert cache.entry("Animation/clip1").sim.max() == 0 and cache.entry("Biking/clip1").sim.min() == 1


def _captions_without_identities(root: Path) -> None:
    """Drop the `video` identities from root/captions.jsonl (a store written by hand): the set's
    captions describe the videos the test replaces, which `masks` would refuse before any map."""
    lines = [json.loads(x) for x in (root / "captions.jsonl").read_text().splitlines()]
    (root / "captions.jsonl").write_text("".join(json.dumps({k: v for k, v in o.items() if k != "video"}) + "\n"
                                                 for o in lines))


def test_a_video_replaced_in_place_gets_its_maps_recomputed(synth, tiny_clip, tmp_path, caplog):
    """Issue #28.5: a video replaced at the same path (other content, other length) kept its old
    maps ("0 computed, 5 already done": a 16-frame video's maps for an 8-frame one). Each entry
    records its video's identity (`data.fileid.video_identity`); one whose video changed is redone."""
    import shutil

    from tgmae.data.video import write_video

    root = tmp_path / "data"
    shutil.copytree(synth, root, ignore=shutil.ignore_patterns("clip*"))
    _captions_without_identities(root)
    out = tmp_path / "cache"
    assert run_masks(root, tiny_clip, out, "--mode", "dense", "--frame-stride", "4") == 0
    assert SimilarityCache(out).entry("synth_00001").frames.tolist() == [0, 4, 8, 12]
    other = root / "videos" / "synth_00001.tmp.mp4"
    write_video(other, np.random.default_rng(0).integers(0, 256, (8, 128, 128, 3), dtype=np.uint8))
    other.replace(root / "videos" / "synth_00001.mp4")  # same path, other content
    paths = {f"synth_0000{i}": str(root / "videos" / f"synth_0000{i}.mp4") for i in range(2)}
    with pytest.raises(CacheMismatchError,
                       match=r"1 video\(s\) are not the files their maps were made from \(.synth_00001.*another size"):
        SimilarityCache(out).check_videos(list(paths), paths=paths)  # a pretrain's set-up, before `masks` reran
    untouched = (out / "maps" / "synth_00000.npz").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert run_masks(root, tiny_clip, out, "--mode", "dense", "--frame-stride", "4") == 0
    assert SimilarityCache(out).entry("synth_00001").frames.tolist() == [0, 4]
    assert (out / "maps" / "synth_00000.npz").stat().st_mtime_ns == untouched  # the others are kept
    SimilarityCache(out).check_videos(list(paths), paths=paths)  # redone: the set-up check passes
    assert any("synth_00001" in r.getMessage() and "changed" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("kind", ["empty", "videomae", "run", "bert"])
def test_a_folder_that_is_not_a_clip_is_one_line_naming_it_and_the_flag(synth, tmp_path, kind, capsys):
    """issue 28: `tgmae masks --clip` of a VideoMAE export ("ValueError ... sentencepiece or tiktoken"),
    of an empty or a run folder ("ValueError: Unrecognized model ... model_type") were tracebacks; a text
    model without a vision tower has no patch features either."""
    from tgmae.errors import UserError

    bad = not_a_clip(tmp_path, kind)
    capsys.readouterr()
    assert run_masks(synth, str(bad), tmp_path / "cache") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0] and "--clip" in err[0], err
    with pytest.raises(UserError, match="masking.clip_model"):
        load_clip(str(bad), setting="masking.clip_model")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "other keys"])
def test_a_rerun_redoes_damaged_map_files(synth, tiny_clip, tmp_path, caplog, damage):
    """Issue #28 (F): a rerun counted a damaged map file (truncated, garbage, or a .npz without
    the arrays a map holds) as done, and the run that read it failed later. A rerun now opens
    each existing entry (its arrays and their shapes) and redoes a damaged one with a log line."""
    out = tmp_path / "cache"
    assert run_masks(synth, tiny_clip, out, "--mode", "dense", "--frame-stride", "4") == 0
    path = out / "maps" / "synth_00002.npz"
    good = SimilarityCache(out).entry("synth_00002").sim
    untouched = (out / "maps" / "synth_00000.npz").stat().st_mtime_ns
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x93NUMPY garbage" * 20)
    else:
        np.savez(open(path, "wb"), sim=np.zeros((2, 3), np.float16))
    with caplog.at_level("INFO"):
        assert run_masks(synth, tiny_clip, out, "--mode", "dense", "--frame-stride", "4") == 0
    assert torch.allclose(SimilarityCache(out).entry("synth_00002").sim, good)
    assert (out / "maps" / "synth_00000.npz").stat().st_mtime_ns == untouched  # sound entries are kept
    assert any("synth_00002" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("damage", ["copied from another video", "not finite"])
def test_a_rerun_redoes_map_files_of_other_captions_or_not_finite(synth, tiny_clip, tmp_path, caplog, damage):
    """Issue 28: a rerun kept a map file copied from another video (loadable, same shapes) and one
    whose sim is all NaN as done. A map file must hold this video's captions and finite maps."""
    import shutil

    out = tmp_path / "cache"
    assert run_masks(synth, tiny_clip, out, "--mode", "dense", "--frame-stride", "4") == 0
    good = SimilarityCache(out).entry("synth_00002").sim
    path = out / "maps" / "synth_00002.npz"
    if damage == "not finite":
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        arrays["sim"] = np.full_like(arrays["sim"], np.nan)
        np.savez(open(path, "wb"), **arrays)
    else:
        shutil.copyfile(out / "maps" / "synth_00000.npz", path)
    with caplog.at_level("INFO"):
        assert run_masks(synth, tiny_clip, out, "--mode", "dense", "--frame-stride", "4") == 0
    assert torch.allclose(SimilarityCache(out).entry("synth_00002").sim, good)
    assert any("synth_00002" in r.getMessage() and "damaged" in r.getMessage() for r in caplog.records)


def test_masks_where_every_video_fails_is_exit_2(synth, tiny_clip, tmp_path, capsys):
    """Issue #28 (E): `tgmae masks` exited 0 when every video was unreadable; now exit 2, one line
    naming how many failed and where their reasons are (index.json's `skipped`)."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(synth, root, ignore=shutil.ignore_patterns("clip*"))
    _captions_without_identities(root)
    for video in (root / "videos").iterdir():
        video.write_bytes(b"not a video")
    out = tmp_path / "cache"
    capsys.readouterr()
    assert run_masks(root, tiny_clip, out) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert "all 5 video(s) failed" in err[-1] and str(out / "index.json") in err[-1]  # (above: a load bar)
    assert err[-1].startswith("tgmae masks: all")  # the tool named once, not twice
    assert not any("Traceback" in line for line in err)
    assert len(json.loads((out / "index.json").read_text())["skipped"]) == 5


def test_masks_refuse_captions_of_another_data_sets_videos(synth, tiny_clip, tmp_path, capsys):
    """Issue #28 re-trial 11, S1: `masks --captions` of a store made for another data set with the
    same video ids made maps of the other set's captions (rc 0). A record whose recorded video
    identity is not the file's here is refused, one line naming the store and the video."""
    from tgmae.captions.store import read_store
    from tgmae.data.fileid import video_identity

    recs = read_store(synth / "captions.jsonl").records
    other = tmp_path / "other.mp4"
    other.write_bytes(b"another set's video")
    recs[1].extra["video"] = video_identity(str(other))
    _masks_refuse(synth, tiny_clip, tmp_path, capsys, recs)


def _masks_refuse(synth, tiny_clip, tmp_path, capsys, recs) -> str:
    """`tgmae masks` of `synth` with caption records `recs` (written to a store): exit 2, one line
    naming the store and recs[1]'s video, no maps written. Returns stderr."""
    from tgmae.captions.store import write_store

    caps, out = tmp_path / "caps.jsonl", tmp_path / "cache"
    write_store(caps, recs)
    assert masks_main(["--format", "csv", "--root", str(synth), str(synth / "annotations.csv"), "--captions", str(caps),
                       "--clip", tiny_clip, "--out", str(out), "--image-size", "128", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(caps) in err and repr(recs[1].video_id) in err and "Traceback" not in err
    assert not (out / "maps").exists()
    return err


def test_masks_refuse_captions_of_a_video_rewritten_in_place_at_the_same_size(synth, tiny_clip, tmp_path, capsys):
    """Re-trial 30B S1: a video rewritten in place with the same size passed the size check, and
    `masks` redid its maps from the caption of its old contents. A record whose file has the same
    inode and another mtime now is refused, naming the store, the video and the caption rerun."""
    from tgmae.captions.store import read_store
    from tgmae.data.fileid import video_identity
    from tgmae.data.formats import load_annotations

    recs = read_store(synth / "captions.jsonl").records
    path = {r.video_id: r.path for r in load_annotations("csv", synth, "annotations.csv")[0]}[recs[1].video_id]
    now = video_identity(str(path))
    recs[1].extra["video"] = [now[0], now[1] - 10**9, now[2], now[3] - 10**9]  # captioned before the rewrite
    err = _masks_refuse(synth, tiny_clip, tmp_path, capsys, recs)
    assert "rewritten in place" in err and "tgmae caption" in err


def test_masks_refuse_captions_of_another_file_moved_onto_a_video(synth, tiny_clip, tmp_path, capsys):
    """Re-trial 32A S1: another file of the same size moved onto a captioned video (a new inode, as
    a copy has) passed, and `masks` redid its maps from the old caption. A record whose `content`
    key is not the file's now is refused naming the store, the video and the caption rerun; one
    whose key is the file's (a copy of the data set elsewhere) is accepted."""
    from tgmae.captions.store import read_store, write_store
    from tgmae.data.fileid import content_key, video_identity
    from tgmae.data.formats import load_annotations

    recs = read_store(synth / "captions.jsonl").records
    path = {r.video_id: r.path for r in load_annotations("csv", synth, "annotations.csv")[0]}[recs[1].video_id]
    now = video_identity(str(path))
    recs[1].extra["video"] = [now[0], now[1] - 10**9, now[2] + 1, now[3] - 10**9]  # the file before the mv
    argv = ["--format", "csv", "--root", str(synth), str(synth / "annotations.csv"), "--clip", tiny_clip,
            "--image-size", "128", "--no-progress"]
    recs[1].extra["content"] = "0" * 32  # of the file captioned then
    caps, out = tmp_path / "cap4.jsonl", tmp_path / "cache"
    write_store(caps, recs)
    assert masks_main([*argv, "--captions", str(caps), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert str(caps) in err and repr(recs[1].video_id) in err and "replaced by another file" in err
    assert "tgmae caption" in err and "Traceback" not in err
    assert not (out / "maps").exists()
    recs[1].extra["content"] = content_key(str(path))  # the same bytes: a copy
    write_store(caps, recs)
    assert masks_main([*argv, "--captions", str(caps), "--out", str(out)]) == 0


def _ranged_annotations(root: Path, rows: list[tuple[str, int, int]]) -> Path:
    """A generic CSV of synthetic videos `(id, start_frame, end_frame)` (their 16 frames each)."""
    ann = root / "ranged.csv"
    ann.write_text("path,label,video_id,start_frame,end_frame\n"
                   + "".join(f"videos/{vid}.mp4,0,{vid},{s},{e}\n" for vid, s, e in rows))
    return ann


def test_masks_skips_a_range_past_the_videos_end_with_its_reason(synth, tiny_clip, tmp_path, capsys):
    """issue 28 re-trial 16B, M8: `tgmae masks` counted records whose range is past the video's end
    as cached ("3 videos cached, 0 skipped") while `caption` and `data check` report them bad. They
    are skipped with the same reason (`record_frame_range`'s VideoError), also on a rerun after the
    range moved past the end of a video whose maps were made."""
    out = tmp_path / "cache"
    ann = _ranged_annotations(tmp_path, [("synth_00000", 4, 60), ("synth_00001", 0, 16)])
    argv = ["--format", "csv", "--root", str(synth), str(ann), "--captions", str(synth / "captions.jsonl"),
            "--clip", tiny_clip, "--out", str(out), "--image-size", "128", "--no-progress"]
    assert masks_main(argv) == 0
    assert "1 videos cached, 1 skipped" in capsys.readouterr().out
    skipped = json.loads((out / "index.json").read_text())["skipped"]
    assert list(skipped) == ["synth_00000"]  # {id: reason}
    assert "[4, 60)" in skipped["synth_00000"] and "16 frames" in skipped["synth_00000"]
    _ranged_annotations(tmp_path, [("synth_00000", 4, 60), ("synth_00001", 0, 40), ("synth_00002", 2, 16)])
    assert masks_main(argv) == 0
    assert "1 videos cached, 2 skipped" in capsys.readouterr().out
    index = json.loads((out / "index.json").read_text())
    assert set(index["videos"]) == {"synth_00002"}
    assert set(index["skipped"]) == {"synth_00000", "synth_00001"}
    _ranged_annotations(tmp_path, [("synth_00000", 4, 60), ("synth_00001", 0, 16), ("synth_00002", 2, 16)])
    assert masks_main(argv) == 0  # the range fixed: cached again, not "already done" yet skipped in the index
    assert "2 videos cached, 1 skipped" in capsys.readouterr().out


def test_masks_refuse_captions_of_other_frame_ranges(synth, tiny_clip, tmp_path, capsys):
    """issue 28 re-trial 16B, S2: captions made from frames [0, 16) of a clip now [2, 10) (its
    row's start_frame / end_frame changed) describe other frames: refused naming the store and id."""
    from tgmae.captions.store import read_store, write_store

    recs = read_store(synth / "captions.jsonl").records
    recs[1].extra["frames"] = [0, 16]
    caps = tmp_path / "cap2.jsonl"
    write_store(caps, recs)
    ann = _ranged_annotations(tmp_path, [(recs[1].video_id, 2, 10)])
    out = tmp_path / "cache"
    assert masks_main(["--format", "csv", "--root", str(synth), str(ann), "--captions", str(caps),
                       "--clip", tiny_clip, "--out", str(out), "--image-size", "128", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert str(caps) in err and repr(recs[1].video_id) in err and "frame range" in err
    assert not (out / "maps").exists()


def test_masks_refuse_an_annotation_store_of_a_caption_edited_since(synth, tiny_clip, tmp_path, capsys):
    """re-trial 29B S1 follow-up: a `caption --annotation-captions` store made before a row's
    caption was edited gave maps of the old text ("5 videos cached"). `masks` refuses in one line
    naming the store, the id, both texts and the way out, before any map is made."""
    from tgmae.cli import main

    caps = tmp_path / "ann.jsonl"
    assert main(["caption", "--format", "csv", "--root", str(synth), str(synth / "annotations.csv"),
                 "--annotation-captions", "--out", str(caps)]) == 0
    lines = (synth / "annotations.csv").read_text().splitlines()
    old = lines[1].split(",")[2]
    edited = tmp_path / "annotations.csv"
    edited.write_text("\n".join([lines[0], lines[1].replace(old, "a red ball on a table"), *lines[2:]]) + "\n")
    out = tmp_path / "cache"
    capsys.readouterr()
    assert masks_main(["--format", "csv", "--root", str(synth), str(edited), "--captions", str(caps),
                       "--clip", tiny_clip, "--out", str(out), "--image-size", "128", "--no-progress"]) == 2
    full = capsys.readouterr().err
    err = full.splitlines()[-1]  # after CLIP's loading bar
    assert err.startswith(f"tgmae masks: {caps}: 1 video(s)") and "Traceback" not in full
    assert "'synth_00000'" in err and repr(old) in err and "'a red ball on a table'" in err and "--rebuild" in err
    assert not (out / "maps").exists()


def test_maps_redone_for_edited_captions_are_refused_to_a_run_of_the_former_captions(synth, tiny_clip, tmp_path):
    """issue 28 (re-trial 17A S2): `tgmae masks` rerun on edited captions redid that video's maps but
    kept the manifest's captions_sha256 of the first build; a pretrain on the former captions file
    (hashing to that value) skipped the caption check and masked synth_00000 with the maps of the
    edited caption. The run's captions are compared per video, whatever the manifest's hash says."""
    from tgmae.config import MaskingConfig
    from tgmae.masking import build_mask_generator

    out, former = tmp_path / "cache", synth / "captions.jsonl"
    assert run_masks(synth, tiny_clip, out, "--mode", "dense", "--frame-stride", "8") == 0
    lines = former.read_text().splitlines()
    first = json.loads(lines[0])
    vid, first["captions"] = first["video_id"], ["a red ball on a table"]
    edited = tmp_path / "captions.jsonl"
    edited.write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")
    assert masks_main(["--format", "csv", "--root", str(synth), str(synth / "annotations.csv"), "--captions",
                       str(edited), "--clip", tiny_clip, "--out", str(out), "--image-size", "128", "--frame-stride",
                       "8", "--mode", "dense", "--no-progress"]) == 0
    assert SimilarityCache(out).entry(vid).captions == ["a red ball on a table"]  # redone
    ids = sorted(json.loads((out / "index.json").read_text())["videos"])

    def generator(captions_file):
        return build_mask_generator(MaskingConfig(name="tgm", ratio=0.6, cache_dir=str(out)),
                                    captions_file=str(captions_file))

    with pytest.raises(CacheMismatchError) as e:
        generator(former).check_videos(ids)
    msg = str(e.value)
    assert f"1 of this run's {len(ids)} videos ('{vid}')" in msg and str(former) in msg and "tgmae masks" in msg
    assert "\n" not in msg
    generator(edited).check_videos(ids)  # the captions the maps were made from: accepted


def test_a_single_cached_caption_is_checked_against_the_drawn_one(dense_cache):
    """issue 28 (re-trial 17A S2): a video with one cached caption had its map returned whatever
    caption the sample drew; the drawn caption must be the cached one, as with several."""
    cache = SimilarityCache(dense_cache)
    entry = cache.entry("synth_00001")
    one = dataclasses.replace(entry, sim=entry.sim[:1], text=entry.text[:1], captions=entry.captions[:1])
    gen = CachedTGMMask(cache, ratio=0.6)
    assert gen.caption_maps(one, ctx_of(one, caption=entry.captions[0])).shape == entry.sim.shape[1:]
    with pytest.raises(CacheMismatchError, match="'a red ball on a table' is not among the 1 captions"):
        gen.caption_maps(one, ctx_of(one, caption="a red ball on a table"))
    assert CachedTGMMask(cache, ratio=0.6, caption="mean").caption_maps(one, ctx_of(one, caption="x")).shape \
        == entry.sim.shape[1:]  # the mean of the video's cached captions, whatever was drawn


def test_a_cache_built_for_another_image_or_patch_size_is_refused_naming_the_settings(dense_cache):
    """issue 28 (re-trial 17A S6): a cache built for 32 px was used by a 64 px run without a word
    (its 2 x 2 maps resampled to the 4 x 4 token grid); `tgmae masks` and `eval-masks` refuse it."""
    from tgmae.config import MaskingConfig
    from tgmae.masking import build_mask_generator

    cfg = MaskingConfig(name="tgm", ratio=0.6, cache_dir=str(dense_cache))  # built for 128 px, patch 16
    assert isinstance(build_mask_generator(cfg, image_size=128, patch_size=16), CachedTGMMask)
    with pytest.raises(CacheMismatchError) as e:
        build_mask_generator(cfg, image_size=64, patch_size=16)
    msg = str(e.value)
    assert "data.image_size" in msg and "masking.cache_dir" in msg and str(dense_cache) in msg and "128" in msg
    assert "tgmae masks" in msg and "\n" not in msg
    with pytest.raises(CacheMismatchError, match="model.patch_size"):
        build_mask_generator(cfg, image_size=128, patch_size=8)


def test_masks_into_a_cache_of_another_data_set_with_the_same_ids_is_refused(synth, tiny_clip, tmp_path, capsys):
    """Re-trial 31A S3: `tgmae masks --out` into a cache made for another data set with the same ids
    (two `tgmae synth` sets) replaced all its maps ("8 computed"), and the first set's training was then
    refused blaming its videos. Maps already there made from a file at another path whose contents
    differ (`captions.store.other_file`), or from other captions, are refused naming the count, a video
    and the ways out; a copy of the set elsewhere and --rebuild go on, and a video replaced at its own
    path is still redone (test_a_video_replaced_in_place_gets_its_maps_recomputed)."""
    import shutil

    from tgmae.data.video import write_video

    a, b, c, d = (tmp_path / n for n in ("a", "b", "c", "d"))
    for root in (a, b, c, d):
        shutil.copytree(synth, root, ignore=shutil.ignore_patterns("clip*"))
        _captions_without_identities(root)
    other = b / "videos" / "synth_00001.tmp.mp4"  # b: another set's video under the id
    write_video(other, np.random.default_rng(0).integers(0, 256, (8, 128, 128, 3), dtype=np.uint8))
    other.replace(b / "videos" / "synth_00001.mp4")
    lines = [json.loads(x) for x in (c / "captions.jsonl").read_text().splitlines()]  # c: another caption
    lines[2]["captions"] = ["another set's caption."]
    (c / "captions.jsonl").write_text("".join(json.dumps(o) + "\n" for o in lines))
    out = tmp_path / "cache"
    assert run_masks(a, tiny_clip, out) == 0
    made = {p.name: p.stat().st_mtime_ns for p in (out / "maps").iterdir()}
    capsys.readouterr()
    for root, vid in ((b, "synth_00001"), (c, lines[2]["video_id"])):
        assert run_masks(root, tiny_clip, out) == 2
        err = capsys.readouterr().err
        said = [line for line in err.splitlines() if line.startswith("tgmae masks:")]  # beside CLIP's loading bar
        assert len(said) == 1 and "1 video(s)" in err and repr(vid) in err and str(out) in err
        assert "--rebuild" in err and "--out another folder" in err and "Traceback" not in err
        assert {p.name: p.stat().st_mtime_ns for p in (out / "maps").iterdir()} == made  # not one map replaced
    assert run_masks(d, tiny_clip, out) == 0  # the same set copied elsewhere: its maps, not another set's
    assert run_masks(b, tiny_clip, out, "--rebuild") == 0


def _same_size_other_file(path: Path, tmp_path: Path) -> None:
    """`mv` onto `path` another file of its size (its middle bytes flipped): a new inode, as a copy
    of the data set has, and other contents."""
    import os

    data = bytearray(path.read_bytes())
    n = len(data)
    data[n // 3:n // 3 + 200] = bytes(b ^ 0x55 for b in data[n // 3:n // 3 + 200])
    (tmp_path / "new.mp4").write_bytes(data)
    os.replace(tmp_path / "new.mp4", path)


def test_a_copy_of_the_data_set_keeps_its_maps_and_a_replaced_video_is_redone(synth, tiny_clip, tmp_path, caplog,
                                                                             capsys, monkeypatch):
    """Re-trial 33B M1: maps made for a data set were refused for a byte-identical copy of it elsewhere
    (`cp -r`: new inodes and mtimes) as "4 videos changed since their maps were made ... replaced in
    place, or maps made by an older tgmae", and `masks` recomputed them all. Maps are judged by the
    caption store's rule (`masking.cache.changed_file`: each part line's identity and content key):
    a copy is accepted by training's set-up and `masks` redoes nothing; another file of the same size
    moved onto a video is refused naming both paths and what differs, and `masks` redoes it at its own
    path. Content keys are read only where the stat changed, once per file."""
    import shutil

    from tgmae.data import fileid
    from tgmae.data.formats import load_annotations

    a = tmp_path / "a"
    shutil.copytree(synth, a, ignore=shutil.ignore_patterns("clip*"))
    _captions_without_identities(a)  # the caption store's own check is not this test's
    out = tmp_path / "cache"
    assert run_masks(a, tiny_clip, out) == 0
    made = {p.name: p.stat().st_mtime_ns for p in (out / "maps").iterdir()}
    c = Path(shutil.copytree(a, tmp_path / "c", copy_function=shutil.copyfile))  # cp -r: new inodes, mtimes
    paths = {root: {r.video_id: str(r.path) for r in load_annotations("csv", root, "annotations.csv")[0]}
             for root in (a, c)}
    reads = []
    real_read = fileid._read_content_key
    monkeypatch.setattr(fileid, "_read_content_key", lambda p, size: reads.append(p) or real_read(p, size))
    SimilarityCache(out).check_videos(list(paths[a]), paths=paths[a])  # its own files: nothing read
    assert reads == []
    SimilarityCache(out).check_videos(list(paths[c]), paths=paths[c])  # a pretrain's set-up on the copy
    assert len(reads) == len(paths[c])
    SimilarityCache(out).check_videos(list(paths[c]), paths=paths[c])  # the keys are remembered
    assert len(reads) == len(paths[c])
    capsys.readouterr()
    assert run_masks(c, tiny_clip, out) == 0
    assert "0 computed" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "maps").iterdir()} == made  # not one map redone

    _same_size_other_file(Path(paths[c]["synth_00001"]), tmp_path)
    with pytest.raises(CacheMismatchError) as e:
        SimilarityCache(out).check_videos(list(paths[c]), paths=paths[c])
    said = str(e.value)
    assert "1 video(s)" in said and "'synth_00001'" in said and "its contents differ" in said
    assert f"made from {paths[a]['synth_00001']}, now {paths[c]['synth_00001']}" in said
    capsys.readouterr()
    assert run_masks(c, tiny_clip, out) == 2  # another path's other file: maps of another data set, kept
    err = capsys.readouterr().err
    assert "1 video(s)" in err and "'synth_00001'" in err and "its file differs" in err
    _same_size_other_file(Path(paths[a]["synth_00001"]), tmp_path)
    with pytest.raises(CacheMismatchError, match=r"1 video\(s\) .*'synth_00001'.*its contents differ"):
        SimilarityCache(out).check_videos(list(paths[a]), paths=paths[a])
    with caplog.at_level("INFO"):
        assert run_masks(a, tiny_clip, out) == 0
    assert "1 computed, 4 already done" in capsys.readouterr().out
    assert any("synth_00001" in r.getMessage() and "its contents differ" in r.getMessage() for r in caplog.records)
    SimilarityCache(out).check_videos(list(paths[a]), paths=paths[a])  # redone: the set-up check passes
    for part in (out / "parts").iterdir():  # maps of an older tgmae: no content key tells a copy
        lines = [{k: v for k, v in json.loads(x).items() if k != "content"} for x in part.read_text().splitlines()]
        part.write_text("".join(json.dumps(o) + "\n" for o in lines))
    SimilarityCache(out).check_videos(list(paths[a]), paths=paths[a])
    with pytest.raises(CacheMismatchError, match=r"5 video\(s\) .*maps of an older tgmae record no content key"):
        SimilarityCache(out).check_videos(list(paths[c]), paths=paths[c])
