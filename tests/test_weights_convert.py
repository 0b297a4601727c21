"""`tgmae convert` reads every layout `tgmae export-hf` writes: ours -> HF -> ours is lossless
(weights bit for bit, the same arch) for encoder-only, classifier and pretraining exports."""

from __future__ import annotations

import pytest
import torch

from tgmae.cli import main as cli_main
from tgmae.models import VideoMAEArch, VideoMAEPretrainer
from tgmae.weights.classifier import build_classifier, load_classifier, save_classifier
from tgmae.weights.export_hf import export_hf
from tgmae.weights.pretraining import load_pretraining_model, save_pretraining_model
from tgmae.weights.sources import load_encoder_source

# non-default decoder eps and data statistics: values HF's config has no field for
ARCH = VideoMAEArch(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4, image_size=16,
                    decoder_dim=16, decoder_depth=1, decoder_heads=1, decoder_norm_eps=1e-6,
                    pixel_mean=(0.5, 0.4, 0.3), pixel_std=(0.2, 0.25, 0.3))


def main(argv: list[str]) -> int:
    """`tgmae convert ARGV` through the command line's one error boundary (a refusal: exit 2)."""
    return cli_main(["convert", *argv])


def _perturbed(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return module.eval()


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    model = _perturbed(VideoMAEPretrainer(ARCH), 0)
    return model, save_pretraining_model(model, tmp_path_factory.mktemp("pt") / "pt.safetensors")


def test_pretraining_round_trip(pretrained, tmp_path, capsys):
    model, path = pretrained
    export_hf(path, tmp_path / "hf", pretraining=True)
    assert main([str(tmp_path / "hf"), str(tmp_path / "back.safetensors")]) == 0
    assert "hf -> tgmae pretraining model" in capsys.readouterr().out
    back = load_pretraining_model(tmp_path / "back.safetensors")
    assert back.arch == model.arch
    _same(back.state_dict(), model.state_dict())


def test_encoder_only_round_trip(pretrained, tmp_path, capsys):
    model, path = pretrained
    export_hf(path, tmp_path / "hf")
    assert main([str(tmp_path / "hf"), str(tmp_path / "enc.safetensors")]) == 0
    assert "hf -> tgmae encoder" in capsys.readouterr().out
    src = load_encoder_source(tmp_path / "enc.safetensors")
    assert src.arch == model.arch and not src.head
    _same(src.encoder, model.encoder.state_dict())
    # the decoder-only options make no sense for an encoder: a message, not a silent ignore
    assert main([str(tmp_path / "hf"), str(tmp_path / "x.safetensors"), "--decoder-heads", "2"]) == 2
    assert "decoder_heads" in capsys.readouterr().err


def test_classifier_round_trip(pretrained, tmp_path, capsys):
    _, path = pretrained
    torch.manual_seed(1)
    clf = _perturbed(build_classifier(path, 6), 2)
    names = ["a", "b", "c", "d", "e", "f"]
    saved = save_classifier(clf, tmp_path / "classifier.safetensors", names)
    export_hf(saved, tmp_path / "hf", classifier=True)
    assert main([str(tmp_path / "hf"), str(tmp_path / "clf.safetensors")]) == 0
    assert "hf -> tgmae classifier, 6 classes" in capsys.readouterr().out
    back = load_classifier(tmp_path / "clf.safetensors")
    assert back.arch == load_classifier(saved).arch and back.class_names == names
    _same(back.state_dict(), clf.state_dict())


# ----------------------------------------------------- training checkpoints (runs/X/checkpoints/)
@pytest.fixture(scope="module")
def train_run(tmp_path_factory):
    """A pretraining run's checkpoints folder as the shared loop writes it (step folder + `latest`)."""
    from tgmae.config import RunConfig, to_dict
    from tgmae.models import build_pretraining_model
    from tgmae.weights.checkpoint import TrainPosition, save_checkpoint

    cfg = RunConfig()
    cfg.data.num_frames, cfg.data.image_size = 4, 32
    torch.manual_seed(0)
    model = _perturbed(build_pretraining_model(cfg.model, 4, 32), 3)
    ckpts = tmp_path_factory.mktemp("run") / "checkpoints"
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = save_checkpoint(ckpts, model, opt, None, TrainPosition(2, 1, 0), to_dict(cfg))
    return model, ckpts, step


def test_training_checkpoint_paths_resolve_and_load_as_pretraining_models(train_run, tmp_path, capsys):
    from tgmae.weights.files import CheckpointError, resolve_checkpoint

    model, ckpts, step = train_run
    weights = step / "model.safetensors"
    for given in (ckpts / "latest", ckpts, step, weights):  # the pointer, its folder, the step folder, the file
        assert resolve_checkpoint(given) == weights
        _same(load_pretraining_model(given).state_dict(), model.state_dict())
        _same(load_encoder_source(given).encoder, model.encoder.state_dict())
    assert main([str(ckpts / "latest"), str(tmp_path / "c.safetensors")]) == 0
    assert "tgmae pretraining model" in capsys.readouterr().out
    _same(load_pretraining_model(tmp_path / "c.safetensors").state_dict(), model.state_dict())
    res = export_hf(step, tmp_path / "hf", pretraining=True)
    assert res.hf_class == "VideoMAEForPreTraining" and res.max_abs_diff < 1e-4
    broken = tmp_path / "ck"
    broken.mkdir()
    (broken / "latest").write_text("step_00000009\n")
    with pytest.raises(CheckpointError, match="names 'step_00000009', which is not a checkpoint folder"):
        load_encoder_source(broken / "latest")


def test_a_run_folder_converts_as_the_weights_file_finetune_reads(pretrained, train_run, tmp_path, capsys):
    """Issue #28 re-trial 11, M1: `tgmae convert RUN OUT` refused a run folder ("pass RUN/model.safetensors")
    that finetune / probe read. Now it reads the file finetune does (`files.resolve_weights`): the final
    model.safetensors (classifier.safetensors of a finetune run). A run still training (or killed) has
    none: re-trial 16A found its latest step converted without a word; it is refused, naming the step
    and RUN/checkpoints/latest, which converts that step (as export-hf does)."""
    import shutil

    model, path = pretrained
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(path, run / "model.safetensors")
    (run / "config.yaml").write_text("model: {}\n")
    assert main([str(run), str(tmp_path / "a.safetensors")]) == 0
    assert main([str(run / "model.safetensors"), str(tmp_path / "b.safetensors")]) == 0
    assert "tgmae pretraining model" in capsys.readouterr().out
    _same(load_pretraining_model(tmp_path / "a.safetensors").state_dict(),
          load_pretraining_model(tmp_path / "b.safetensors").state_dict())
    _same(load_pretraining_model(tmp_path / "a.safetensors").state_dict(), model.state_dict())

    training, ckpts, step = train_run  # a run still training: no model.safetensors, only checkpoints/latest
    assert main([str(ckpts.parent), str(tmp_path / "c.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "unfinished run" in err and step.name in err and str(ckpts / "latest") in err
    assert not (tmp_path / "c.safetensors").exists()
    assert main([str(ckpts / "latest"), str(tmp_path / "c.safetensors")]) == 0
    _same(load_pretraining_model(tmp_path / "c.safetensors").state_dict(), training.state_dict())

    ft = tmp_path / "ft"  # a finetune run: its classifier
    ft.mkdir()
    names = ["a", "b", "c"]
    save_classifier(build_classifier(load_encoder_source(path), num_classes=3), ft / "classifier.safetensors", names)
    assert main([str(ft), str(tmp_path / "d.safetensors")]) == 0
    assert "tgmae classifier, 3 classes" in capsys.readouterr().out
    _same(load_classifier(tmp_path / "d.safetensors").state_dict(), load_classifier(ft / "classifier.safetensors").state_dict())


def test_head_counts_given_for_a_checkpoint_that_stores_them_must_agree(pretrained, tmp_path, capsys):
    model, path = pretrained
    export_hf(path, tmp_path / "hf")
    assert main([str(tmp_path / "hf"), str(tmp_path / "x.safetensors"), "--num-heads", "8"]) == 2
    assert "--num-heads 8" in capsys.readouterr().err and not (tmp_path / "x.safetensors").exists()
    assert main([str(tmp_path / "hf"), str(tmp_path / "x.safetensors"), "--num-heads", "2"]) == 0  # agrees: fine
    assert cli_main(["export-hf", str(path), str(tmp_path / "hf2"), "--num-heads", "4"]) == 2
    assert "--num-heads 4" in capsys.readouterr().err


# ----------------------------------------------------- the output file (issue #28: never silently overwritten)
def test_output_inside_a_run_or_existing_or_the_source_itself_is_refused(pretrained, tmp_path, capsys):
    from safetensors.torch import load_file

    _, path = pretrained
    run = tmp_path / "runs" / "ptv"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("train: {}\n")
    (run / "metrics.jsonl").write_text("")
    before = path.read_bytes()
    (run / "model.safetensors").write_bytes(before)
    # a run's own weights: refused, --overwrite or not (as export-hf refuses a folder inside a run)
    for extra in ([], ["--overwrite"]):
        assert main([str(path), str(run / "model.safetensors"), *extra]) == 2
        assert str(run) in capsys.readouterr().err
        assert (run / "model.safetensors").read_bytes() == before
    assert main([str(path), str(run / "other.safetensors"), "--overwrite"]) == 2
    assert not (run / "other.safetensors").exists()
    # SRC as its own OUT: refused, --overwrite or not
    for extra in ([], ["--overwrite"]):
        assert main([str(path), str(path), *extra]) == 2
        assert str(path) in capsys.readouterr().err
    # any other existing file: only with --overwrite
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"mine")
    assert main([str(path), str(out)]) == 2
    err = capsys.readouterr().err
    assert str(out) in err and "--overwrite" in err and out.read_bytes() == b"mine"
    assert main([str(path), str(out), "--overwrite"]) == 0
    assert load_file(out).keys() == load_file(path).keys()


def test_output_inside_the_source_folder_is_refused(pretrained, tmp_path, capsys):
    """Issue 28: `convert SRC_HF SRC_HF/model.safetensors --overwrite` replaced the source's own
    weights with its conversion; an output inside the folder being read is refused, --overwrite or not."""
    _, path = pretrained
    export_hf(path, tmp_path / "hf")
    weights = tmp_path / "hf" / "model.safetensors"
    before = weights.read_bytes()
    for out, extra in ((weights, []), (weights, ["--overwrite"]), (tmp_path / "hf" / "other.safetensors", [])):
        assert main([str(tmp_path / "hf"), str(out), *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and str(out) in err[0] and str(tmp_path / "hf") in err[0]
    assert weights.read_bytes() == before and not (tmp_path / "hf" / "other.safetensors").exists()


def test_a_state_without_an_encoder_is_refused_for_that_before_a_decoder_option(tmp_path, capsys):
    """Issue #28 re-trial 16A, M3: `--decoder-heads` on a .pth holding no encoder said "holds no decoder, so
    decoder_heads do not apply"; the missing encoder is the fault."""
    torch.save({"model": {"foo": torch.zeros(2)}}, tmp_path / "foo.pth")
    for extra in ([], ["--decoder-heads", "2"], ["--no-norm-pix-loss"]):
        assert main([str(tmp_path / "foo.pth"), str(tmp_path / "x.safetensors"), *extra]) == 2
        err = capsys.readouterr().err
        assert "expected exactly one video encoder" in err and "foo.pth" in err


# ------------------------------------------ official .pth: what the weights prove, what is assumed
# A released width (384 / 192: heads 6 / 3 by the released models) at a tiny depth and clip.
OFFICIAL = VideoMAEArch(embed_dim=384, depth=1, num_heads=6, mlp_ratio=1.0, patch_size=8, tubelet_size=2,
                        num_frames=4, image_size=16, decoder_dim=192, decoder_depth=1, decoder_heads=3)


def _official_pth(path, wrap: str = "model", args: dict | None = None, **extra) -> None:
    """A VideoMAE pretraining .pth as its training script saves it: the state (official names are ours)
    under `wrap` ('' bare), with `args` (an argparse Namespace) when given; `extra`: tensors added to it."""
    import argparse

    state = {**VideoMAEPretrainer(OFFICIAL).state_dict(), **extra}
    obj = {wrap: state, "epoch": 3} if wrap else dict(state)
    if args is not None:
        obj["args"] = argparse.Namespace(model="pretrain_videomae_small_patch16_224", **args)
    torch.save(obj, path)


def _meta(path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]


@pytest.mark.parametrize("wrap", ["model", "module", ""])
def test_a_pth_without_args_records_the_keys_it_assumes_and_warns_once(tmp_path, caplog, wrap):
    """Re-trial 23A M2: an official .pth that does not state its geometry was written as 16 frames x 224 px
    as if the weights proved it. The output says which keys are assumed, convert says so once, and
    later readers of the output warn once, naming them."""
    import json

    src, out = tmp_path / "pt.pth", tmp_path / "pt.safetensors"
    _official_pth(src, wrap)
    with caplog.at_level("WARNING", logger="tgmae"):
        assert main([str(src), str(out), "--image-size", "16"]) == 0
    assumed = ["num_frames", "num_heads", "decoder_heads", "norm_pix_loss"]
    said = _warnings(caplog)
    assert len(said) == 1 and all(k in said[0] for k in assumed) and "image_size" not in said[0], said
    assert all(o in said[0] for o in ("--num-frames", "--num-heads", "--decoder-heads", "--no-norm-pix-loss"))
    assert json.loads(_meta(out)["assumed"]) == assumed
    caplog.clear()
    with caplog.at_level("WARNING", logger="tgmae"):  # the recorded geometry, its assumed part said once
        arch = load_pretraining_model(out).arch
        load_encoder_source(out)
    assert (arch.num_frames, arch.image_size, arch.num_heads, arch.decoder_heads) == (16, 16, 6, 3)
    said = _warnings(caplog)
    assert len(said) == 1 and str(out) in said[0] and all(k in said[0] for k in assumed), said


def test_a_pth_whose_args_and_options_state_everything_assumes_nothing(tmp_path, caplog):
    src, out = tmp_path / "pt.pth", tmp_path / "pt.safetensors"
    _official_pth(src, args=dict(num_frames=4, input_size=16, tubelet_size=2, normlize_target=False))
    with caplog.at_level("WARNING", logger="tgmae"):
        assert main([str(src), str(out), "--num-heads", "6", "--decoder-heads", "3"]) == 0
        arch = load_pretraining_model(out).arch
    assert _warnings(caplog) == [] and "assumed" not in _meta(out)
    assert (arch.num_frames, arch.image_size, arch.norm_pix_loss) == (4, 16, False)


def test_an_encoder_pth_assumes_only_what_an_encoder_has(tmp_path, caplog):
    state = {k[len("encoder."):]: v for k, v in VideoMAEPretrainer(OFFICIAL).state_dict().items()
             if k.startswith("encoder.")}
    torch.save({"module": state}, tmp_path / "enc.pth")
    with caplog.at_level("WARNING", logger="tgmae"):
        assert main([str(tmp_path / "enc.pth"), str(tmp_path / "enc.safetensors"), "--num-frames", "4"]) == 0
    import json

    assert json.loads(_meta(tmp_path / "enc.safetensors")["assumed"]) == ["image_size", "num_heads"]
    said = _warnings(caplog)
    assert len(said) == 1 and "image_size" in said[0] and "decoder_heads" not in said[0], said


def test_a_geometry_the_weights_contradict_is_refused_naming_the_key(tmp_path, capsys):
    """--image-size 20 with 8-px patches was a ValueError traceback; a stored fixed position table of
    another token count than the geometry's is refused naming it. A table that fits proves the key left."""
    from tgmae.models.pos_embed import sincos_position_table

    src = tmp_path / "pt.pth"
    _official_pth(src)
    assert main([str(src), str(tmp_path / "x.safetensors"), "--image-size", "20"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "image_size=20" in err and "pt.pth" in err, err
    table = sincos_position_table(8, 384)[None]  # [1, N, D]: 8 tokens = (4 / 2) x (16 / 8)^2
    _official_pth(src, **{"encoder.pos_embed": table})
    assert main([str(src), str(tmp_path / "x.safetensors"), "--image-size", "16", "--num-frames", "8"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "encoder.pos_embed" in err and "num_frames=8" in err, err
    out = tmp_path / "ok.safetensors"
    assert main([str(src), str(out), "--image-size", "16", "--num-heads", "6", "--decoder-heads", "3",
                 "--no-norm-pix-loss"]) == 0
    assert "assumed" not in _meta(out) and load_pretraining_model(out).arch.num_frames == 4


@pytest.mark.parametrize("decoder", [True, False])
def test_convert_reads_a_pth_once(tmp_path, monkeypatch, decoder):
    """Convert read a .pth three times (its args, whether it holds a decoder, its weights)."""
    src = tmp_path / "pt.pth"
    if decoder:
        _official_pth(src)
    else:
        torch.save({"model": {k[len("encoder."):]: v for k, v in VideoMAEPretrainer(OFFICIAL).state_dict().items()
                              if k.startswith("encoder.")}}, src)
    calls = []
    real = torch.load

    def counting(*a, **k):
        calls.append(k.get("weights_only"))
        return real(*a, **k)

    monkeypatch.setattr(torch, "load", counting)
    assert main([str(src), str(tmp_path / "x.safetensors")]) == 0
    assert calls == [True]


def _tgmae_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name.startswith("tgmae")]


@pytest.mark.parametrize("pretraining", [True, False])
def test_the_assumed_keys_survive_export_hf_and_convert(tmp_path, caplog, pretraining):
    """Fix K: `export-hf` of a file converted from a .pth that does not state its clip length wrote
    config.json's num_frames as a fact and a model card silent on it, and `convert` of our file or of that
    folder dropped the record: a guessed geometry passed on as a known one. Each step now records the
    assumed keys (our metadata `assumed`, config.json `tgmae_assumed`, the card) and warns of them."""
    import json

    src, first = tmp_path / "pt.pth", tmp_path / "a.safetensors"
    _official_pth(src)
    assert main([str(src), str(first), "--image-size", "16"]) == 0
    assumed = ["num_frames", "num_heads"] + (["decoder_heads", "norm_pix_loss"] if pretraining else [])
    hf, back, again = tmp_path / "hf", tmp_path / "b.safetensors", tmp_path / "c.safetensors"
    caplog.clear()
    with caplog.at_level("WARNING", logger="tgmae"):
        assert cli_main(["export-hf", str(first), str(hf), *(["--pretraining"] if pretraining else [])]) == 0
    said = _tgmae_warnings(caplog)
    assert any(str(hf) in s and all(k in s for k in assumed) for s in said), said
    config = json.loads((hf / "config.json").read_text())
    assert config["tgmae_assumed"] == assumed and config["num_frames"] == 16
    card = (hf / "README.md").read_text()
    assert "assumed" in card and all(f"`{k}`" in card for k in assumed) and "--num-frames" in card
    for source, out in ((hf, back), (back, again)):  # an export-hf folder -> ours, ours -> ours
        caplog.clear()
        with caplog.at_level("WARNING", logger="tgmae"):
            assert main([str(source), str(out)]) == 0
        said = _tgmae_warnings(caplog)
        assert len(said) == 1 and str(source) in said[0] and all(k in said[0] for k in assumed), said
        assert json.loads(_meta(out)["assumed"]) == assumed


def test_a_pth_that_states_everything_leaves_no_record_through_export_hf_and_back(tmp_path, caplog):
    import json

    src, first, hf, back = tmp_path / "pt.pth", tmp_path / "a.safetensors", tmp_path / "hf", tmp_path / "b.safetensors"
    _official_pth(src, args=dict(num_frames=4, input_size=16, tubelet_size=2, normlize_target=True))
    with caplog.at_level("WARNING", logger="tgmae"):
        assert main([str(src), str(first), "--num-heads", "6", "--decoder-heads", "3"]) == 0
        assert cli_main(["export-hf", str(first), str(hf), "--pretraining"]) == 0
        assert main([str(hf), str(back)]) == 0
    assert _tgmae_warnings(caplog) == []
    assert "tgmae_assumed" not in json.loads((hf / "config.json").read_text())
    assert "assumed" not in (hf / "README.md").read_text()
    assert "assumed" not in _meta(first) and "assumed" not in _meta(back)


def test_a_stated_geometry_is_no_longer_assumed(tmp_path, caplog):
    """Converting our file again with --num-frames states it: the record keeps only what is still a guess."""
    import json

    src, first, out = tmp_path / "pt.pth", tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _official_pth(src)
    assert main([str(src), str(first), "--image-size", "16"]) == 0
    assert main([str(first), str(out), "--num-frames", "4"]) == 0
    assert json.loads(_meta(out)["assumed"]) == ["num_heads", "decoder_heads", "norm_pix_loss"]
    # an export-hf folder whose config.json was edited to another clip length states that one
    hf = tmp_path / "hf"
    assert cli_main(["export-hf", str(first), str(hf)]) == 0
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "num_frames": 8}))
    assert main([str(hf), str(tmp_path / "c.safetensors")]) == 0
    assert json.loads(_meta(tmp_path / "c.safetensors")["assumed"]) == ["num_heads"]
    assert load_encoder_source(tmp_path / "c.safetensors").arch.num_frames == 8


def test_a_geometry_a_conversion_assumed_is_not_taken_as_the_models_own(tmp_path, caplog):
    """Re-trial 24B S4: visualize (and evaluate) of a converted .pth that did not state its frames used
    the assumed 16 frames over -c's, as if the weights knew them. An assumed key is left to the
    config; a stated one is still taken."""
    from tgmae.evaluate.multiview import own_settings
    from tgmae.evaluate.visualize import run_settings

    src, out = tmp_path / "pt.pth", tmp_path / "pt.safetensors"
    _official_pth(src)
    assert main([str(src), str(out), "--image-size", "16"]) == 0
    settings, _ = run_settings(out)
    assert settings["data"] == {"image_size": 16}  # num_frames was assumed
    source = load_encoder_source(out)
    assert own_settings(out, source.arch, source.kind, source.assumed)[0] == {"image_size": 16}
