"""train.strategy=fsdp on 2 gloo processes (CPU) against DDP: the same losses, about half the
parameter and optimizer memory per process, the same checkpoint files (a kill -9 resumes
bit-identically, and a DDP checkpoint resumes under FSDP and back)."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import Dataset

from tgmae.config import ConfigError, RunConfig, load_config
from tgmae.models.block import Block
from tgmae.train.loop import StepOutput, Trainer
from tgmae.train.metrics import read_metrics
from tgmae.train.optim import build_optimizer, param_groups
from tgmae.weights import checkpoint as ckpt

STEPS = 20


class Data(Dataset):
    def __init__(self, n: int = 64):
        g = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 8, generator=g)
        self.y = torch.sin(self.x @ torch.randn(8, 1, generator=g))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict:
        return {"x": self.x[i], "y": self.y[i], "index": i, "load_failures": 0}


class BlockNet(nn.Module):
    """[B, 8] -> [B, 1] through two of tgmae's transformer blocks (the units FSDP shards) on 2 tokens."""

    def __init__(self, drop_path: float = 0.0) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 32)
        self.blocks = nn.ModuleList([Block(16, 2, drop_path=drop_path), Block(16, 2, drop_path=drop_path)])
        self.norm = nn.LayerNorm(16)
        self.out = nn.Linear(32, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x).view(-1, 2, 16)
        for blk in self.blocks:
            h = blk(h)
        return self.out(self.norm(h).flatten(1))


