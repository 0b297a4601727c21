"""tgmae.distributed: what torchrun says a process is, and what a joined group says (one home)."""

from __future__ import annotations

import torch.distributed as dist

from tgmae.distributed import init_distributed, init_distributed_if_launched, rank_world
from tgmae.lifetime import launch_env, local_rank


def local_numel(tensors) -> int:
    """Elements this process holds of `tensors`: a DTensor's local shard, a plain tensor whole."""
    from torch.distributed.tensor import DTensor

    return sum((t.to_local() if isinstance(t, DTensor) else t).numel() for t in tensors)


def test_without_torchrun_everything_is_one_process(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    assert not dist.is_initialized()
    assert launch_env() == (0, 1) and rank_world() == (0, 1) and local_rank() == 0 and local_rank(default=2) == 2
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.is_main, info.enabled) == (0, 1, 0, True, False)
    assert not init_distributed_if_launched() and not dist.is_initialized()


def test_torchrun_environment_is_read(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert launch_env() == (3, 4) and local_rank() == 1 == local_rank(default=5)
    assert rank_world() == (0, 1)  # no group joined: collectives stay local
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    assert not init_distributed_if_launched()  # no rendezvous address: nothing to join



def _net():
    from torch import nn

    from tgmae.models.block import Block

    return nn.Sequential(nn.Linear(8, 16), Block(16, 2), Block(16, 2), nn.LayerNorm(16))


def _batch(rank: int):
    import torch

    return torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(10 + rank))


def _fsdp_worker(rank: int, world: int, port: int, out: str) -> None:
    import os
    from pathlib import Path

    import torch

    from tgmae.distributed import fsdp_shard, grad_sync, is_fsdp
    from tgmae.weights import checkpoint as ckpt

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(rank)  # different inits: sharding takes rank 0's
    model = _net()
    blocks = [model[1], model[2]]
    fsdp_shard(model, blocks)
    assert is_fsdp(model) and all(is_fsdp(b) for b in blocks)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = _batch(rank)
    for micro, last in ((0, False), (1, True)):  # one accumulated step: reduced on the last only
        with grad_sync(model, enabled=last):
            model(x[micro * 2:(micro + 1) * 2]).pow(2).mean().backward()
    opt.step()
    states = ckpt.train_states(model, opt)  # collective; full on rank 0 only
    held = local_numel(model.parameters())
    if rank == 0:
        torch.save(states, Path(out) / "states.pt")
    dist.barrier()
    # every rank reads the file and keeps its shard; gathering again gives the same states
    again = fsdp_shard(_net(), [])
    opt2 = torch.optim.AdamW(again.parameters(), lr=1e-2)
    model_state, optim_state = torch.load(Path(out) / "states.pt", weights_only=True)
    ckpt.load_model_weights(again, model_state, "states.pt")
    ckpt.load_optimizer_state(again, opt2, optim_state)
    back = ckpt.train_states(again, opt2)
    if rank == 0:
        torch.save({"states": states, "back": back, "held": held}, Path(out) / "result.pt")
    dist.barrier()
    dist.destroy_process_group()


def test_fsdp_shards_take_rank_0s_weights_and_gather_into_the_usual_state_dicts(tmp_path, free_port):
    """2 gloo processes: `fsdp_shard` (per block, then the root), an accumulated step under
    `grad_sync`, `train_states` (full dicts in torch's layouts) and the way back
    (`load_model_weights`, `load_optimizer_state`) against one plain process."""
    import torch
    import torch.multiprocessing as mp

    mp.spawn(_fsdp_worker, args=(2, free_port, str(tmp_path)), nprocs=2, join=True)
    result = torch.load(tmp_path / "result.pt", weights_only=True)
    torch.manual_seed(0)
    ref = _net()
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-2)
    # FSDP averages over ranks the gradients each rank summed over its micro-batches
    sum(ref(_batch(r)[m * 2:(m + 1) * 2]).pow(2).mean() for r in (0, 1) for m in (0, 1)).div(2).backward()
    opt.step()
    (model_state, optim_state), (model_back, optim_back) = result["states"], result["back"]
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(model_state[k], v, rtol=0, atol=1e-6)
        assert torch.equal(model_back[k], model_state[k])
    want = opt.state_dict()
    assert optim_state["param_groups"] == want["param_groups"] == optim_back["param_groups"]
    for i, s in want["state"].items():
        for name in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(optim_state["state"][i][name], s[name], rtol=0, atol=1e-6)
            assert torch.equal(optim_back["state"][i][name], optim_state["state"][i][name])
    full = sum(p.numel() for p in ref.parameters())
    assert abs(result["held"] / full - 0.5) < 0.05  # rank 0 holds about half of every tensor


def test_a_bad_torchrun_environment_is_refused_naming_the_variable(monkeypatch):
    """Re-trial 29B T4: RANK=abc was int()'s ValueError traceback; a negative or out-of-range
    value went on (RANK=2 of WORLD_SIZE=2). Each is a SettingsError naming the variable."""
    import pytest

    from tgmae.errors import SettingsError

    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    for env, said in (({"RANK": "abc", "WORLD_SIZE": "2"}, "RANK='abc': expected a whole number >= 0"),
                      ({"WORLD_SIZE": "0"}, "WORLD_SIZE='0': expected a whole number >= 1"),
                      ({"RANK": "-1", "WORLD_SIZE": "2"}, "RANK='-1': expected a whole number >= 0"),
                      ({"RANK": "2", "WORLD_SIZE": "2"}, "RANK=2 must be in [0, WORLD_SIZE=2)"),
                      ({"RANK": "1", "WORLD_SIZE": "1"}, "RANK=1 must be in [0, WORLD_SIZE=1)")):
        with monkeypatch.context() as m:
            for key, value in env.items():
                m.setenv(key, value)
            with pytest.raises(SettingsError) as e:
                launch_env()
            assert str(e.value).startswith(said), str(e.value)
    monkeypatch.setenv("WORLD_SIZE", "2")  # without RANK: it waited for peers for ever (re-trial 30A L2)
    with pytest.raises(SettingsError, match=r"^WORLD_SIZE=2 without RANK: torchrun sets both"):
        launch_env()
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setenv("RANK", "1")  # without WORLD_SIZE: one process, rank 0 (set for something else;
    assert launch_env() == (0, 1)  # as rank 1 of 1, extract left its features to no rank 0: 30A S2)
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(SettingsError, match="^LOCAL_RANK='x': expected a whole number >= 0"):
        local_rank()
    monkeypatch.setenv("LOCAL_RANK", " 1 ")  # int() takes the blanks around a number, as torch does
    assert local_rank() == 1
