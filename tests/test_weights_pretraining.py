"""tgmae.weights.pretraining (with files, layouts): HF directories, official .pth files and our safetensors agree exactly."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from tgmae.cli import main as cli_main
from tgmae.config import ModelConfig
from tgmae.models import build_pretraining_model, pretrain_target, reconstruct_video
from tgmae.weights.files import CheckpointError, detect_format
from tgmae.weights.layouts import fill_key_biases, hf_config, ours_to_hf
from tgmae.weights.pretraining import FORMAT, load_pretraining_model, save_pretraining_model

transformers = pytest.importorskip("transformers")

FRAMES, SIZE, PATCH = 4, 32, 8  # grid (2, 4, 4) = 32 tokens


def perturb_(model: torch.nn.Module, seed: int = 0) -> None:
    """Make every bias / norm / mask token non-trivial so a wrong key mapping shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def tiny_hf(use_mean_pooling: bool) -> "transformers.VideoMAEForPreTraining":
    cfg = transformers.VideoMAEConfig(
        image_size=SIZE, patch_size=PATCH, num_frames=FRAMES, tubelet_size=2, hidden_size=64,
        num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, decoder_hidden_size=32,
        decoder_num_hidden_layers=2, decoder_num_attention_heads=2, decoder_intermediate_size=128,
        use_mean_pooling=use_mean_pooling)
    torch.manual_seed(0)
    model = transformers.VideoMAEForPreTraining(cfg).eval()
    perturb_(model)
    return model


def tiny_ours(seed: int = 0):
    torch.manual_seed(seed)
    model = build_pretraining_model(ModelConfig(preset="tiny", patch_size=PATCH), FRAMES, SIZE).eval()
    perturb_(model, seed)
    return model


def inputs(n_tokens: int, n_masked: int, batch: int = 2):
    g = torch.Generator().manual_seed(1)
    video = torch.randn(batch, 3, FRAMES, SIZE, SIZE, generator=g)
    mask = torch.zeros(batch, n_tokens, dtype=torch.bool)
    for b in range(batch):
        mask[b, torch.randperm(n_tokens, generator=g)[:n_masked]] = True
    return video, mask


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


# ------------------------------------------------------------------------------------------ HF


@pytest.mark.parametrize("use_mean_pooling", [False, True])
def test_hf_directory_matches_transformers(tmp_path, use_mean_pooling):
    hf = tiny_hf(use_mean_pooling)
    hf.save_pretrained(tmp_path)
    ours = load_pretraining_model(tmp_path)
    assert ours.arch.encoder_norm is not use_mean_pooling
    assert ours.arch.layer_norm_eps == 1e-12 and ours.arch.num_heads == 4
    video, mask = inputs(ours.arch.num_tokens, 24)
    with torch.no_grad():
        out = ours(video, mask)
        ref = hf(video.permute(0, 2, 1, 3, 4), bool_masked_pos=mask)  # HF takes [B, T, C, H, W]
    assert (out.loss - ref.loss).abs().item() <= 1e-4
    assert out.pred.shape == ref.logits.shape
    assert (out.pred - ref.logits).abs().max().item() <= 1e-4
    # HF predicts masked tokens in increasing token order, the order of our target.
    target = pretrain_target(video, ours.arch)[mask].reshape(2, 24, -1)
    torch.testing.assert_close(torch.nn.functional.mse_loss(ref.logits, target), ref.loss)
    rec_ours = reconstruct_video(video, out.pred, mask, ours.arch)
    rec_hf = reconstruct_video(video, ref.logits, mask, ours.arch)
    assert (rec_ours - rec_hf).abs().max().item() <= 1e-4


def test_hf_directory_with_key_biases_loads_exactly(tmp_path):
    """transformers 5.0-5.17 save VideoMAE with a key bias; softmax cancels it (q.b_k is constant
    over keys), so dropping it keeps the outputs: the same directory with random key biases predicts
    what transformers (without them) predicts."""
    from safetensors.torch import load_file, save_file

    hf = tiny_hf(False)
    hf.save_pretrained(tmp_path)
    path = tmp_path / "model.safetensors"
    state = load_file(path)
    g = torch.Generator().manual_seed(5)
    for name in [k for k in state if k.endswith("attention.attention.query.bias")]:
        state[name.replace("query.bias", "key.bias")] = torch.randn(state[name].shape, generator=g)
    save_file(state, path, metadata={"format": "pt"})
    ours = load_pretraining_model(tmp_path)
    video, mask = inputs(ours.arch.num_tokens, 24)
    with torch.no_grad():
        out = ours(video, mask)
        ref = hf(video.permute(0, 2, 1, 3, 4), bool_masked_pos=mask)
    assert (out.pred - ref.logits).abs().max().item() <= 1e-4


