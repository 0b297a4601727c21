"""VideoMAEv2's official checkpoints (`tgmae.weights.official.official_state` and the loaders that use
it): random weights saved in the key layout of OpenGVLab/VideoMAEv2's `models/modeling_pretrain.py`
(`PretrainVisionTransformer`: encoder.*, decoder.*, encoder_to_decoder, mask_token) and
`models/modeling_finetune.py` (`VisionTransformer`: patch_embed, blocks, fc_norm, head), wrapped as
its `utils.save_model` writes them (`model`, with optimizer, epoch and argparse args) or as the
released files (`module`). The reference forwards below are those files' equations written out
plainly, independent of tgmae's model; the converted model must agree to 1e-5.
"""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch
import torch.nn.functional as F

from tgmae.cli import main as cli_main
from tgmae.weights.classifier import load_classifier
from tgmae.weights.files import detect_format
from tgmae.weights.layouts import OFFICIAL_ENCODER_HEADS, hf_arch, official_heads
from tgmae.weights.pretraining import load_pretraining_model
from tgmae.weights.sources import load_encoder_source

EPS = 1e-6  # norm_layer=partial(nn.LayerNorm, eps=1e-6) in every VideoMAEv2 model
FRAMES, SIZE, TUBELET = 4, 28, 2
# "giant": ViT-g/14's geometry and MLP ratio (patch 14, mlp_ratio=48/11) at tiny widths;
# "distilled": a ViT-S-like finetuned encoder (mlp_ratio 4) with a K710-style head.
GIANT = dict(dim=22, depth=2, heads=2, hidden=int(22 * 48 / 11), patch=14, ddim=16, ddepth=1, dheads=2,
             dhidden=int(16 * 48 / 11))
DISTILLED = dict(dim=24, depth=2, heads=3, hidden=96, patch=14, classes=7)


def convert(argv: list[str]) -> int:
    return cli_main(["convert", *argv])


# ------------------------------------------------------------------ their key layout, random values


def _block_shapes(prefix: str, dim: int, hidden: int) -> dict[str, tuple[int, ...]]:
    """modeling_finetune.Block with qkv_bias=True, init_values=0, cos_attn=False."""
    return {
        f"{prefix}norm1.weight": (dim,), f"{prefix}norm1.bias": (dim,),
        f"{prefix}attn.qkv.weight": (3 * dim, dim), f"{prefix}attn.q_bias": (dim,), f"{prefix}attn.v_bias": (dim,),
        f"{prefix}attn.proj.weight": (dim, dim), f"{prefix}attn.proj.bias": (dim,),
        f"{prefix}norm2.weight": (dim,), f"{prefix}norm2.bias": (dim,),
        f"{prefix}mlp.fc1.weight": (hidden, dim), f"{prefix}mlp.fc1.bias": (hidden,),
        f"{prefix}mlp.fc2.weight": (dim, hidden), f"{prefix}mlp.fc2.bias": (dim,),
    }