class BlockTask:
    name = "toy"

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.optimizer = None

    def build_model(self) -> nn.Module:
        return BlockNet(self.cfg.model.drop_path)  # seeded by the loop with train.seed + rank: DDP and FSDP take rank 0's

    def train_dataset(self) -> Dataset:
        return Data()

    def param_groups(self, model: nn.Module) -> list[dict]:
        return param_groups(model.named_parameters(), self.cfg.optim.weight_decay)

    def build_optimizer(self, groups, optim_cfg, device):
        self.optimizer = build_optimizer(groups, optim_cfg, device)
        return self.optimizer

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Every rank on the whole set (under FSDP the loop passes a gathered plain copy)."""
        data = Data()
        with torch.no_grad():
            return {"val_mse": float(((model(data.x) - data.y) ** 2).mean())}

    def step(self, model: nn.Module, batch: dict) -> StepOutput:
        loss = ((model(batch["x"]).float() - batch["y"]) ** 2).mean()
        return StepOutput(loss, {"mse": loss.detach()})


def _cfg(out_dir: Path, strategy: str, *extra: str) -> RunConfig:
    return load_config(None, [
        f"train.output_dir={out_dir}", "train.epochs=3", f"train.max_steps={STEPS}", "train.batch_size=4",
        "train.precision=fp32", "train.device=cpu", "train.attention=sdpa", "train.log_every=1",
        f"train.strategy={strategy}", "data.num_workers=0", "log.progress=false", "log.tensorboard=false",
        "optim.lr=0.01", "optim.warmup_epochs=0.5", "optim.clip_grad=1.0", "checkpoint.every_steps=3", *extra])


def _worker(rank: int, world: int, port: int, out_dir: str, strategy: str, kill_at: int, extra: tuple) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from test_distributed import local_numel
    from tgmae.distributed import cleanup

    cfg = _cfg(Path(out_dir), strategy, *extra)
    task = BlockTask(cfg)

    def hook(state):
        if state.position.step == 1:  # what this process holds of the parameters and AdamW's state
            opt_state = [t for s in task.optimizer.state.values() for t in s.values() if t.ndim > 0]
            sizes = {"params": local_numel(state.model.parameters()), "optimizer": local_numel(opt_state),
                     "full": sum(p.numel() for p in state.model.parameters())}
            (Path(out_dir) / f"memory{rank}.json").write_text(json.dumps(sizes))
        if state.position.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # kill -9: no cleanup, no last checkpoint

    result = Trainer(task, cfg, hooks=[hook]).fit()
    torch.save(torch.cat([p.detach().flatten() for p in result.model.parameters()]), Path(out_dir) / f"rank{rank}.pt")
    del result
    cleanup()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(out_dir: Path, strategy: str, kill_at: int = 0, *extra: str) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    args = (2, _port(), str(out_dir), strategy, kill_at, extra)
    if kill_at:
        with pytest.raises(mp.ProcessExitedException):
            mp.spawn(_worker, args=args, nprocs=2, join=True)
    else:
        mp.spawn(_worker, args=args, nprocs=2, join=True)


def losses(out_dir: Path, key: str = "loss") -> list[float]:
    return [r[key] for r in read_metrics(out_dir / "metrics.jsonl") if key in r]


def final(out_dir: Path) -> torch.Tensor:
    r0, r1 = (torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert torch.equal(r0, r1)  # every rank ends with the whole, same model
    return r0


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    run(root / "ddp", "ddp")
    run(root / "fsdp", "fsdp")
    return root


def test_fsdp_losses_equal_ddp_over_20_steps(uninterrupted):
    ddp, fsdp = losses(uninterrupted / "ddp"), losses(uninterrupted / "fsdp")
    assert len(ddp) == len(fsdp) == STEPS
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(ddp), rtol=0, atol=1e-5)
    # the clipped norm is the global one (over every shard), as DDP's
    torch.testing.assert_close(torch.tensor(losses(uninterrupted / "fsdp", "grad_norm")),
                               torch.tensor(losses(uninterrupted / "ddp", "grad_norm")), rtol=0, atol=1e-5)
    torch.testing.assert_close(final(uninterrupted / "fsdp"), final(uninterrupted / "ddp"), rtol=0, atol=1e-5)
    evals = [losses(uninterrupted / s, "val_mse") for s in ("ddp", "fsdp")]
    assert len(evals[0]) == 2  # epochs 1 and 2 (the step budget ends inside epoch 3)
    torch.testing.assert_close(torch.tensor(evals[1]), torch.tensor(evals[0]), rtol=0, atol=1e-5)


def test_fsdp_gradient_accumulation_matches_the_large_batch(uninterrupted, tmp_path):
    """accum_steps=2 of batch 2 == batch 4: gradients reduced only on the last micro-batch."""
    run(tmp_path / "accum", "fsdp", 0, "train.batch_size=2", "train.accum_steps=2")
    torch.testing.assert_close(final(tmp_path / "accum"), final(uninterrupted / "fsdp"), rtol=0, atol=1e-5)


def test_fsdp_bf16_computes_in_bf16_and_tracks_ddp(tmp_path):
    """train.precision=bf16: FSDP's MixedPrecisionPolicy (bf16 compute, fp32 shards and reduction)
    stays within bf16 rounding of DDP under autocast."""
    run(tmp_path / "ddp", "ddp", 0, "train.precision=bf16")
    run(tmp_path / "fsdp", "fsdp", 0, "train.precision=bf16")
    ddp, fsdp = torch.tensor(losses(tmp_path / "ddp")), torch.tensor(losses(tmp_path / "fsdp"))
    assert len(fsdp) == STEPS and torch.isfinite(fsdp).all()
    torch.testing.assert_close(fsdp, ddp, rtol=0, atol=3e-2)
    assert ckpt.load_checkpoint(ckpt.find_latest(tmp_path / "fsdp" / "checkpoints")).model_state["inp.weight"].dtype \
        == torch.float32  # the checkpoint keeps the fp32 master weights


def test_fsdp_holds_about_half_of_parameters_and_optimizer_state_per_process(uninterrupted):
    for strategy, share in (("ddp", 1.0), ("fsdp", 0.5)):
        for rank in (0, 1):
            m = json.loads((uninterrupted / strategy / f"memory{rank}.json").read_text())
            assert m["params"] / m["full"] == pytest.approx(share, abs=0.06), (strategy, rank, m)
            assert m["optimizer"] / (2 * m["full"]) == pytest.approx(share, abs=0.06), (strategy, rank, m)


def test_fsdp_checkpoint_is_the_usual_files(uninterrupted):
    """model.safetensors holds full tensors under the plain names; state.pt torch's optimizer layout."""
    a = ckpt.load_checkpoint(ckpt.find_latest(uninterrupted / "ddp" / "checkpoints"))
    b = ckpt.load_checkpoint(ckpt.find_latest(uninterrupted / "fsdp" / "checkpoints"))
    assert a.position == b.position and a.model_state.keys() == b.model_state.keys()
    for k, v in a.model_state.items():
        assert v.shape == b.model_state[k].shape
        torch.testing.assert_close(b.model_state[k], v, rtol=0, atol=1e-5)
    assert a.optimizer_state["param_groups"] == b.optimizer_state["param_groups"]
    assert a.optimizer_state["state"].keys() == b.optimizer_state["state"].keys()
    for i, s in a.optimizer_state["state"].items():
        torch.testing.assert_close(b.optimizer_state["state"][i]["exp_avg"], s["exp_avg"], rtol=0, atol=1e-5)


