"""tgmae.models.infonce / video_text: the InfoNCE numbers, duplicate captions, temperature,
objectives, one encoder pass, every mask generator, and 2-process DDP == 1 process."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tgmae.config import ContrastiveConfig, ModelConfig
from tgmae.masking import MaskContext, RandomMask, TubeMask
from tgmae.masking.select import select_batch_per_slice
from tgmae.models import (
    InfoNCE,
    VideoMAEArch,
    VideoMAEPretrainer,
    VideoTextPretrainer,
    build_video_text_model,
    info_nce,
)
from tgmae.weights.pretraining import load_pretraining_model, save_pretraining_model
from tgmae.models.infonce import candidate_masks, first_occurrence, info_nce_rows
from tgmae.config import OBJECTIVES
from tgmae.models.video_text import GlobalBatchNorm1d

ARCH = VideoMAEArch(embed_dim=32, depth=1, num_heads=2, decoder_dim=16, decoder_depth=1,
                    decoder_heads=1, patch_size=8, tubelet_size=2, num_frames=4, image_size=16)
GRID = ARCH.grid  # (2, 2, 2): 8 tokens
TEXT_DIM, PROJ_DIM = 24, 16



def tiny_model(objective: str = "mae+contrastive", **kw) -> VideoTextPretrainer:
    torch.manual_seed(0)
    kw.setdefault("text_projection", True)
    return VideoTextPretrainer(VideoMAEPretrainer(ARCH), TEXT_DIM, objective=objective,
                               proj_dim=PROJ_DIM, **kw).train()


def tube_masks(b: int, seed: int = 0, ratio: float = 0.75) -> torch.Tensor:
    gen, g = TubeMask(ratio), torch.Generator().manual_seed(seed)
    return torch.stack([gen(MaskContext(grid=GRID), g) for _ in range(b)])


def batch(b: int, seed: int = 0, ids: list[int] | None = None):
    """video [B, 3, 4, 16, 16], mask [B, 8], text [B, TEXT_DIM], caption_id [B]."""
    g = torch.Generator().manual_seed(seed)
    video = torch.randn(b, 3, ARCH.num_frames, ARCH.image_size, ARCH.image_size, generator=g)
    text = F.normalize(torch.randn(b, TEXT_DIM, generator=g), dim=-1)
    caption_id = torch.tensor(ids if ids is not None else list(range(b)), dtype=torch.int64)
    return video, tube_masks(b, seed), text, caption_id


# --------------------------------------------------------------------------------------------
# The loss numbers
# --------------------------------------------------------------------------------------------

def reference_rows(v, t, tau, ids):
    """Plain-Python InfoNCE rows with the documented duplicate rule (loops, math, no torch ops)."""
    def unit(x):
        n = math.sqrt(sum(a * a for a in x))
        return [a / n for a in x]

    def dot(a, b):
        return sum(x * y for x, y in zip(a, b))

    v, t = [unit(x) for x in v.tolist()], [unit(x) for x in t.tolist()]
    g = len(v)
    first = [ids.index(ids[j]) == j for j in range(g)]
    v2t, t2v = [], []
    for i in range(g):
        cands = [j for j in range(g) if j == i or (ids[j] != ids[i] and first[j])]
        v2t.append(-dot(v[i], t[i]) / tau + math.log(sum(math.exp(dot(v[i], t[j]) / tau) for j in cands)))
        cands = [j for j in range(g) if j == i or ids[j] != ids[i]]
        t2v.append(-dot(t[i], v[i]) / tau + math.log(sum(math.exp(dot(t[i], v[j]) / tau) for j in cands)))
    return torch.tensor(v2t), torch.tensor(t2v)


def test_loss_matches_hand_computation():
    # Orthonormal, perfectly paired, tau = 1: each row is -log(e / (e + 1)) = log(1 + 1/e).
    eye = torch.eye(2)
    assert float(info_nce(eye, eye, 1.0)) == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    # Unnormalized inputs, tau = 0.5: against the loop reference and the CLIP formula.
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    t = torch.tensor([[1.0, 0.5], [0.0, 2.0], [-1.0, 1.0]])
    r_v2t, r_t2v = reference_rows(v, t, 0.5, [0, 1, 2])
    got = info_nce(v, t, 1 / 0.5)
    assert float(got) == pytest.approx(float(0.5 * (r_v2t.mean() + r_t2v.mean())), abs=1e-6)
    logits = F.normalize(v) @ F.normalize(t).T / 0.5
    clip = 0.5 * (F.cross_entropy(logits, torch.arange(3)) + F.cross_entropy(logits.T, torch.arange(3)))
    torch.testing.assert_close(got, clip)


def test_loss_is_symmetric_in_video_and_text():
    g = torch.Generator().manual_seed(1)
    v, t = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    torch.testing.assert_close(info_nce(v, t, 10.0), info_nce(t, v, 10.0))
    v2t, t2v = info_nce_rows(v, t, 10.0)
    t2v_swapped, v2t_swapped = info_nce_rows(t, v, 10.0)
    torch.testing.assert_close(v2t, v2t_swapped)
    torch.testing.assert_close(t2v, t2v_swapped)
    assert not torch.allclose(v2t, t2v)  # the two directions are different terms


def test_temperature_scales_the_logits():
    g = torch.Generator().manual_seed(2)
    v = torch.randn(6, 8, generator=g)
    t = v + 0.3 * torch.randn(6, 8, generator=g)  # well aligned pairs
    ids = list(range(6))
    losses = []
    for tau in (1.0, 0.2, 0.05):
        r_v2t, r_t2v = reference_rows(v, t, tau, ids)
        got = info_nce(v, t, 1 / tau)
        assert float(got) == pytest.approx(float(0.5 * (r_v2t.mean() + r_t2v.mean())), rel=1e-5, abs=1e-6)
        losses.append(float(got))
    assert losses[0] > losses[1] > losses[2]  # sharper softmax -> lower loss on aligned pairs
    # The module's fixed temperature is the same thing.
    torch.testing.assert_close(InfoNCE(0.2)(v, t), info_nce(v, t, 5.0))


def test_learnable_temperature_gets_gradient_and_is_clamped():
    g = torch.Generator().manual_seed(3)
    v, t = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    fixed = InfoNCE(0.07)
    assert not list(fixed.parameters()) and "log_scale" in fixed.state_dict()
    nce = InfoNCE(0.07, learnable=True)
    assert nce.temperature == pytest.approx(0.07)
    nce(v, t).backward()
    assert nce.log_scale.grad is not None and float(nce.log_scale.grad.abs()) > 0
    with torch.no_grad():
        nce.log_scale.fill_(10.0)  # 1 / tau = e^10: beyond CLIP's 100
    loss = nce(v, t)
    assert nce.temperature == pytest.approx(0.01)
    assert float(nce.log_scale.detach()) == pytest.approx(math.log(100))
    torch.testing.assert_close(loss, info_nce(v, t, 100.0))
    with pytest.raises(ValueError, match="learnable temperature"):
        InfoNCE(0.001, learnable=True)
    # The fixed and learnable modules share the checkpoint key.
    InfoNCE(0.07, learnable=True).load_state_dict(fixed.state_dict())


def test_model_learnable_temperature_gets_gradient():
    model = tiny_model("mae+contrastive", learnable_temperature=True)
    out = model(*batch(4))
    out.loss.backward()
    assert float(model.nce.log_scale.grad.abs()) > 0
    assert float(out.temperature) == pytest.approx(0.07)


def test_nce_is_fp32_under_bf16_autocast():
    g = torch.Generator().manual_seed(4)
    v, t = torch.randn(6, 32, generator=g), torch.randn(6, 32, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = info_nce(v, t, 1 / 0.07)
    assert inside.dtype == torch.float32
    torch.testing.assert_close(inside, info_nce(v, t, 1 / 0.07))


# --------------------------------------------------------------------------------------------
# Duplicate captions
# --------------------------------------------------------------------------------------------

def test_duplicate_captions_follow_the_documented_rule():
    ids = [3, 7, 3, 5, 7, 3]
    g = torch.Generator().manual_seed(5)
    v, t = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    t[2] = t[5] = t[0]  # same caption id = same text
    t[4] = t[1]
    r_v2t, r_t2v = reference_rows(v, t, 0.1, ids)
    v2t, t2v = info_nce_rows(v, t, 10.0, torch.tensor(ids))
    torch.testing.assert_close(v2t, r_v2t.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(t2v, r_t2v.float(), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(v2t, info_nce_rows(v, t, 10.0)[0])  # masking changes the numbers
    assert first_occurrence(torch.tensor(ids)).tolist() == [True, True, False, True, False, False]
    keep_v2t, keep_t2v = candidate_masks(torch.tensor(ids), torch.tensor(ids), 0)
    assert keep_v2t[1].tolist() == [True, True, False, True, False, False]  # 3 and 7 once each
    assert keep_t2v[2].tolist() == [False, True, True, True, True, False]  # other clips of 3 out


def test_duplicating_a_pair_gives_the_deduplicated_losses():
    """A clip repeating row k's (video, caption) is not a negative of row k: rows k and its copy
    get row k's original losses, and every other row's video -> text loss is unchanged (the
    caption counts once)."""
    g = torch.Generator().manual_seed(6)
    v, t = torch.randn(4, 8, generator=g), torch.randn(4, 8, generator=g)
    ids = torch.tensor([10, 11, 12, 13])
    base_v2t, base_t2v = info_nce_rows(v, t, 5.0, ids)
    k = 2
    v_dup, t_dup = torch.cat([v, v[k:k + 1]]), torch.cat([t, t[k:k + 1]])
    dup_v2t, dup_t2v = info_nce_rows(v_dup, t_dup, 5.0, torch.cat([ids, ids[k:k + 1]]))
    torch.testing.assert_close(dup_v2t[:4], base_v2t)
    torch.testing.assert_close(dup_v2t[4], base_v2t[k])
    torch.testing.assert_close(dup_t2v[k], base_t2v[k])
    torch.testing.assert_close(dup_t2v[4], base_t2v[k])
    # Without caption ids the copy is a negative: row k's loss goes up.
    naive_v2t, _ = info_nce_rows(v_dup, t_dup, 5.0)
    assert float(naive_v2t[k]) > float(base_v2t[k]) + 1e-3


def test_missing_caption_is_a_clear_error():
    v = torch.randn(3, 4)
    with pytest.raises(ValueError, match="caption_id < 0"):
        info_nce(v, v, 1.0, torch.tensor([0, -1, 2]))


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------

class Counter:
    def __init__(self, module: nn.Module):
        self.calls = 0
        module.register_forward_hook(lambda *_: self._inc())

    def _inc(self) -> None:
        self.calls += 1


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_objectives_select_the_right_terms(objective):
    model = tiny_model(objective, weight=0.5)
    encoder_passes = Counter(model.mae.encoder.patch_embed)
    decoder_runs = Counter(model.mae.decoder)
    out = model(*batch(4))
    out.loss.backward()
    assert encoder_passes.calls == 1
    assert torch.isfinite(out.loss_nce) and float(out.loss_nce.detach()) > 0
    named = dict(model.named_parameters())
    heads = [p for n, p in named.items() if not n.startswith("mae.")]
    decoder = list(model.decoder_parameters())
    encoder = [p for n, p in named.items() if n.startswith("mae.encoder.")]
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder)
    if objective == "mae":
        torch.testing.assert_close(out.loss, out.loss_mse)
        assert not out.loss_nce.requires_grad
        assert all(p.grad is None and not p.requires_grad for p in heads)
        assert all(p.grad is not None for p in decoder)
        assert set(out.metrics()) == {"loss_mse", "loss_nce", "temperature"}
    elif objective == "contrastive":
        torch.testing.assert_close(out.loss, out.loss_nce)
        assert out.loss_mse is None and out.pred is None and decoder_runs.calls == 0
        assert all(p.grad is None and not p.requires_grad for p in decoder)
        assert all(p.grad is not None for p in heads)
        assert set(out.metrics()) == {"loss_nce", "temperature"}
    else:
        torch.testing.assert_close(out.loss, out.loss_mse + 0.5 * out.loss_nce)
        assert decoder_runs.calls == 1
        assert all(p.grad is not None for p in heads + decoder)
    # Every parameter that requires grad got one: DDP needs no find_unused_parameters.
    assert all(p.grad is not None for p in named.values() if p.requires_grad)


def test_video_embedding_comes_from_the_single_encoder_pass():
    model = tiny_model("mae+contrastive")
    passes = Counter(model.mae.encoder.patch_embed)
    video, mask, text, ids = batch(4)
    out = model(video, mask, text, ids)
    assert passes.calls == 1
    # The NCE term is a function of this very latent, and it reaches the encoder through it.
    (g_latent,) = torch.autograd.grad(out.loss_nce, out.latent, retain_graph=True)
    assert g_latent.abs().sum() > 0
    out.loss_nce.backward()
    assert model.mae.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.decoder_parameters())
    with torch.no_grad():
        again = F.normalize(model.video_head(out.latent.mean(dim=1)), dim=-1)
    torch.testing.assert_close(out.video_embedding, again)
    assert out.latent.shape == (4, int((~mask[0]).sum()), ARCH.embed_dim)
    torch.testing.assert_close(out.video_embedding.norm(dim=-1), torch.ones(4))


def _tgm_like(b: int, select: str) -> torch.Tensor:
    """Per-time-slice top/bottom-k of a score map, as TGM builds its masks."""
    g = torch.Generator().manual_seed(7)
    t, h, w = GRID
    return select_batch_per_slice(torch.rand(b, t, h * w, generator=g), 0.5, select)


@pytest.mark.parametrize("masks", ["random", "tube", "tgm-top", "tgm-bottom"])
def test_every_mask_generator_works(masks):
    model = tiny_model("mae+contrastive")
    video, _, text, ids = batch(4)
    if masks in ("random", "tube"):
        gen = RandomMask(0.75) if masks == "random" else TubeMask(0.75)
        g = torch.Generator().manual_seed(8)
        mask = torch.stack([gen(MaskContext(grid=GRID), g) for _ in range(4)])
    else:
        mask = _tgm_like(4, masks.split("-")[1])
    out = model(video, mask, text, ids)
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.pred.shape[1] == int(mask[0].sum())


def test_global_batchnorm_equals_batchnorm_in_one_process():
    torch.manual_seed(9)
    ours, ref = GlobalBatchNorm1d(5), nn.BatchNorm1d(5)
    ref.load_state_dict(ours.state_dict())
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(ours.weight)
    x = (torch.randn(7, 5) * 3 + 1).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x_ref)
    torch.testing.assert_close(y, y_ref)
    (y * torch.arange(5.0)).sum().backward()
    (y_ref * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, ref.weight.grad)
    torch.testing.assert_close(ours.running_mean, ref.running_mean)
    torch.testing.assert_close(ours.running_var, ref.running_var)
    ours.eval(), ref.eval()
    torch.testing.assert_close(ours(x), ref(x_ref))


def test_eval_mode_uses_running_statistics():
    model = tiny_model("mae+contrastive")
    video, mask, text, ids = batch(4)
    model(video, mask, text, ids)
    model.eval()
    with torch.no_grad():
        one = model(video[:1], mask[:1], text[:1], ids[:1])  # batch 1 works outside training
    assert torch.isfinite(one.loss_nce)


def test_text_dimension_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="text_projection=true"):
        VideoTextPretrainer(VideoMAEPretrainer(ARCH), 512, proj_dim=256, text_projection=False)
    model = VideoTextPretrainer(VideoMAEPretrainer(ARCH), PROJ_DIM, proj_dim=PROJ_DIM)
    assert isinstance(model.text_proj, nn.Identity)
    with pytest.raises(ValueError, match="text_embedding must be"):
        model(*batch(2)[:2], torch.randn(2, PROJ_DIM + 1))


def test_wraps_a_loaded_checkpoint_and_exports_the_official_layout(tmp_path):
    torch.manual_seed(10)
    path = save_pretraining_model(VideoMAEPretrainer(ARCH), tmp_path / "mae.safetensors")
    loaded = load_pretraining_model(path)
    model = VideoTextPretrainer(loaded, TEXT_DIM, objective="mae+contrastive", proj_dim=PROJ_DIM,
                                text_projection=True).train()
    keys = set(model.state_dict())
    assert {f"mae.{k}" for k in loaded.state_dict()} <= keys
    assert {k for k in keys if not k.startswith("mae.")} == {
        "video_head.fc1.weight", "video_head.bn1.weight", "video_head.bn1.bias",
        "video_head.bn1.running_mean", "video_head.bn1.running_var", "video_head.bn1.num_batches_tracked",
        "video_head.fc2.weight", "video_head.bn2.running_mean", "video_head.bn2.running_var",
        "video_head.bn2.num_batches_tracked", "text_proj.weight", "nce.log_scale"}
    video, mask, text, ids = batch(2)
    out = model(video, mask, text, ids)
    with torch.no_grad():
        torch.testing.assert_close(out.loss_mse, load_pretraining_model(path).train()(video, mask).loss)
    again = load_pretraining_model(save_pretraining_model(model.mae, tmp_path / "out.safetensors"))
    assert again.state_dict().keys() == loaded.state_dict().keys()
    assert model.no_weight_decay() >= {"mae.mask_token", "nce.log_scale"}


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_build_from_config_sections(objective):
    cfg = ContrastiveConfig(objective=objective, weight=0.3, temperature=0.1,
                            learnable_temperature=True, proj_dim=32, text_projection=True)
    torch.manual_seed(11)
    model = build_video_text_model(ModelConfig(preset="tiny"), cfg, num_frames=4, image_size=32,
                                   text_dim=48)
    assert model.objective == objective and model.weight == 0.3
    assert model.nce.temperature == pytest.approx(0.1)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert ("nce.log_scale" in trainable) == (objective != "mae")
    assert ("mae.decoder.head.weight" in trainable) == (objective != "contrastive")
    assert model.text_proj.weight.shape == (32, 48) and model.arch.embed_dim == 128


# --------------------------------------------------------------------------------------------
# Two processes (gloo) == one process on the concatenated batch
# --------------------------------------------------------------------------------------------

DDP_IDS = [0, 1, 2, 1, 3, 0]  # duplicates inside a rank's shard and across ranks
LOCAL = 3


def _run_steps(model: nn.Module, video, mask, text, ids) -> dict:
    """Two forward/backward steps (the second surfaces DDP's unused-parameter error)."""
    for _ in range(2):
        for p in model.parameters():
            p.grad = None
        out = model(video, mask, text, ids)
        out.loss.backward()
    inner = model.module if hasattr(model, "module") else model
    return {
        "loss": out.loss.detach(), "loss_nce": out.loss_nce.detach(),
        "grads": {n: p.grad.clone() for n, p in inner.named_parameters() if p.grad is not None},
        "running_mean": inner.video_head.bn1.running_mean.clone(),
    }


def _ddp_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        video, mask, text, ids = batch(world * LOCAL, seed=12, ids=DDP_IDS)
        rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
        results = {}
        for objective in OBJECTIVES:
            model = DistributedDataParallel(tiny_model(objective, learnable_temperature=True))
            results[objective] = _run_steps(model, video[rows], mask[rows], text[rows], ids[rows])
            del model  # DDP reducers must be gone before the group is destroyed
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
        dist.barrier()  # both ranks finished their collectives before either tears gloo down
    finally:
        import gc

        gc.collect()
        dist.destroy_process_group()


def test_ddp_two_processes_match_one_process_on_the_concatenated_batch(tmp_path, free_port):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, free_port, str(tmp_path)), nprocs=2, join=True)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    video, mask, text, ids = batch(2 * LOCAL, seed=12, ids=DDP_IDS)
    for objective in OBJECTIVES:
        single = _run_steps(tiny_model(objective, learnable_temperature=True), video, mask, text, ids)
        a, b = r0[objective], r1[objective]
        # Each rank's loss covers its rows; their mean is the loss of the concatenated batch.
        torch.testing.assert_close((a["loss"] + b["loss"]) / 2, single["loss"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close((a["loss_nce"] + b["loss_nce"]) / 2, single["loss_nce"],
                                   rtol=1e-5, atol=1e-6)
        assert a["grads"].keys() == b["grads"].keys() == single["grads"].keys()
        for name, g in single["grads"].items():
            torch.testing.assert_close(a["grads"][name], b["grads"][name], rtol=0, atol=0)
            torch.testing.assert_close(a["grads"][name], g, rtol=1e-4, atol=1e-6, msg=f"{objective}: {name}")
        torch.testing.assert_close(a["running_mean"], single["running_mean"], rtol=1e-5, atol=1e-6)
        if objective != "mae":
            assert "nce.log_scale" in single["grads"] and "video_head.fc1.weight" in single["grads"]


def test_view_ratio_contrasts_a_lighter_masked_second_pass():
    # contrastive.view_ratio: InfoNCE pools a second encoder pass over a subset of the MAE mask
    # (0: the whole clip); the MSE term is the same as without it.
    video, mask, text, ids = batch(4)
    plain = tiny_model("mae+contrastive")
    model = tiny_model("mae+contrastive", view_ratio=0.0)
    out, ref = model(video, mask, text, ids), plain(video, mask, text, ids)
    torch.testing.assert_close(out.loss_mse, ref.loss_mse)
    full = model.mae.forward_encoder(video, model.mae.split(torch.zeros_like(mask)))
    want = F.normalize(model.video_head(full.mean(dim=1)).float(), dim=-1)
    torch.testing.assert_close(out.video_embedding, want, rtol=1e-4, atol=1e-5)
    out.loss.backward()
    assert model.mae.encoder.patch_embed.proj.weight.grad is not None
    half = tiny_model("mae+contrastive", view_ratio=0.5)
    torch.manual_seed(1)
    view = half.view_mask(mask)
    assert (view.sum(dim=1) == 4).all() and not (view & ~mask).any()  # a subset of the MAE mask
    with pytest.raises(ValueError, match="view_ratio"):
        tiny_model("mae+contrastive", view_ratio=0.9).view_mask(mask)  # 7 of 8 > the 6 masked
    from tgmae.config import ConfigError
    with pytest.raises(ConfigError, match="contrastive.view_ratio"):
        ContrastiveConfig(view_ratio=-0.1)
    assert build_video_text_model(ModelConfig(preset="tiny"), ContrastiveConfig(view_ratio=0.25, proj_dim=TEXT_DIM), 4, 32, TEXT_DIM).view_ratio == 0.25
