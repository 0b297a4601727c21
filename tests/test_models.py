"""tgmae.models: shapes per preset, visible-only encoding, the VideoMAE target, reconstruction."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F

from tgmae.config import ModelConfig
from tgmae.models import (
    PRESETS,
    PretrainOutput,
    VideoMAEArch,
    arch_from_config,
    build_pretraining_model,
    masked_mse,
    patchify,
    pretrain_target,
    pretrain_target_channel_first,
    reconstruct_video,
    unpatchify,
)
from tgmae.models.attention import KERNELS, math_attention, pick_kernel, sdpa_fp32, set_attention_kernel
from tgmae.models.block import Block, DropPath
from tgmae.models.pos_embed import sincos_position_table
from tgmae.models.tokens import mask_to_indices

FRAMES, SIZE = 4, 16  # with patch 8, tubelet 2: grid (2, 2, 2) = 8 tokens



def tiny_model(seed: int = 0, **cfg):
    torch.manual_seed(seed)
    args = dict(preset="tiny", patch_size=8, tubelet_size=2) | cfg
    return build_pretraining_model(ModelConfig(**args), FRAMES, SIZE).eval()


def make_mask(batch: int, n: int, n_masked: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, n, dtype=torch.bool)
    for b in range(batch):
        mask[b, torch.randperm(n, generator=g)[:n_masked]] = True
    return mask


def video(batch: int = 2, seed: int = 0, frames: int = FRAMES, size: int = SIZE) -> torch.Tensor:
    return torch.randn(batch, 3, frames, size, size, generator=torch.Generator().manual_seed(seed))


def expected_param_count(a: VideoMAEArch) -> int:
    """VideoMAE parameter count from the architecture alone."""

    def blocks(d: int, n: int) -> int:
        h = int(d * a.mlp_ratio)
        per = 2 * 2 * d + 3 * d * d + 2 * d + d * d + d + d * h + h + h * d + d
        return n * per

    k = a.in_chans * a.tubelet_size * a.patch_size**2
    enc = k * a.embed_dim + a.embed_dim + blocks(a.embed_dim, a.depth) + 2 * a.embed_dim
    dec = blocks(a.decoder_dim, a.decoder_depth) + 2 * a.decoder_dim + a.decoder_dim * a.patch_dim + a.patch_dim
    return enc + a.embed_dim * a.decoder_dim + a.decoder_dim + dec


# ------------------------------------------------------------------------------------ presets


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_with_expected_size(preset):
    with torch.device("meta"):  # no memory, no init cost: base/large only construct
        model = build_pretraining_model(ModelConfig(preset=preset), 16, 224)
    a = model.arch
    p = 14 if preset == "giant" else 16  # ViT-g/14: model.patch_size defaults to the preset's patch
    assert a.patch_size == p and a.grid == (8, 224 // p, 224 // p) and a.patch_dim == 2 * p * p * 3
    assert sum(p.numel() for p in model.parameters()) == expected_param_count(a)
    assert a.decoder_depth == {"micro": 1, "tiny": 2, "huge": 12}.get(preset, 4)
    assert a.decoder_dim // a.decoder_heads == {"micro": 32, "tiny": 32, "huge": 80}.get(preset, 64)


def test_preset_table_matches_videomae():
    assert (PRESETS["small"]["embed_dim"], PRESETS["small"]["depth"], PRESETS["small"]["num_heads"]) == (384, 12, 6)
    assert (PRESETS["base"]["embed_dim"], PRESETS["base"]["num_heads"], PRESETS["base"]["decoder_dim"]) == (768, 12, 384)
    assert PRESETS["base"]["decoder_heads"] == 6
    assert (PRESETS["large"]["embed_dim"], PRESETS["large"]["depth"], PRESETS["large"]["decoder_dim"]) == (1024, 24, 512)
    huge, giant = PRESETS["huge"], PRESETS["giant"]
    assert (huge["embed_dim"], huge["depth"], huge["num_heads"], huge["decoder_dim"], huge["decoder_heads"]) == (
        1280, 32, 16, 640, 8)
    assert (giant["embed_dim"], giant["depth"], giant["num_heads"], giant["decoder_dim"], giant["decoder_heads"]) == (
        1408, 40, 16, 512, 8)
    assert int(giant["embed_dim"] * giant["mlp_ratio"]) == 6144 and ModelConfig(preset="giant").patch_size == 14


@pytest.mark.parametrize("preset", ["micro", "tiny", "small"])
def test_forward_shapes_small_presets(preset):
    torch.manual_seed(0)
    model = build_pretraining_model(ModelConfig(preset=preset, patch_size=8), FRAMES, SIZE)
    a = model.arch
    mask = make_mask(2, a.num_tokens, 6)
    out = model(video(), mask)
    assert isinstance(out, PretrainOutput)
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.pred.shape == (2, 6, 2 * 8 * 8 * 3)
    assert out.latent.shape == (2, 2, a.embed_dim)
    assert out.mask is mask
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_geometry_and_overrides_come_from_config():
    a = arch_from_config(ModelConfig(preset="base", patch_size=8, tubelet_size=4, decoder_dim=512,
                                     decoder_depth=2, drop_path=0.1, norm_pix_loss=False), 8, 32)
    assert a.grid == (2, 4, 4) and a.patch_dim == 4 * 8 * 8 * 3
    assert (a.decoder_dim, a.decoder_heads, a.decoder_depth) == (512, 8, 2)
    assert a.drop_path == 0.1 and a.norm_pix_loss is False
    with pytest.raises(ValueError, match="decoder head width 64"):
        arch_from_config(ModelConfig(preset="base", decoder_dim=100), 16, 224)
    with pytest.raises(ValueError, match="not divisible by tubelet_size"):
        arch_from_config(ModelConfig(), 15, 224)


def test_arch_json_round_trip():
    a = arch_from_config(ModelConfig(preset="small"), 16, 224, pixel_mean=(0.5, 0.5, 0.5))
    assert VideoMAEArch.from_json(a.to_json()) == a
    with pytest.raises(ValueError, match="unknown VideoMAEArch fields"):
        VideoMAEArch.from_json('{"embed_dim": 8, "colour": 1}')


# ---------------------------------------------------------------------------- encoder / mask


def test_position_table_matches_videomae_formula():
    n, d = 10, 6
    table = sincos_position_table(n, d)
    for pos in range(n):
        for j in range(d):
            angle = pos / 10000 ** (2 * (j // 2) / d)
            assert table[pos, j].item() == pytest.approx(math.sin(angle) if j % 2 == 0 else math.cos(angle), abs=1e-6)
    model = tiny_model()
    assert not any("pos_embed" in k for k in model.state_dict())  # non-persistent buffers


def test_encoder_runs_on_visible_tokens_only():
    model = tiny_model()
    enc = model.encoder
    v = video()
    mask = make_mask(2, 8, 5)
    out = enc(v, mask)
    assert out.shape == (2, 3, 128)
    assert enc(v).shape == (2, 8, 128)
    # Same numbers as the dense reference: Conv3d on every token, then keep x[~mask].
    dense = F.conv3d(v, enc.patch_embed.proj.weight, enc.patch_embed.proj.bias,
                     stride=enc.patch_embed.proj.stride).flatten(2).transpose(1, 2) + enc.pos_embed
    ref = enc.forward_features(dense[~mask].reshape(2, 3, -1))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # Pixels of masked tokens never reach the encoder.
    split = mask_to_indices(mask, 8)
    pix = patchify(v, 2, 8)
    pix.scatter_(1, split.masked.unsqueeze(-1).expand(-1, -1, pix.shape[-1]), 100.0)
    torch.testing.assert_close(enc(unpatchify(pix, 2, 8, (2, 2, 2)), mask), out)


def test_unequal_visible_counts_are_rejected():
    model = tiny_model()
    mask = make_mask(2, 8, 4)
    mask[1, (~mask[1]).nonzero()[0]] = True  # sample 1 keeps 3 visible, sample 0 keeps 4
    with pytest.raises(ValueError, match=r"same number of visible tokens.*\[4, 3\]"):
        model(video(), mask)
    with pytest.raises(ValueError, match="model expects 8"):
        model(video(), torch.zeros(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\[B, 3, 4, 16, 16\]"):
        model.encoder(video(size=32))


def test_token_split_order_matches_boolean_indexing():
    mask = make_mask(3, 8, 5, seed=3)
    split = mask_to_indices(mask, 8)
    ar = torch.arange(8).expand(3, -1)
    assert torch.equal(split.visible, ar[~mask].reshape(3, -1))
    assert torch.equal(split.masked, ar[mask].reshape(3, -1))


# ---------------------------------------------------------------------------- target / loss


def test_target_matches_hand_computation():
    a = VideoMAEArch(patch_size=2, tubelet_size=2, num_frames=2, image_size=4, pixel_mean=(0.1, 0.2, 0.3),
                     pixel_std=(0.5, 0.25, 2.0))
    v = video(batch=1, frames=2, size=4, seed=5)
    target = pretrain_target(v, a)  # [1, 4, 2*2*2*3]
    assert target.shape == (1, 4, 24)
    mean, std = a.pixel_mean, a.pixel_std
    for token, (hi, wi) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        for c in range(3):
            vals = [v[0, c, t, hi * 2 + r, wi * 2 + s].item() * std[c] + mean[c]
                    for t in range(2) for r in range(2) for s in range(2)]
            mu = sum(vals) / len(vals)
            sd = math.sqrt(sum((x - mu) ** 2 for x in vals) / (len(vals) - 1))
            for j, x in enumerate(vals):  # layout (p0 p1 p2) c
                assert target[0, token, j * 3 + c].item() == pytest.approx((x - mu) / (sd + 1e-6), abs=1e-4)
    raw = pretrain_target(v, dataclasses.replace(a, norm_pix_loss=False))
    assert raw[0, 3, 1 * 3 + 2].item() == pytest.approx(v[0, 2, 0, 2, 3].item() * 2.0 + 0.3, abs=1e-6)


def test_loss_is_mse_on_masked_tokens_only():
    model = tiny_model()
    v, mask = video(), make_mask(2, 8, 5)
    out = model(v, mask)
    full = pretrain_target(v, model.arch)  # [B, N, P]
    torch.testing.assert_close(out.loss, F.mse_loss(out.pred, full[mask].reshape(2, 5, -1)))
    # Changing visible patches changes the prediction but not the target of masked tokens.
    split = mask_to_indices(mask, 8)
    pix = patchify(v, 2, 8)
    pix.scatter_(1, split.visible.unsqueeze(-1).expand(-1, -1, pix.shape[-1]), 3.0)
    v2 = unpatchify(pix, 2, 8, (2, 2, 2))
    torch.testing.assert_close(pretrain_target(v2, model.arch, split.masked), full[mask].reshape(2, 5, -1))
    assert not torch.allclose(model(v2, mask).pred, out.pred)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("norm_pix", [True, False])
def test_masked_mse_matches_mse_loss_in_value_and_gradient(dtype, norm_pix):
    arch = dataclasses.replace(tiny_model().arch, norm_pix_loss=norm_pix)
    v, mask = video(), make_mask(2, 8, 5)
    masked = mask_to_indices(mask, 8).masked
    g = torch.Generator().manual_seed(3)
    pred = torch.randn(2, 5, arch.patch_dim, generator=g).to(dtype).requires_grad_()
    reference = F.mse_loss(pred.float(), pretrain_target(v, arch, masked))
    (grad_ref,) = torch.autograd.grad(reference, pred)
    v_before = v.clone()
    loss = masked_mse(pred, pretrain_target_channel_first(v, arch, masked))
    (grad,) = torch.autograd.grad(loss, pred)
    assert loss.dtype == torch.float32 and grad.dtype == dtype
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-8)
    assert torch.equal(v, v_before)  # the target is built in its own buffer, never in the input
    with pytest.raises(ValueError, match="does not match target"):
        masked_mse(pred[:, :4], pretrain_target_channel_first(v, arch, masked))


def test_patchify_round_trip_and_gather():
    v = video(batch=2, frames=4, size=16)
    p = patchify(v, 2, 8)
    assert p.shape == (2, 8, 2 * 8 * 8 * 3)
    assert torch.equal(unpatchify(p, 2, 8, (2, 2, 2)), v)
    idx = torch.tensor([[7, 0, 3], [1, 2, 6]])
    assert torch.equal(patchify(v, 2, 8, idx), torch.gather(p, 1, idx[..., None].expand(-1, -1, p.shape[-1])))


def test_reconstruct_video_keeps_visible_pixels_and_inverts_target():
    model = tiny_model()
    v, mask = video(), make_mask(2, 8, 5)
    out = model(v, mask)
    rec = reconstruct_video(v, out.pred, mask, model.arch)
    keep = unpatchify((~mask)[..., None].expand(-1, -1, model.arch.patch_dim).float(), 2, 8, (2, 2, 2)).bool()
    assert torch.equal(rec[keep], v[keep])
    assert not torch.allclose(rec[~keep], v[~keep])
    # Predicting the exact target gives back the input.
    perfect = pretrain_target(v, model.arch, mask_to_indices(mask, 8).masked)
    torch.testing.assert_close(reconstruct_video(v, perfect, mask, model.arch), v, atol=1e-4, rtol=1e-4)
    raw_arch = dataclasses.replace(model.arch, norm_pix_loss=False)
    raw = pretrain_target(v, raw_arch, mask_to_indices(mask, 8).masked)
    torch.testing.assert_close(reconstruct_video(v, raw, mask, raw_arch), v, atol=1e-5, rtol=1e-5)


# -------------------------------------------------------------------------- training details


def test_drop_path_only_in_training():
    model = tiny_model(drop_path=0.5)
    v, mask = video(), make_mask(2, 8, 5)
    torch.manual_seed(1)
    a = model(v, mask).loss
    torch.manual_seed(2)
    assert torch.equal(a, model(v, mask).loss)
    model.train()
    torch.manual_seed(1)
    b = model(v, mask).loss
    torch.manual_seed(2)
    assert not torch.equal(b, model(v, mask).loss)
    dp = DropPath(0.5).train()
    x = torch.ones(1000, 2)
    y = dp(x)
    assert set(y[:, 0].tolist()) <= {0.0, 2.0} and torch.equal(y[:, 0], y[:, 1])


def test_build_and_forward_are_deterministic():
    m1, m2 = tiny_model(seed=3), tiny_model(seed=3)
    for (n1, p1), (n2, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2)
    v, mask = video(), make_mask(2, 8, 5)
    assert torch.equal(m1(v, mask).pred, m2(v, mask).pred)
    assert not torch.equal(tiny_model(seed=4).mask_token, m1.mask_token)


def test_attention_kernels_agree():
    q, k, vv = torch.randn(3, 2, 4, 20, 16).unbind(0)
    ref = F.scaled_dot_product_attention(q, k, vv)
    torch.testing.assert_close(math_attention(q, k, vv), ref, atol=1e-5, rtol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fp32 kernel stays fp32 inside autocast
        out = sdpa_fp32(q.bfloat16(), k.bfloat16(), vv.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=3e-2)
    qb = q.bfloat16().requires_grad_()
    assert pick_kernel(q, "auto") == "sdpa" and pick_kernel(qb, "math") == "math"
    assert pick_kernel(qb, "auto") == "sdpa"  # autotuning is off in tests: the default


@pytest.mark.parametrize("kernel", KERNELS)
def test_block_partial_queries_match_full_block(kernel):
    torch.manual_seed(0)
    blk = Block(32, 4, kernel=kernel).eval()
    with torch.no_grad():
        for p in blk.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = torch.randn(2, 12, 32)
    torch.testing.assert_close(blk(x, q_start=7), blk(x)[:, 7:], atol=1e-5, rtol=1e-5)


def test_model_output_is_the_same_for_every_kernel():
    model = tiny_model()
    v, mask = video(), make_mask(2, 8, 5)
    ref = model(v, mask).pred
    for kernel in KERNELS:
        set_attention_kernel(model, kernel)
        torch.testing.assert_close(model(v, mask).pred, ref, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="attention kernel 'flash'"):
        set_attention_kernel(model, "flash")


def test_bf16_autocast_forward_backward_on_cpu():
    model = tiny_model().train()
    v, mask = video(), make_mask(2, 8, 5)
    ref = model(v, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(v, mask)
    assert out.pred.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    assert torch.isfinite(out.loss) and abs(out.loss.item() - ref.loss.item()) < 0.05 * ref.loss.item()
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_no_weight_decay_and_layer_ids():
    model = tiny_model()
    names = dict(model.named_parameters())
    nwd = model.no_weight_decay()
    assert "mask_token" in nwd and "encoder.blocks.0.attn.q_bias" in nwd and "decoder.blocks.1.attn.v_bias" in nwd
    assert nwd <= set(names)
    assert all(names[n].ndim <= 1 for n in nwd - {"mask_token"})
    ids = {n[len("encoder."):]: model.encoder.layer_id(n[len("encoder."):]) for n in names if n.startswith("encoder.")}
    assert ids["patch_embed.proj.weight"] == 0 and ids["norm.weight"] == 5
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.3.mlp.fc2.bias"] == 4
    assert model.encoder.layer_id("blocks.2.norm1.weight") == 3