def test_fsdp_kill_9_and_resume_is_bit_identical(uninterrupted, tmp_path):
    run(tmp_path / "run", "fsdp", 7)  # killed after the checkpoint of step 6
    assert ckpt.find_latest(tmp_path / "run" / "checkpoints").name == "step_00000006"
    run(tmp_path / "run", "fsdp")
    assert torch.equal(final(tmp_path / "run"), final(uninterrupted / "fsdp"))
    assert losses(tmp_path / "run") == losses(uninterrupted / "fsdp")


def test_each_rank_resumes_its_own_rng_stream(tmp_path):
    """Re-trial 27B S1: drop-path draws from each rank's global RNG (seeded train.seed + rank); a
    resume restored rank 0's saved state on every rank, so rank 1 went on with rank 0's stream."""
    drop = "model.drop_path=0.3"
    run(tmp_path / "ref", "ddp", 0, drop)
    run(tmp_path / "run", "ddp", 7, drop)  # killed after the checkpoint of step 6
    run(tmp_path / "run", "ddp", 0, drop)
    assert losses(tmp_path / "run") == losses(tmp_path / "ref")
    assert torch.equal(final(tmp_path / "run"), final(tmp_path / "ref"))
    rngs = ckpt.load_checkpoint(ckpt.find_latest(tmp_path / "run" / "checkpoints")).rngs
    assert len(rngs) == 2 and not torch.equal(rngs[0]["torch"], rngs[1]["torch"])


@pytest.mark.parametrize("first,then", [("ddp", "fsdp"), ("fsdp", "ddp")])
def test_a_checkpoint_resumes_under_the_other_strategy(uninterrupted, tmp_path, first, then):
    run(tmp_path / "run", first, 7)
    run(tmp_path / "run", then)
    torch.testing.assert_close(final(tmp_path / "run"), final(uninterrupted / then), rtol=0, atol=1e-5)
    torch.testing.assert_close(torch.tensor(losses(tmp_path / "run")), torch.tensor(losses(uninterrupted / then)),
                               rtol=0, atol=1e-5)


def test_fsdp_with_fp16_is_refused_naming_the_keys():
    with pytest.raises(ConfigError, match="train.strategy=fsdp.*train.precision=fp16"):
        load_config(None, ["train.strategy=fsdp", "train.precision=fp16"])
    with pytest.raises(ConfigError, match="train.strategy='zero'"):
        load_config(None, ["train.strategy=zero"])


def _pretrain_worker(rank: int, world: int, port: int, synth_root: str, out_dir: str, strategy: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from tgmae.distributed import cleanup
    from tgmae.train.pretrain import pretrain

    pretrain(load_config(None, [
        "data.format=csv", "data.train_annotations=train.csv", "data.num_frames=4", "data.frame_stride=2",
        "data.image_size=32", "data.flip=false", "data.num_workers=0", "model.preset=tiny", "masking.name=tube",
        "masking.ratio=0.75", "masking.decoder_ratio=0.5", "train.grad_checkpoint=true", "train.batch_size=2",
        "train.epochs=1", "train.precision=fp32", "train.device=cpu", "train.attention=sdpa", "train.log_every=1",
        "log.progress=false", "log.tensorboard=false", "optim.base_lr=1e-3", f"train.strategy={strategy}",
        f"data.root={synth_root}", f"train.output_dir={out_dir}"]))
    cleanup()


def test_fsdp_pretraining_of_a_videomae_matches_ddp(tmp_path):
    """The pretraining task end to end (blocks sharded, dual masking, activation checkpointing):
    the same losses as DDP, and the run's model.safetensors a whole model."""
    from tgmae.data.synthetic import generate_synthetic_dataset
    from tgmae.weights.pretraining import load_pretraining_model

    generate_synthetic_dataset(tmp_path / "synth", num_videos=12, frames=12, size=64, seed=3, val_fraction=0.0)
    for strategy in ("ddp", "fsdp"):
        mp.spawn(_pretrain_worker, args=(2, _port(), str(tmp_path / "synth"), str(tmp_path / strategy), strategy),
                 nprocs=2, join=True)
    ddp, fsdp = losses(tmp_path / "ddp"), losses(tmp_path / "fsdp")
    assert len(fsdp) == 3
    torch.testing.assert_close(torch.tensor(fsdp), torch.tensor(ddp), rtol=0, atol=1e-5)
    a, b = (load_pretraining_model(tmp_path / s / "model.safetensors") for s in ("ddp", "fsdp"))
    for k, v in a.state_dict().items():
        torch.testing.assert_close(b.state_dict()[k], v, rtol=0, atol=1e-5)