def _random(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        fan_in = shape[1] if len(shape) > 1 else 1
        scale = 1.0 / math.sqrt(fan_in) if len(shape) > 1 else 0.2
        out[name] = torch.randn(shape, generator=g) * scale + (1.0 if name.endswith("norm1.weight") else 0.0)
    return out


def pretrain_state(c: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """PretrainVisionTransformer.state_dict() names and shapes (pos_embed is a plain tensor there,
    not a parameter or buffer, so it is not saved)."""
    p, patch_dim = c["patch"], 3 * TUBELET * c["patch"] ** 2  # decoder_num_classes
    shapes = {"encoder.patch_embed.proj.weight": (c["dim"], 3, TUBELET, p, p), "encoder.patch_embed.proj.bias": (c["dim"],)}
    for i in range(c["depth"]):
        shapes.update(_block_shapes(f"encoder.blocks.{i}.", c["dim"], c["hidden"]))
    shapes.update({"encoder.norm.weight": (c["dim"],), "encoder.norm.bias": (c["dim"],)})
    for i in range(c["ddepth"]):
        shapes.update(_block_shapes(f"decoder.blocks.{i}.", c["ddim"], c["dhidden"]))
    shapes.update({"decoder.norm.weight": (c["ddim"],), "decoder.norm.bias": (c["ddim"],),
                   "decoder.head.weight": (patch_dim, c["ddim"]), "decoder.head.bias": (patch_dim,),
                   "encoder_to_decoder.weight": (c["ddim"], c["dim"]), "mask_token": (1, 1, c["ddim"])})
    return _random(shapes, seed)


def finetune_state(c: dict, seed: int = 1) -> dict[str, torch.Tensor]:
    """VisionTransformer(use_mean_pooling=True).state_dict(): `norm` is nn.Identity, `fc_norm` pools."""
    p = c["patch"]
    shapes = {"patch_embed.proj.weight": (c["dim"], 3, TUBELET, p, p), "patch_embed.proj.bias": (c["dim"],)}
    for i in range(c["depth"]):
        shapes.update(_block_shapes(f"blocks.{i}.", c["dim"], c["hidden"]))
    shapes.update({"fc_norm.weight": (c["dim"],), "fc_norm.bias": (c["dim"],),
                   "head.weight": (c["classes"], c["dim"]), "head.bias": (c["classes"],)})
    return _random(shapes, seed)


def save_like_videomaev2(state: dict[str, torch.Tensor], path, wrap: str) -> None:
    """utils.save_model (`model` + optimizer, epoch, scaler, args) or a released file (`module`)."""
    if wrap == "model":
        blob = {"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 299, "scaler": {},
                "args": argparse.Namespace(model="pretrain_videomae_giant_patch14_224", decoder_mask_ratio=0.5)}
    else:
        blob = {"module": state}
    torch.save(blob, path)


# ------------------------------------------------------------------ their forward, written out


def sinusoid_table(n: int, d: int) -> torch.Tensor:
    """get_sinusoid_encoding_table(n, d)[0]: position / 10000^(2 (j // 2) / d), sin on even j, cos on odd."""
    pos = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(d, dtype=torch.float64)[None, :]
    angle = pos / torch.pow(torch.tensor(10000.0, dtype=torch.float64), 2 * torch.div(j, 2, rounding_mode="floor") / d)
    table = torch.where(j.long() % 2 == 0, torch.sin(angle), torch.cos(angle))
    return table.float()


def ref_block(x: torch.Tensor, s: dict, pre: str, heads: int) -> torch.Tensor:
    """Block.forward with gamma None: x + attn(norm1(x)); x + mlp(norm2(x)). Attention.forward:
    qkv = F.linear(x, qkv.weight, cat(q_bias, 0, v_bias)); q * head_dim^-0.5; softmax(q k^T) v."""
    B, N, C = x.shape
    h = F.layer_norm(x, (C,), s[pre + "norm1.weight"], s[pre + "norm1.bias"], EPS)
    bias = torch.cat([s[pre + "attn.q_bias"], torch.zeros_like(s[pre + "attn.v_bias"]), s[pre + "attn.v_bias"]])
    qkv = F.linear(h, s[pre + "attn.qkv.weight"], bias).reshape(B, N, 3, heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q * (C // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    out = (attn @ v).transpose(1, 2).reshape(B, N, -1)
    x = x + F.linear(out, s[pre + "attn.proj.weight"], s[pre + "attn.proj.bias"])
    h = F.layer_norm(x, (C,), s[pre + "norm2.weight"], s[pre + "norm2.bias"], EPS)
    h = F.linear(F.gelu(F.linear(h, s[pre + "mlp.fc1.weight"], s[pre + "mlp.fc1.bias"])),
                 s[pre + "mlp.fc2.weight"], s[pre + "mlp.fc2.bias"])
    return x + h


def ref_encoder(s: dict, pre: str, video: torch.Tensor, mask: torch.Tensor, depth: int, heads: int) -> torch.Tensor:
    """PretrainVisionTransformerEncoder.forward_features without its final norm: patch embedding
    (Conv3d, flatten(2).transpose(1, 2)), + sin-cos table, the visible tokens (x[~mask]), blocks."""
    w = s[pre + "patch_embed.proj.weight"]
    x = F.conv3d(video, w, s[pre + "patch_embed.proj.bias"], stride=tuple(w.shape[2:])).flatten(2).transpose(1, 2)
    B, N, C = x.shape
    x = x + sinusoid_table(N, C)
    x = x[~mask].reshape(B, -1, C)
    for i in range(depth):
        x = ref_block(x, s, f"{pre}blocks.{i}.", heads)
    return x


def ref_pretrain(s: dict, c: dict, video: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """PretrainVisionTransformer.forward(x, mask, decode_mask=None) -> [B, N_masked, 3 t p p]."""
    x = ref_encoder(s, "encoder.", video, mask, c["depth"], c["heads"])
    x = F.layer_norm(x, (c["dim"],), s["encoder.norm.weight"], s["encoder.norm.bias"], EPS)
    x = F.linear(x, s["encoder_to_decoder.weight"])
    B, _, D = x.shape
    pos = sinusoid_table(mask.shape[1], D).expand(B, -1, -1)
    pos_vis, pos_mask = pos[~mask].reshape(B, -1, D), pos[mask].reshape(B, -1, D)
    x = torch.cat([x + pos_vis, s["mask_token"] + pos_mask], dim=1)
    for i in range(c["ddepth"]):
        x = ref_block(x, s, f"decoder.blocks.{i}.", c["dheads"])
    x = F.layer_norm(x[:, -pos_mask.shape[1]:], (D,), s["decoder.norm.weight"], s["decoder.norm.bias"], EPS)
    return F.linear(x, s["decoder.head.weight"], s["decoder.head.bias"])


def ref_finetune(s: dict, c: dict, video: torch.Tensor) -> torch.Tensor:
    """VisionTransformer.forward: blocks over all tokens, fc_norm(x.mean(1)), head -> [B, classes]."""
    mask = torch.zeros(video.shape[0], (FRAMES // TUBELET) * (SIZE // c["patch"]) ** 2, dtype=torch.bool)
    x = ref_encoder(s, "", video, mask, c["depth"], c["heads"])
    x = F.layer_norm(x.mean(1), (c["dim"],), s["fc_norm.weight"], s["fc_norm.bias"], EPS)
    return F.linear(x, s["head.weight"], s["head.bias"])


def clip_and_mask(n_tokens: int, batch: int = 2, seed: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(batch, 3, FRAMES, SIZE, SIZE, generator=g)
    n_masked = n_tokens * 3 // 4
    mask = torch.zeros(batch, n_tokens, dtype=torch.bool)
    for b in range(batch):
        mask[b, torch.randperm(n_tokens, generator=g)[:n_masked]] = True
    return video, mask


GEOMETRY = ["--num-frames", str(FRAMES), "--image-size", str(SIZE)]


# ------------------------------------------------------------------ the tests


@pytest.mark.parametrize("wrap", ["model", "module"])
def test_videomaev2_pretraining_checkpoint_converts_and_matches_its_forward(tmp_path, capsys, wrap):
    c, src = GIANT, tmp_path / "vit_g_hybrid_pt.pth"
    state = pretrain_state(c)
    save_like_videomaev2(state, src, wrap)
    assert detect_format(src) == "official"
    out = tmp_path / "giant.safetensors"
    assert convert([str(src), str(out), *GEOMETRY, "--num-heads", "2", "--decoder-heads", "2"]) == 0
    assert "official -> tgmae pretraining model" in capsys.readouterr().out
    model = load_pretraining_model(out)
    assert model.arch.mlp_ratio == 48 / 11 and model.arch.patch_size == 14
    assert model.decoder.blocks[0].mlp.fc1.out_features == int(16 * 48 / 11)  # 69: int(dim * ratio), as theirs
    video, mask = clip_and_mask(model.arch.num_tokens)
    with torch.no_grad():
        ours = model(video, mask).pred
    torch.testing.assert_close(ours, ref_pretrain(state, c, video, mask), rtol=0, atol=1e-5)


@pytest.mark.parametrize("wrap", ["model", "module"])
def test_videomaev2_finetuned_and_distilled_checkpoints_convert_to_classifiers(tmp_path, capsys, wrap):
    c, src = DISTILLED, tmp_path / "vit_s_k710_dl_from_giant.pth"
    state = finetune_state(c)
    save_like_videomaev2(state, src, wrap)
    out = tmp_path / "clf.safetensors"
    assert convert([str(src), str(out), *GEOMETRY, "--num-heads", "3"]) == 0
    assert f"official -> tgmae classifier, {c['classes']} classes" in capsys.readouterr().out
    clf = load_classifier(out)
    video, _ = clip_and_mask(1)
    with torch.no_grad():
        torch.testing.assert_close(clf(video), ref_finetune(state, c, video), rtol=0, atol=1e-5)


def test_videomaev2_encoder_without_decoder_converts_to_an_encoder(tmp_path, capsys):
    """Released pretraining files may hold the encoder alone (VideoMAEv2 issue 80)."""
    c = GIANT
    state = {k: v for k, v in pretrain_state(c).items() if k.startswith("encoder.")}
    save_like_videomaev2(state, tmp_path / "enc.pth", "module")
    assert convert([str(tmp_path / "enc.pth"), str(tmp_path / "enc.safetensors"), *GEOMETRY, "--num-heads", "2"]) == 0
    assert "official -> tgmae encoder" in capsys.readouterr().out
    source = load_encoder_source(tmp_path / "enc.safetensors")
    from tgmae.models.encoder import VideoViTEncoder

    encoder = VideoViTEncoder(source.arch)
    encoder.load_state_dict(source.encoder)
    video, _ = clip_and_mask(1)
    none = torch.zeros(2, encoder.arch.num_tokens, dtype=torch.bool)
    ref = F.layer_norm(ref_encoder(state, "encoder.", video, none, c["depth"], c["heads"]), (c["dim"],),
                       state["encoder.norm.weight"], state["encoder.norm.bias"], EPS)
    with torch.no_grad():
        torch.testing.assert_close(encoder.eval()(video), ref, rtol=0, atol=1e-5)


def test_malformed_videomaev2_file_is_refused_naming_the_keys(tmp_path, capsys):
    state = pretrain_state(GIANT)
    del state["decoder.head.weight"]
    state["decoder.head.scale"] = torch.ones(1)
    save_like_videomaev2(state, tmp_path / "bad.pth", "model")
    assert convert([str(tmp_path / "bad.pth"), str(tmp_path / "x.safetensors"), "--num-heads", "2",
                    "--decoder-heads", "2"]) == 2
    err = capsys.readouterr().err
    assert "decoder.head.weight" in err and "decoder.head.scale" in err and "bad.pth" in err
    assert not (tmp_path / "x.safetensors").exists()


@pytest.mark.parametrize("key,option", [("encoder.blocks.1.attn.scale", "cos_attn"),
                                        ("encoder.blocks.0.gamma_1", "layer scale"),
                                        ("encoder.pos_embed", "use_learnable_pos_emb")])
def test_videomaev2_options_we_do_not_implement_are_refused(tmp_path, capsys, key, option):
    state = pretrain_state(GIANT)
    state[key] = torch.ones(2, 1, 1)
    save_like_videomaev2(state, tmp_path / "opt.pth", "model")
    assert convert([str(tmp_path / "opt.pth"), str(tmp_path / "x.safetensors"), "--num-heads", "2",
                    "--decoder-heads", "2"]) == 2
    err = capsys.readouterr().err
    assert key in err and option in err


def test_giant_heads_default_to_the_released_count():
    assert official_heads(1408, None, OFFICIAL_ENCODER_HEADS, "model.num_heads") == 16


def test_giant_mlp_ratio_survives_the_hf_config(tmp_path, capsys):
    """ViT-g's 48/11 gives intermediate sizes 6144 / 2234 (encoder / decoder): an HF config without
    our `tgmae_arch` still rebuilds the same model, and the export converts back bit for bit."""
    from tgmae.weights.export_hf import TOLERANCE, export_hf

    save_like_videomaev2(pretrain_state(GIANT), tmp_path / "g.pth", "model")
    assert convert([str(tmp_path / "g.pth"), str(tmp_path / "g.safetensors"), *GEOMETRY, "--num-heads", "2",
                    "--decoder-heads", "2"]) == 0
    res = export_hf(tmp_path / "g.safetensors", tmp_path / "hf", pretraining=True)
    assert res.max_abs_diff <= TOLERANCE
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert (config["intermediate_size"], config["decoder_intermediate_size"]) == (96, 69)
    config.pop("tgmae_arch")
    arch = hf_arch(config)
    assert int(arch.embed_dim * arch.mlp_ratio) == 96 and int(arch.decoder_dim * arch.mlp_ratio) == 69
    assert arch.mlp_ratio == 48 / 11
    giant = hf_arch({"hidden_size": 1408, "intermediate_size": 6144, "decoder_hidden_size": 512,
                     "decoder_intermediate_size": 2234, "num_attention_heads": 16, "decoder_num_attention_heads": 8})
    assert giant.mlp_ratio == 48 / 11
    assert convert([str(tmp_path / "hf"), str(tmp_path / "back.safetensors")]) == 0
    a, b = load_pretraining_model(tmp_path / "g.safetensors"), load_pretraining_model(tmp_path / "back.safetensors")
    assert a.arch == b.arch
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def _with_args(state: dict, path, **args) -> None:
    """As VideoMAE / VideoMAEv2's utils.save_model writes it: `args` the training script's argparse Namespace."""
    torch.save({"model": state, "epoch": 3, "args": argparse.Namespace(
        model="pretrain_videomae_giant_patch14_224", decoder_mask_ratio=0.5, **args)}, path)


ARGS = dict(num_frames=FRAMES, input_size=SIZE, tubelet_size=TUBELET, normlize_target=False, patch_size=(14, 14))


def test_the_training_args_a_pth_stores_give_its_geometry_and_target(tmp_path, capsys):
    """Issue #28 re-trial 16A, S2: `tgmae convert` of a .pth whose `args` state num_frames=4, input_size=28,
    normlize_target=False said "16 frames at 224px" and wrote norm_pix_loss: true. The file's args are used
    when no option gives them (read weights_only, the Namespace allowed by name)."""
    src = tmp_path / "g_args.pth"
    _with_args(pretrain_state(GIANT), src, **ARGS)
    out = tmp_path / "g.safetensors"
    assert convert([str(src), str(out), "--num-heads", "2", "--decoder-heads", "2"]) == 0
    said = capsys.readouterr().out
    assert f"{FRAMES} frames at {SIZE}px" in said and "raw-pixel target" in said
    arch = load_pretraining_model(out).arch
    assert (arch.num_frames, arch.image_size, arch.norm_pix_loss) == (FRAMES, SIZE, False)
    source = load_encoder_source(src, num_heads=2)  # the encoder alone reads them too
    assert (source.arch.num_frames, source.arch.image_size) == (FRAMES, SIZE)
    clf = tmp_path / "clf.pth"  # a finetuned classifier's args (no normlize_target there)
    _with_args(finetune_state(DISTILLED), clf, num_frames=FRAMES, input_size=SIZE, tubelet_size=TUBELET)
    assert convert([str(clf), str(tmp_path / "clf.safetensors"), "--num-heads", "3"]) == 0
    assert f"{FRAMES} frames at {SIZE}px" in capsys.readouterr().out
    assert load_classifier(tmp_path / "clf.safetensors").arch.num_frames == FRAMES


@pytest.mark.parametrize("flag,stored", [(["--num-frames", "16"], "num_frames=4"),
                                         (["--image-size", "224"], "input_size=28"),
                                         ([], "normlize_target=True")])
def test_an_option_the_pth_args_contradict_is_refused_naming_both(tmp_path, capsys, flag, stored):
    src = tmp_path / "g_args.pth"
    _with_args(pretrain_state(GIANT), src, **{**ARGS, "normlize_target": not flag})
    argv = [str(src), str(tmp_path / "x.safetensors"), "--num-heads", "2", "--decoder-heads", "2"]
    assert convert([*argv, *(flag or ["--no-norm-pix-loss"])]) == 2
    err = capsys.readouterr().err
    assert stored in err and (flag[0] if flag else "--no-norm-pix-loss") in err and "g_args.pth" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "x.safetensors").exists()
    agree = ["--num-frames", str(FRAMES), "--image-size", str(SIZE)]
    assert convert([*argv, *agree]) == 0  # options that agree with the args are fine


def test_args_whose_tubelet_contradicts_the_weights_are_refused(tmp_path, capsys):
    src = tmp_path / "odd.pth"
    _with_args(pretrain_state(GIANT), src, **{**ARGS, "tubelet_size": 4})
    assert convert([str(src), str(tmp_path / "x.safetensors"), "--num-heads", "2", "--decoder-heads", "2"]) == 2
    err = capsys.readouterr().err
    assert "tubelet_size=4" in err and "odd.pth" in err
