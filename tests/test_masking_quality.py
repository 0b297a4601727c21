"""`tgmae train-clip`, `tgmae eval-masks` and `tgmae visualize masks` on a small synthetic set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tgmae.study.clip.data import _coverage, load_synthetic_clip_set, sample_clips, sample_pairs
from tgmae.study.clip.train import grouped_contrastive_loss



@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from tgmae.data.synthetic import generate_synthetic_dataset

    root = tmp_path_factory.mktemp("synth_quality")
    generate_synthetic_dataset(root, num_videos=10, frames=24, size=128, seed=7, val_fraction=0.3)
    return root


@pytest.fixture(scope="module")
def trained_clip(synth, tmp_path_factory):
    """`tgmae train-clip` with a tiny model and a short schedule."""
    from tgmae.commands.train_clip import main

    out = tmp_path_factory.mktemp("clip_trained")
    rc = main(["--root", str(synth), "--out", str(out), "--steps", "60", "--image-size", "32", "--patch-size", "8",
               "--width", "32", "--layers", "2", "--embed-dim", "32", "--videos-per-batch", "16",
               "--lr", "3e-3", "--motion-weight", "0.5", "--no-progress"])
    assert rc == 0
    return out


def test_trained_clip_loads_like_a_public_clip(trained_clip):
    from transformers import AutoProcessor, AutoTokenizer, CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(trained_clip)
    assert model.config.vision_config.image_size == 32 and model.config.projection_dim == 32
    tok = AutoTokenizer.from_pretrained(trained_clip)
    assert isinstance(tok, CLIPTokenizer)
    assert tok.decode(tok("A red circle slides left")["input_ids"], skip_special_tokens=True) == "a red circle slides left"
    proc = AutoProcessor.from_pretrained(trained_clip)
    batch = proc(text=["a red circle"], images=[np.zeros((128, 128, 3), np.uint8)], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model(**batch)
    assert out.logits_per_image.shape == (1, 1)
    summary = json.loads((trained_clip / "train_clip.json").read_text())
    assert summary["steps"] == 60 and 0.0 <= summary["val_patch_auc"] <= 1.0
    assert 0.0 <= summary["val_patch_auc_dense"] <= 1.0
    assert summary["config"]["motion_weight"] == 0.5
    from transformers import CLIPVisionModelWithProjection

    motion = CLIPVisionModelWithProjection.from_pretrained(trained_clip / "motion")  # the clip tower, kept apart
    assert motion.config.num_channels == 12 and motion.config.projection_dim == 32


def test_sample_clips_keep_time_order_and_group_by_object_and_action(synth):
    data = load_synthetic_clip_set(synth, "train", frames_per_video=8)
    g = torch.Generator().manual_seed(0)
    batch = sample_clips(data, 12, 32, g, frames=3, stride=2)
    assert batch.clips.shape == (12, 9, 32, 32) and batch.clips.min() >= 0 and batch.clips.max() <= 1
    v = torch.randint(len(data), (12,), generator=torch.Generator().manual_seed(0))  # the same draws
    for i in range(12):  # every clip: 3 frames of one video, 2 loaded frames apart, in time order
        frames = [batch.clips[i, 3 * k:3 * k + 3] for k in range(3)]
        vi = int(v[i])
        candidates = [s for s in range(4) if all(torch.allclose(f, F.interpolate(
            data.frames[vi, s + 2 * k].permute(2, 0, 1)[None].float() / 255, size=(32, 32), mode="bilinear",
            antialias=True, align_corners=False)[0], atol=1e-5) for k, f in enumerate(frames))]
        assert candidates, f"clip {i} is not 3 time-ordered frames of video {vi}"
        group = (data.names[vi], data.actions[vi])
        assert all((data.names[int(v[j])], data.actions[int(v[j])]) == group
                   for j in range(12) if batch.key[j] == batch.key[i])
        text = batch.texts[int(batch.key[i])]  # a caption of a video of the same object and action
        assert group in {(data.names[w], data.actions[w]) for w in range(len(data)) if text in data.captions[w]}
    with pytest.raises(ValueError, match="needs 13 loaded frames per video, have 8"):
        sample_clips(data, 2, 32, g, frames=4, stride=4)


def test_train_clip_refuses_a_folder_without_captions(tmp_path, capsys):
    from tgmae.commands.train_clip import main

    with pytest.raises(SystemExit) as e:
        main(["--root", str(tmp_path), "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and "captions.jsonl" in capsys.readouterr().err
    (tmp_path / "captions.jsonl").write_text("")
    (tmp_path / "plain").write_text("x")
    from tgmae.cli import main as cli

    # issue 28: --out naming a file failed only after training, in a FileExistsError traceback
    assert cli(["train-clip", "--root", str(tmp_path), "--out", str(tmp_path / "plain")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{tmp_path / 'plain'} (--out) is a file, not a folder" in err[0], err


def test_grouped_contrastive_loss():
    text = F.normalize(torch.randn(3, 8), dim=-1)
    key = torch.tensor([0, 1, 2, 0, -1])
    aligned = torch.cat([text, text[:1], F.normalize(-text.sum(0, keepdim=True), dim=-1)])
    scale = torch.tensor(np.log(50.0))
    good = grouped_contrastive_loss(aligned, text, key, scale)
    bad = grouped_contrastive_loss(aligned[[1, 2, 0, 1, 4]], text, key, scale)
    assert good < 0.2 < bad
    # a negative-only image that looks like a caption's positive raises that caption's loss
    confusing = grouped_contrastive_loss(torch.cat([aligned[:4], text[:1]]), text, key, scale)
    assert confusing > good


def test_dense_training_path_is_the_inference_path(trained_clip):
    """The dense loss trains exactly the features `tgmae masks --mode dense` reads."""
    from tgmae.clip.features import ClipPatchScorer, load_clip
    from tgmae.study.clip.train import dense_loss, maskclip_tokens

    bundle = load_clip(str(trained_clip))
    model, vision = bundle.model, bundle.model.vision_model
    x = torch.randn(2, 3, 32, 32)
    captured = {}
    hook = vision.encoder.layers[-1].register_forward_pre_hook(lambda m, a: captured.__setitem__("x", a[0]))
    with torch.no_grad():
        model.get_image_features(pixel_values=x)
    hook.remove()
    assert torch.allclose(maskclip_tokens(model, captured["x"]), ClipPatchScorer(bundle)._maskclip_tokens(vision, x), atol=1e-5)
    cover = torch.zeros(2, 4, 4)
    cover[:, 1:3, 1:3] = 1.0
    text = F.normalize(torch.randn(2, 32), dim=-1)
    h = captured["x"].clone().requires_grad_(True)
    loss = dense_loss(model, h, cover, torch.tensor([0, 1]), text)
    loss.backward()
    assert torch.isfinite(loss) and h.grad.abs().sum() > 0


def test_pair_sampling_puts_patches_on_and_off_the_object(synth):
    data = load_synthetic_clip_set(synth, "train", frames_per_video=4)
    assert data.frames.shape[1:] == (4, 128, 128, 3) and data.masks.shape[1:] == (4, 128, 128)
    batch = sample_pairs(data, 8, 32, torch.Generator().manual_seed(0), clip_patch=8)
    assert batch.images.shape[1:] == (3, 32, 32) and batch.images.shape[0] == batch.key.shape[0]
    assert batch.whole_cover.shape == (8, 4, 4) and (batch.key[:8] >= 0).all()
    assert 0.0 < float(batch.whole_cover.sum()) and float(batch.whole_cover.max()) <= 1.0
    assert batch.images.min() >= 0 and batch.images.max() <= 1
    assert (batch.key == -1).sum() >= 1 and batch.key.max() == len(batch.texts) - 1
    assert all(any(n.split()[0] in t and n.split()[1] in t for n in data.names) for t in batch.texts)
    m = torch.zeros(1, 20, 20)
    m[0, 5:10, 5:15] = 1
    integral = F.pad(m.cumsum(1).cumsum(2), (1, 0, 1, 0))
    cov = _coverage(integral, torch.tensor([[7.5, 2.0]]), torch.tensor([[10.0, 2.0]]), torch.tensor([[4.0, 4.0]]))
    assert cov.tolist() == [[1.0, 0.0]]


def test_eval_masks_refuses_a_similarity_cache_another_run_writes(tmp_path, capsys):
    """issue 28: eval-masks / visualize masks built `ROOT/mask_cache/...` without the cache's lock."""
    from test_locks import _holder
    from tgmae.locks import LockError
    from tgmae.masking.quality import ensure_cache

    cache = tmp_path / "mask_cache" / "clip-faithful"
    proc = _holder(cache, tmp_path)
    try:
        with pytest.raises(LockError, match=rf"{cache} is in use by another run \(pid {proc.pid}"):
            ensure_cache(tmp_path, ["v"], "clip", "faithful", str(cache), 64, 16, 2, progress=False, rebuild=True)
    finally:
        proc.kill()
        proc.wait()
    assert not cache.exists()  # not emptied (--rebuild) nor written