def test_key_biases_are_filled_for_transformers_that_hold_them():
    ours = tiny_ours()
    hf_state = ours_to_hf(ours.state_dict())
    target = dict(hf_state)
    biased = [k.replace("query.bias", "key.bias") for k in hf_state if k.endswith("attention.attention.query.bias")]
    for k in biased:
        target[k] = torch.ones(hf_state[k.replace("key.bias", "query.bias")].shape)
    filled = fill_key_biases(hf_state, target)
    assert biased and all(torch.equal(filled[k], torch.zeros_like(target[k])) for k in biased)
    assert fill_key_biases(hf_state, hf_state) == hf_state


def test_our_weights_load_into_transformers():
    ours = tiny_ours()
    hf = transformers.VideoMAEForPreTraining(transformers.VideoMAEConfig(**hf_config(ours.arch))).eval()
    result = hf.load_state_dict(fill_key_biases(ours_to_hf(ours.state_dict()), hf.state_dict()), strict=False)
    assert not result.unexpected_keys and not result.missing_keys
    video, mask = inputs(ours.arch.num_tokens, 20)
    with torch.no_grad():
        out = ours(video, mask)
        ref = hf(video.permute(0, 2, 1, 3, 4), bool_masked_pos=mask)
    assert (out.pred - ref.logits).abs().max().item() <= 1e-4
    assert (out.loss - ref.loss).abs().item() <= 1e-4


# ------------------------------------------------------------------------------------ official


@pytest.mark.parametrize("wrap", ["model", "module", "compiled"])
def test_official_pth_layout_round_trip(tmp_path, wrap):
    ours = tiny_ours()
    state = ours.state_dict()
    if wrap == "model":  # as VideoMAE's training loop saves it, argparse.Namespace included
        blob = {"model": state, "epoch": 3, "args": argparse.Namespace(model="pretrain_videomae_base_patch16_224")}
    elif wrap == "module":
        blob = {"module": {f"module.{k}": v for k, v in state.items()}}
    else:
        blob = {"model": {f"_orig_mod.{k}": v for k, v in state.items()}}
    path = tmp_path / "checkpoint-799.pth"
    torch.save(blob, path)
    assert detect_format(path) == "official"
    loaded = load_pretraining_model(path, num_frames=FRAMES, image_size=SIZE, num_heads=4, decoder_heads=2)
    assert loaded.arch == ours.arch
    assert_same_weights(loaded, ours)
    video, mask = inputs(ours.arch.num_tokens, 24)
    with torch.no_grad():
        assert torch.equal(loaded(video, mask).pred, ours(video, mask).pred)


def test_official_pth_heads_default_to_released_models(tmp_path):
    with torch.device("meta"):
        base = build_pretraining_model(ModelConfig(preset="small"), 16, 224)
    state = {k: torch.zeros(v.shape) for k, v in base.state_dict().items()}
    torch.save({"model": state}, tmp_path / "small.pth")
    loaded = load_pretraining_model(tmp_path / "small.pth")
    assert loaded.arch == base.arch  # 384 wide -> 6 heads; decoder 192 -> 3 heads; 16 x 224


# --------------------------------------------------------------------------------------- ours


def test_safetensors_round_trip_is_exact_and_atomic(tmp_path):
    ours = tiny_ours()
    path = tmp_path / "sub" / "model.safetensors"
    save_pretraining_model(ours, path)
    save_pretraining_model(ours, path)  # overwrite in place
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temp file left
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format"] == FORMAT and json.loads(f.metadata()["arch"])["embed_dim"] == 128
    loaded = load_pretraining_model(path)
    assert loaded.arch == ours.arch
    assert_same_weights(loaded, ours)
    video, mask = inputs(ours.arch.num_tokens, 16)
    with torch.no_grad():
        assert torch.equal(loaded(video, mask).loss, ours(video, mask).loss)


def test_convert_command(tmp_path, capsys):
    hf = tiny_hf(False)
    hf.save_pretrained(tmp_path / "hf")
    out = tmp_path / "converted.safetensors"
    assert cli_main(["convert", str(tmp_path / "hf"), str(out)]) == 0
    assert "hf -> tgmae" in capsys.readouterr().out
    assert_same_weights(load_pretraining_model(out), load_pretraining_model(tmp_path / "hf"))
    with pytest.raises(SystemExit):
        cli_main(["convert", str(tmp_path / "hf"), str(tmp_path / "x.pth")])


# ------------------------------------------------------------------------------------- errors


def test_unknown_layout_names_keys(tmp_path):
    torch.save({"model": {"backbone.conv1.weight": torch.zeros(2)}}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match=r"encoder\.patch_embed\.proj\.weight.*backbone\.conv1\.weight"):
        load_pretraining_model(tmp_path / "resnet.pth")
    # An official layout with the decoder removed (e.g. a finetuned encoder): name what is missing.
    state = {k: v for k, v in tiny_ours().state_dict().items() if not k.startswith("decoder.head")}
    state["encoder.head.weight"] = torch.zeros(10, 128)
    torch.save({"model": state}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match=r"missing keys: \[decoder\.head\.bias, decoder\.head\.weight\]"
                                              r".*unexpected keys: \[encoder\.head\.weight\]"):
        load_pretraining_model(tmp_path / "partial.pth", num_frames=FRAMES, image_size=SIZE, num_heads=4,
                               decoder_heads=2)


