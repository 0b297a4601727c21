"""tgmae.models.block.run_block: activation checkpointing (train.grad_checkpoint) gives the loss
and gradients of the plain model - stochastic depth, dual masking and the contrastive loss too -
and really recomputes the blocks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from tgmae.config import ContrastiveConfig, ModelConfig, TrainConfig
from tgmae.masking import MaskContext, TubeMask
from tgmae.models import build_pretraining_model, build_video_text_model

GRID = (4, 4, 4)


def build(objective: str, grad_checkpoint: bool):
    torch.manual_seed(0)
    model_cfg = ModelConfig(preset="micro", patch_size=8, drop_path=0.2)  # DropPath draws are replayed
    options = dict(grad_checkpoint=grad_checkpoint, decoder_ratio=0.5)
    if objective == "mae":
        return build_pretraining_model(model_cfg, 8, 32, **options).train()
    cfg = ContrastiveConfig(objective=objective, proj_dim=16, text_projection=True)
    return build_video_text_model(model_cfg, cfg, 8, 32, text_dim=24, **options).train()


def step(model, objective: str):
    """One forward and backward from a fixed seed -> (loss, {name: grad}, encoder block calls)."""
    calls = []
    hook = model.get_submodule("encoder.blocks.0.norm1" if objective == "mae" else "mae.encoder.blocks.0.norm1"
                               ).register_forward_hook(lambda *_: calls.append(1))
    g = torch.Generator().manual_seed(1)
    video = torch.randn(4, 3, 8, 32, 32, generator=g)
    mask = torch.stack([TubeMask(0.75)(MaskContext(grid=GRID), g) for _ in range(4)])
    torch.manual_seed(7)
    if objective == "mae":
        out = model(video, mask)
    else:
        out = model(video, mask, F.normalize(torch.randn(4, 24, generator=g), dim=-1))
    out.loss.backward()
    hook.remove()
    return out.loss.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}, len(calls)


@pytest.mark.parametrize("objective", ["mae", "mae+contrastive", "contrastive"])
def test_checkpointed_blocks_give_the_same_loss_and_gradients(objective):
    loss, grads, calls = step(build(objective, False), objective)
    loss_cp, grads_cp, calls_cp = step(build(objective, True), objective)
    assert (calls, calls_cp) == (1, 2)  # checkpointing recomputes the block in the backward pass
    # (its first layer: recomputation stops early once the saved tensors are back)
    torch.testing.assert_close(loss_cp, loss, rtol=0, atol=1e-6)
    assert grads_cp.keys() == grads.keys() and grads
    for name in grads:
        torch.testing.assert_close(grads_cp[name], grads[name], rtol=0, atol=1e-6, msg=name)


def test_no_recomputation_without_autograd_and_the_config_key():
    model = build("mae", True)
    with torch.no_grad():
        calls = []
        model.encoder.blocks[0].norm1.register_forward_hook(lambda *_: calls.append(1))
        model(torch.randn(1, 3, 8, 32, 32), TubeMask(0.75)(MaskContext(grid=GRID), torch.Generator())[None])
    assert calls == [1]
    assert TrainConfig().grad_checkpoint is False and TrainConfig(grad_checkpoint=True).grad_checkpoint