def test_eval_masks_cli_json_and_invariants(synth, trained_clip, tmp_path, capsys):
    from tgmae.cli import main as cli_main

    def main(argv: list[str]) -> int:  # `tgmae eval-masks ARGV` through the error boundary
        return cli_main(["eval-masks", *argv])

    out = tmp_path / "r.json"
    args = ["--root", str(synth), "--clip", str(trained_clip), "--ratio", "0.5", "--num-frames", "8",
            "--image-size", "128", "--split", "train", "--cache", str(tmp_path / "cache"), "--no-progress"]
    assert main([*args, "--out", str(out)]) == 0
    table = capsys.readouterr().out
    # issue 28 re-trial 12 (F5): the cache built with other settings is --cache's folder; the way
    # out names --cache, not --out (the results JSON)
    assert main([*args, "--cache-stride", "3", "--out", str(tmp_path / "r3.json")]) == 2
    err = capsys.readouterr().err
    assert "--cache" in err and "--rebuild" in err and "--out" not in err
    assert not (tmp_path / "r3.json").exists()
    assert "tgm_top" in table and "ceiling" in table
    res = json.loads(out.read_text())
    assert set(res) == {"random", "tube", "mgm", "tgm_top", "tgm_bottom"}
    for r in res.values():
        assert set(r) == {"precision", "recall", "ratio"} and r["ratio"] == pytest.approx(0.5)
        assert 0.0 <= r["precision"] <= 1.0 and 0.0 <= r["recall"] <= 1.0
    # at ratio 0.5 the top-k and bottom-k sets of each slice are complements (up to ties of the
    # float16-stored maps)
    assert res["tgm_top"]["recall"] + res["tgm_bottom"]["recall"] == pytest.approx(1.0, abs=0.05)
    # the self-trained CLIP finds the named object even after a short schedule
    assert res["tgm_top"]["precision"] > 1.3 * res["random"]["precision"] > res["tgm_bottom"]["precision"]
    assert main(["--root", str(tmp_path), "--no-progress"]) == 2
    assert main([*args, "--ratio", "1.5"]) == 2
    capsys.readouterr()
    # issue 28: an --out under a file failed after the whole evaluation, in a traceback
    (tmp_path / "plain").write_text("x")
    assert main([*args, "--out", str(tmp_path / "plain" / "r.json")]) == 2
    err = capsys.readouterr()
    assert f"{tmp_path / 'plain'} is a file, not a folder" in err.err and "tgm_top" not in err.out