def test_corrupted_and_missing_files_fail_clearly(tmp_path):
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="broken.pth: not a checkpoint"):
        load_pretraining_model(bad)
    from tgmae.data.video import write_video
    from tgmae.weights.sources import load_encoder_source

    video = tmp_path / "clip.avi"  # a video given as the checkpoint: said so, not an IndexError
    write_video(video, torch.zeros(4, 32, 32, 3, dtype=torch.uint8).numpy(), codec="mpeg4")
    for load in (load_pretraining_model, load_encoder_source):
        with pytest.raises(CheckpointError, match=r"clip.avi: not a checkpoint \(neither"):
            load(video)
    pickled = tmp_path / "pickled.pth"  # a real pickle that is no checkpoint: one line
    pickled.write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(CheckpointError, match="cannot read .*pickled.pth as a torch checkpoint") as e:
        load_pretraining_model(pickled)
    assert "\n" not in str(e.value)
    ours = tiny_ours()
    good = save_pretraining_model(ours, tmp_path / "m.safetensors")
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="cannot read .*cut.safetensors as safetensors"):
        load_pretraining_model(cut)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="without tgmae 'arch' metadata"):
        load_pretraining_model(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_pretraining_model(tmp_path / "nope.pth")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(CheckpointError, match="without config.json"):
        load_pretraining_model(tmp_path / "empty_dir")
    torch.save({"model": {"encoder.patch_embed.proj.weight": torch.zeros(3)}}, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match="encoder_to_decoder.weight"):
        load_pretraining_model(tmp_path / "shape.pth")


def test_official_pth_of_an_unreleased_width_needs_the_head_count(tmp_path, capsys):
    """A .pth stores no head count: 128 wide is no released model, so it is asked for, never guessed."""
    from tgmae.config import ConfigError
    from tgmae.weights.sources import load_encoder_source

    ours = tiny_ours()  # 128 wide, 4 heads
    torch.save({"model": ours.state_dict()}, tmp_path / "tiny.pth")
    with pytest.raises(ConfigError, match="--num-heads"):
        load_pretraining_model(tmp_path / "tiny.pth", num_frames=FRAMES, image_size=SIZE, decoder_heads=2)
    with pytest.raises(ConfigError, match="model.num_heads"):
        load_encoder_source(tmp_path / "tiny.pth")
    assert cli_main(["convert", str(tmp_path / "tiny.pth"), str(tmp_path / "out.safetensors")]) == 2
    assert "model.num_heads" in capsys.readouterr().err
    # every option a message names exists: export-hf takes --num-heads / --decoder-heads, pretraining
    # takes model.num_heads / model.decoder_heads
    from tgmae.commands.export_hf import main as export_main  # a success: no boundary needed

    assert export_main([str(tmp_path / "tiny.pth"), str(tmp_path / "hf"), "--num-heads", "4"]) == 0
    assert export_main([str(tmp_path / "tiny.pth"), str(tmp_path / "hfp"), "--pretraining", "--num-heads", "4",
                        "--decoder-heads", "2"]) == 0
    from tgmae.config import load_config
    from tgmae.train.pretrain import PretrainTask

    base = ["model.preset=tiny", f"model.patch_size={PATCH}", f"data.num_frames={FRAMES}", f"data.image_size={SIZE}",
            f"model.pretrained={tmp_path / 'tiny.pth'}"]
    for extra, key in (([], "model.num_heads"), (["model.num_heads=4"], "model.decoder_heads")):
        with pytest.raises(ConfigError, match=f"pass {key} "):
            PretrainTask(load_config(None, base + extra)).build_model()
    built = PretrainTask(load_config(None, base + ["model.num_heads=4", "model.decoder_heads=2"])).build_model()
    assert all(torch.equal(v, ours.state_dict()[k]) for k, v in built.state_dict().items())
    assert cli_main(["convert", str(tmp_path / "tiny.pth"), str(tmp_path / "out.safetensors"), "--num-heads", "4",
                         "--decoder-heads", "2", "--num-frames", str(FRAMES), "--image-size", str(SIZE)]) == 0
    assert load_pretraining_model(tmp_path / "out.safetensors").arch == ours.arch
    src = load_encoder_source(tmp_path / "tiny.pth", num_heads=4)
    assert src.arch.num_heads == 4
    assert all(torch.equal(v, ours.encoder.state_dict()[k]) for k, v in src.encoder.items())
