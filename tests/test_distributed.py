"""tgmae.distributed: what torchrun says a process is, and what a joined group says (one home)."""

from __future__ import annotations

import pytest
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


_JOINS = '''
import sys

import torch
import torch.distributed as dist

import tgmae.cli as cli
import tgmae.distributed as d


def main(rest):
    d.RENDEZVOUS_SAY_S = 0.2
    if rest == ["if_launched"]:  # caption's and masks' way in
        assert d.init_distributed_if_launched()
    else:
        d.init_distributed("cpu")
    rank, world = d.rank_world()
    t = d.all_reduce_sum(torch.tensor([rank + 1.0]))
    print(dist.get_backend(), rank, world, int(t.item()), flush=True)


cli.COMMANDS["pretrain"] = ("__main__:main", "")
sys.exit(cli.main(["pretrain", *sys.argv[1:]]))
'''


def _start_outside_torchrun(ranks, world: int, port: int, *args: str) -> list:
    """`tgmae pretrain ARGS` processes joining a group of `world` as `ranks`, started as a shell starts
    them with RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT set (no torchrun)."""
    import os
    import signal
    import subprocess
    import sys
    from pathlib import Path

    env = {k: v for k, v in os.environ.items() if not k.startswith("TORCHELASTIC_") and k != "TGMAE_DEBUG"}
    env.update(PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"), OMP_NUM_THREADS="1",
               WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return [subprocess.Popen([sys.executable, "-c", _JOINS, *args], text=True,
                             env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
            for rank in ranks]


@pytest.mark.parametrize("way_in", ["init_distributed", "if_launched"])
def test_outside_torchrun_two_processes_meet_on_gloo(free_port, way_in):
    """Re-trial 31A L1: a group started without torchrun meets in tgmae's rendezvous (a TCPStore
    rank 0 serves), then joins gloo on the CPU (NCCL untouched) and runs collectives; through
    `init_distributed` (training, evaluation) and `init_distributed_if_launched` (caption, masks)."""
    procs = _start_outside_torchrun([0, 1], 2, free_port, way_in)
    try:
        outs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for rank, (p, (out, err)) in enumerate(zip(procs, outs)):
        assert p.returncode == 0 and out == f"gloo {rank} 2 3\n", (out, err)
        assert "nccl" not in err.lower(), err


def _wait_for_line(proc, text: str, seconds: float = 60.0) -> str:
    """The first line of `proc`'s stderr holding `text` (AssertionError after `seconds` without it)."""
    import select
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if select.select([proc.stderr], [], [], 0.5)[0]:
            line = proc.stderr.readline()
            assert line, f"stderr closed before {text!r}: exit {proc.wait()}"
            if text in line:
                return line
    raise AssertionError(f"no {text!r} within {seconds} s")


@pytest.mark.parametrize("rank,sig,code", [(0, "SIGTERM", 143), (0, "SIGINT", 130), (1, "SIGTERM", 143)])
def test_outside_torchrun_a_process_without_its_peers_says_so_and_stops(free_port, rank, sig, code):
    """Re-trial 31A L1: `WORLD_SIZE=2 RANK=0 MASTER_ADDR=... MASTER_PORT=... tgmae pretrain` with no
    peer coming waited in torch's rendezvous (C++) for ever, without a line, deaf to Ctrl-C and
    SIGTERM. It says what it waits for, and a stop ends it in its one line (exit 130 / 143; the
    line is rank 0's, as under torchrun)."""
    import signal

    (proc,) = _start_outside_torchrun([rank], 2, free_port)
    try:
        line = _wait_for_line(proc, "waiting for")
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=15)
    finally:  # one still waiting (in torch's rendezvous, stops were ignored) is not left behind
        if proc.poll() is None:
            proc.kill()
    missing = "1 more process" if rank == 0 else "rank 0"
    assert line.rstrip().endswith(f"waiting for {missing} (WORLD_SIZE=2) at 127.0.0.1:{free_port}") or (
        rank == 1 and f"waiting for rank 0 (WORLD_SIZE=2) at 127.0.0.1:{free_port}: not reachable yet (" in line), line
    assert proc.returncode == code and "Traceback" not in err, err
    assert rank > 0 or err.strip().splitlines()[-1] == (f"tgmae pretrain: stopped ({sig}); what it finished is kept: "
                                                        "rerun the same command to go on"), err


def test_outside_torchrun_the_rendezvous_refuses_what_cannot_meet(monkeypatch, free_port):
    """Re-trial 31A L1: missing / bad MASTER_ADDR / MASTER_PORT, a port rank 0 cannot listen on, and
    peers that do not come within the timeout are SettingsErrors naming the variables (torch's
    rendezvous waited, or raised its own traceback)."""
    import datetime
    import socket

    from tgmae.distributed import rendezvous
    from tgmae.errors import SettingsError

    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.delenv("MASTER_PORT", raising=False)
    second = datetime.timedelta(seconds=1)
    with pytest.raises(SettingsError, match="^WORLD_SIZE=2 without MASTER_ADDR and MASTER_PORT: torchrun sets"):
        rendezvous(0, 2, second)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "http")
    with pytest.raises(SettingsError, match=r"^MASTER_PORT='http': expected a port number in \[1, 65535\]"):
        rendezvous(0, 2, second)
    monkeypatch.setenv("MASTER_PORT", str(free_port))
    with pytest.raises(SettingsError, match=r"^waited 0:00:00.200000 for rank 0 to come \(WORLD_SIZE=2, RANK=1\) "
                                            rf"at MASTER_ADDR=127.0.0.1 MASTER_PORT={free_port}: start every rank"):
        rendezvous(1, 2, datetime.timedelta(seconds=0.2))  # nothing listens there
    with socket.socket() as held:
        held.bind(("", free_port))
        held.listen()
        with pytest.raises(SettingsError, match=rf"^MASTER_PORT={free_port}: rank 0 cannot listen there \("):
            rendezvous(0, 2, second)


def test_under_torchrun_the_group_is_joined_through_torchruns_rendezvous(monkeypatch):
    """Re-trial 31A L1: tgmae's own rendezvous is for processes started without torchrun; under it
    (its agent's variables set) the group is joined as before, through torchrun's store."""
    import tgmae.distributed as d

    calls = []
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "none")
    monkeypatch.setattr(d.dist, "init_process_group", lambda **kw: calls.append(kw))
    monkeypatch.setattr(d, "rendezvous", lambda *a: pytest.fail("tgmae's rendezvous under torchrun"))
    d.join_group("gloo", 1, 2)
    assert calls == [{"backend": "gloo", "rank": 1, "world_size": 2, "timeout": None}]