def test_visualize_masks_pngs(synth, trained_clip, tmp_path, capsys):
    from PIL import Image

    from tgmae.cli import main as cli_main
    from tgmae.commands.visualize_masks import main

    png = tmp_path / "fig.png"
    assert main(["--root", str(synth), "--clip", str(trained_clip), "--out", str(png), "--image-size", "128",
                 "--num-frames", "8", "--columns", "3"]) == 0
    w, h = Image.open(png).size
    assert h > w  # 6 rows (input + 5 algorithms) x 3 columns
    # re-trial 18: the set's cache is of 128 px; at 64 the advice named --rebuild only
    capsys.readouterr()
    assert cli_main(["visualize", "masks", "--root", str(synth), "--clip", str(trained_clip), "--out",
                     str(tmp_path / "f64.png"), "--image-size", "64", "--num-frames", "8"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tgmae")]
    assert len(err) == 1 and "--image-size 128 (the cache's)" in err[0] and "--rebuild" in err[0], err
    assert "--cache" not in err[0]  # visualize masks has none
    # re-trial 19B (M6): a cache of another patch size could only be destroyed; --patch-size matches it
    assert cli_main(["visualize", "masks", "--root", str(synth), "--clip", str(trained_clip), "--out",
                     str(tmp_path / "p32.png"), "--image-size", "128", "--patch-size", "32", "--num-frames", "8"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tgmae")]
    assert len(err) == 1 and "--patch-size 16 (the cache's)" in err[0], err
    video = synth / "videos" / "synth_00001.mp4"
    png2 = tmp_path / "video.png"
    assert main(["--video", str(video), "--caption", "a shape", "--clip", str(trained_clip), "--mode", "dense",
                 "--out", str(png2), "--image-size", "128", "--num-frames", "8", "--ratio", "0.5"]) == 0
    assert Image.open(png2).size[0] > 100
    assert main(["--video", str(video), "--caption", " ", "--clip", str(trained_clip), "--out", str(png2)]) == 2


def test_eval_masks_out_refuses_inputs_users_files_and_runs(tmp_path, capsys):
    """issue 28: `eval-masks --out` replaced any file: the set's captions.jsonl it reads, a user's
    file, a run's config.yaml (exit 0). Now one line naming the file, exit 2, before the
    evaluation; an earlier result file is replaced, a user's only with --overwrite, the set's and a
    run's files never."""
    from tgmae.cli import main as cli_main
    from tgmae.masking.quality import is_quality_results

    root = tmp_path / "set"
    (root / "masks").mkdir(parents=True)
    (root / "captions.jsonl").write_text("{}\n")
    run = tmp_path / "runs" / "pt"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("model: {}\n")
    (tmp_path / "mine.json").write_text('{"mine": 1}')
    args = ["eval-masks", "--root", str(root), "--ratio", "0.5", "--no-progress"]
    for target, flags in ((root / "captions.jsonl", []), (root / "captions.jsonl", ["--overwrite"]),
                          (tmp_path / "mine.json", []), (run / "config.yaml", ["--overwrite"]),
                          (run / "r.json", [])):
        assert cli_main([*args, "--out", str(target), *flags]) == 2, target
        err = capsys.readouterr().err
        assert str(target) in err and "--out" in err and err.count("\n") == 1, (target, err)
    assert (root / "captions.jsonl").read_text() == "{}\n" and (tmp_path / "mine.json").read_text() == '{"mine": 1}'
    assert (run / "config.yaml").read_text() == "model: {}\n" and not (run / "r.json").exists()
    (tmp_path / "old.json").write_text('{"random": {"precision": 0.1, "recall": 0.9, "ratio": 0.9}}')
    assert is_quality_results(tmp_path / "old.json") and not is_quality_results(tmp_path / "mine.json")


def test_eval_masks_out_over_the_caption_file_names_it_as_the_caption_file(tmp_path, capsys):
    """Issue 28 (F): `eval-masks --out SET/captions.jsonl` said "is the annotation list being read";
    it is the set's caption file, and the line says so."""
    from tgmae.cli import main as cli_main

    root = tmp_path / "set"
    (root / "masks").mkdir(parents=True)
    (root / "captions.jsonl").write_text("{}\n")
    assert cli_main(["eval-masks", "--root", str(root), "--out", str(root / "captions.jsonl"), "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "caption" in err and "annotation list" not in err and str(root / "captions.jsonl") in err, err


@pytest.mark.parametrize("case", ["locked", "users_folder", "users_folder_rebuild"])
def test_eval_masks_refusals_of_its_cache_name_its_own_flag(synth, tmp_path, capsys, case):
    """issue 28 (re-trial 17A M2): eval-masks' refusals of its similarity cache folder advised
    "another similarity cache folder (tgmae masks --out, masking.cache_dir)" (or "--out" for a
    user's folder under --rebuild); eval-masks takes --cache. Refused before CLIP is loaded."""
    from test_locks import _holder
    from tgmae.cli import main

    cache = tmp_path / "cache"
    args = ["eval-masks", "--root", str(synth), "--clip", str(tmp_path / "no-clip"), "--cache", str(cache),
            "--split", "train", "--no-progress"] + (["--rebuild"] if case.endswith("rebuild") else [])
    proc = None
    if case == "locked":
        proc = _holder(cache, tmp_path)
    else:
        cache.mkdir()
        (cache / "notes.txt").write_text("mine")
    try:
        assert main(args) == 2
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(cache) in err and "--cache" in err, err
    advice = err.split("wait for it to end")[-1]  # (the holder's command line, quoted, has its own --out)
    assert "--out" not in advice and "masking.cache_dir" not in advice, err
    if case != "locked":
        assert (cache / "notes.txt").read_text() == "mine"


def test_eval_masks_on_a_cache_of_another_patch_size_names_the_matching_flags(synth, trained_clip, tmp_path, capsys):
    """Issue 28 (re-trial 18, B2): a cache made at another patch size (`tgmae masks --patch-size
    32`) was refused with only "--rebuild, or give --cache another folder"; eval-masks had no
    --patch-size to match it. Now it has one, and the refusal names it with the cache's value."""
    from tgmae.cli import main
    from tgmae.masking.quality import ensure_cache
    from tgmae.clip.data import read_split_ids

    cache = tmp_path / "cache"
    # two videos: at 4 x 4 tokens (128 px, patch 32) the first clip has no token on the object
    # (left out), the second has
    ensure_cache(synth, read_split_ids(synth, "train")[:2], str(trained_clip), "faithful", str(cache),
                 128, 32, 2, progress=False)
    before = (cache / "manifest.json").read_text()
    args = ["eval-masks", "--root", str(synth), "--clip", str(trained_clip), "--num-frames", "8",
            "--image-size", "128", "--split", "train", "--max-videos", "2", "--cache", str(cache), "--no-progress"]
    assert main(args) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tgmae")]  # not HF's bars
    assert len(err) == 1 and "--patch-size 32" in err[0] and "--rebuild" in err[0] and "--cache" in err[0], err
    assert (cache / "manifest.json").read_text() == before
    assert main([*args, "--patch-size", "32"]) == 0  # the way out it names works


def test_the_table_gives_no_ratio_to_a_random_precision_of_zero():
    """Re-trial 19B (M7): random masking that hit no object token printed prec/random 26315789.47
    (a division by 1e-9); now "-", with the reason under the table."""
    from tgmae.masking.quality import MaskQuality, format_table

    zero = MaskQuality({"random": {"precision": 0.0, "recall": 0.0, "ratio": 0.9},
                        "tube": {"precision": 0.02, "recall": 0.5, "ratio": 0.9}}, 0.01, 1)
    table = format_table(zero)
    assert "2000000" not in table and "random masking hit no object token" in table
    assert table.splitlines()[2].split()[4] == "-"
    some = MaskQuality({"random": {"precision": 0.01, "recall": 0.9, "ratio": 0.9},
                        "tube": {"precision": 0.02, "recall": 0.5, "ratio": 0.9}}, 0.01, 1)
    assert format_table(some).splitlines()[2].split()[4] == "2.00"


@pytest.mark.parametrize("target", ["clip_config", "clip_new", "clip_itself", "cache", "default_cache", "masks",
                                    "videos"])
def test_eval_masks_out_refuses_a_folder_it_reads(tmp_path, capsys, target):
    """Re-trial 24A (S4): `eval-masks --clip clipA --out clipA/config.json --overwrite` replaced the
    CLIP model's config.json (exit 0, the model folder broken); only the set's own files and runs
    were refused. Now --out anywhere inside a folder eval-masks reads or writes (--clip, the
    similarity cache, the set's masks/ and videos/) is refused in one line naming the folder's flag,
    --overwrite or not, before anything is read."""
    from tgmae.cli import main as cli_main

    root = tmp_path / "set"
    for sub in ("masks", "videos"):
        (root / sub).mkdir(parents=True)
    (root / "masks" / "synth_00000.npz").write_bytes(b"npz")
    (root / "captions.jsonl").write_text("{}\n")
    clip = tmp_path / "clipA"
    clip.mkdir()
    (clip / "config.json").write_text('{"model_type": "clip"}')
    cache = tmp_path / "cache"
    out, flag, extra = {
        "clip_config": (clip / "config.json", "--clip", []),
        "clip_new": (clip / "motion" / "r.json", "--clip", []),
        "clip_itself": (clip, "--clip", []),
        "cache": (cache / "r.json", "--cache", ["--cache", str(cache)]),
        "default_cache": (root / "mask_cache" / "clipA-faithful" / "r.json", "--cache", []),
        "masks": (root / "masks" / "synth_00000.npz", "--root", []),
        "videos": (root / "videos" / "r.json", "--root", []),
    }[target]
    args = ["eval-masks", "--root", str(root), "--clip", str(clip), "--split", "train", "--no-progress",
            "--out", str(out), "--overwrite", *extra]
    assert cli_main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(out) in err and "--out" in err and f"({flag}" in err, err
    assert (clip / "config.json").read_text() == '{"model_type": "clip"}'
    assert (root / "masks" / "synth_00000.npz").read_bytes() == b"npz"
    assert not (clip / "motion").exists() and not cache.exists() and not (root / "mask_cache").exists()
    assert not (root / "videos" / "r.json").exists()


def test_eval_masks_refuses_clips_without_an_object_token(synth, tmp_path, capsys):
    """Re-trial 24A (M4): at --image-size 32 (2 x 2 tokens a frame) no clip holds a token on the
    object, and eval-masks printed and wrote precision 0 / recall 0 for every algorithm ("object
    tokens: 0.0000 of all"): "nothing to find" read as "missed everything". Now one line naming
    the settings to change, exit 2, nothing written."""
    from tgmae.cli import main as cli_main

    out = tmp_path / "em1.json"
    args = ["eval-masks", "--root", str(synth), "--num-frames", "4", "--image-size", "32", "--split", "train",
            "--no-progress", "--out", str(out)]
    assert cli_main(args) == 2
    captured = capsys.readouterr()
    err = [line for line in captured.err.splitlines() if line.startswith("tgmae")]
    assert len(err) == 1 and "--min-cover" in err[0] and "--image-size" in err[0] and "--patch-size" in err[0], err
    assert "recall" not in captured.out and not out.exists()
    # an empty split measured nothing either (NaN ratios, exit 0); now refused naming --split
    (tmp_path / "empty").mkdir()
    for name in ("masks", "videos"):
        (tmp_path / "empty" / name).mkdir()
    (tmp_path / "empty" / "captions.jsonl").write_text("")
    (tmp_path / "empty" / "val.csv").write_text("path,label,caption,video_id\n")
    assert cli_main(["eval-masks", "--root", str(tmp_path / "empty"), "--no-progress", "--out", str(out)]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("tgmae")]
    assert len(err) == 1 and "--split" in err[0] and "val.csv" in err[0], err
    assert not out.exists()


def test_eval_masks_leaves_out_clips_without_an_object_token(synth, tmp_path, capsys):
    """Re-trial 24A (M4): where only some clips hold a token on the object (64 px: 4 x 4 tokens),
    those without one are left out of every algorithm's sums and counted in the printout; no
    written recall is a 0 of a set without positives."""
    from tgmae.cli import main as cli_main
    from tgmae.clip.data import read_split_ids
    from tgmae.masking.quality import evaluate_masks

    q = evaluate_masks(synth, None, ratio=0.5, split="train", num_frames=8, image_size=64, progress=False)
    n = len(read_split_ids(synth, "train"))
    assert 0 < q.videos < n and q.videos + len(q.left_out) == n
    assert q.object_fraction > 0
    for r in q.results.values():
        assert r["recall"] is not None and r["ratio"] == pytest.approx(0.5)
    out = tmp_path / "em.json"
    assert cli_main(["eval-masks", "--root", str(synth), "--num-frames", "8", "--image-size", "64", "--split",
                     "train", "--ratio", "0.5", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{q.videos} videos" in printed and f"{len(q.left_out)} left out" in printed, printed
    assert json.loads(out.read_text()) == q.results


def test_the_table_and_json_give_no_number_where_nothing_was_masked():
    """A precision with no masked token (or a recall with no object token) is undefined: the
    table prints "-" for it, never 0."""
    from tgmae.masking.quality import MaskQuality, format_table

    q = MaskQuality({"random": {"precision": None, "recall": 0.0, "ratio": 0.0},
                     "tube": {"precision": 0.5, "recall": None, "ratio": 0.5}}, 0.1, 1)
    rows = format_table(q).splitlines()
    assert rows[1].split()[2] == "-" and rows[2].split()[3] == "-"
