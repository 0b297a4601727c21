"""Suite-wide settings: tests run tiny models, which are fastest (and steadiest on a shared
2-core machine) with one intra-op thread; oversubscribed threads made them up to 30x slower.
Hardware autotuning (tgmae.autotune) is off, so every kernel choice is the documented default
and results do not depend on the machine or its load; tests of autotuning switch it on with a
cache in their own tmp dir."""

import os
import socket

import pytest
import torch

os.environ["TGMAE_AUTOTUNE"] = "off"


@pytest.fixture(autouse=True)
def sigterm_as_it_was():
    """`tgmae.cli.main` (run in-process by many tests) sets a SIGTERM handler, and a rank's wait
    for rank 0 its default: each test leaves the suite's own handling as it found it."""
    import signal

    before = signal.getsignal(signal.SIGTERM)
    yield
    signal.signal(signal.SIGTERM, before)


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def frame_index_cache(tmp_path_factory):
    """Video frame indexes go to a per-session folder, never to the user's ~/.cache."""
    before = os.environ.get("TGMAE_CACHE_DIR")
    os.environ["TGMAE_CACHE_DIR"] = str(tmp_path_factory.mktemp("tgmae_cache"))
    yield
    if before is None:
        os.environ.pop("TGMAE_CACHE_DIR", None)
    else:
        os.environ["TGMAE_CACHE_DIR"] = before


@pytest.fixture
def free_port() -> int:
    """A TCP port on 127.0.0.1 free right now, for a test's torch.distributed rendezvous."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Killed(Exception):
    """Raised by `kill_at`'s hook: stops a training run as a kill would (its checkpoints stay)."""


def kill_at(step: int):
    """A training-loop hook raising `Killed` as the run's position reaches `step`."""

    def hook(state) -> None:
        if state.position.step == step:
            raise Killed()

    return hook


def run_ranks(target, world: int, *args) -> dict:
    """Run `target(rank, *args, queue)` in `world` spawned processes (a torch.distributed group's
    ranks: `args` carry its port); {key: value} of the (key, value) pair each puts on the queue.
    Every process must end with exit code 0."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=target, args=(r, *args, queue)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def not_a_clip(root, kind: str) -> str:
    """A folder a user may pass as a CLIP by mistake: empty, a VideoMAE export (no tokenizer), a BERT (no
    vision tower), a run folder."""
    path = root / kind
    path.mkdir()
    if kind == "videomae":
        from transformers import VideoMAEConfig, VideoMAEModel

        VideoMAEModel(VideoMAEConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                                     image_size=32, patch_size=16, num_frames=2)).save_pretrained(path)
    elif kind == "bert":
        from transformers import BertConfig, BertModel

        BertModel(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32)).save_pretrained(path)
    elif kind == "run":
        (path / "config.yaml").write_text("model:\n  preset: tiny\n")
        (path / "metrics.jsonl").write_text("")
        (path / "config.json").write_text("{}")  # e.g. a TensorBoard or other tool's file
    return str(path)


def once(argv):
    """`argv` with each `section.key=value` override kept once, at its last place: tests that vary
    one key of a shared command line replace it as a user edits theirs (tgmae refuses a key given
    twice, `config.refuse_repeated_overrides`)."""
    import re

    keyed = re.compile(r"^[A-Za-z_][\w.]*=")
    seen, kept = set(), []
    for arg in reversed(list(argv)):
        key = arg.split("=", 1)[0] if keyed.match(arg) else None
        if key is None or key not in seen:
            kept.append(arg)
        if key is not None:
            seen.add(key)
    return kept[::-1]


def tiny_bert(path, seed=0, pooling=None, modules=None):
    """A random 1-layer BERT (hidden 24) + word-level tokenizer saved at `path`, a stand-in for a
    sentence encoder; with `pooling` (a sentence-transformers mode or several joined by "+"), a
    1_Pooling/config.json naming it; with `modules` (module types after the Transformer, e.g.
    ["Pooling", "Dense"]), a modules.json listing them. Returns (model, tokenizer)."""
    import json

    from transformers import BertConfig, BertModel, BertTokenizer

    from tgmae.captions.tiny import TINY_WORDS

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(TINY_WORDS)])}
    torch.manual_seed(seed)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=24, intermediate_size=48, num_hidden_layers=1,
                                 num_attention_heads=2, max_position_embeddings=40)).eval()
    model.save_pretrained(path)
    tok = BertTokenizer(vocab=vocab)
    tok.save_pretrained(path)
    if pooling:
        keys = {"cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens", "mean": "pooling_mode_mean_tokens",
                "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens",
                "weightedmean": "pooling_mode_weightedmean_tokens", "lasttoken": "pooling_mode_lasttoken"}
        (path / "1_Pooling").mkdir()
        (path / "1_Pooling" / "config.json").write_text(json.dumps(
            {"word_embedding_dimension": 24, **{k: m in pooling.split("+") for m, k in keys.items()}}))
    if modules:
        listing = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
        listing += [{"idx": i, "name": str(i), "path": f"{i}_{kind}", "type": f"sentence_transformers.models.{kind}"}
                    for i, kind in enumerate(modules, start=1)]
        (path / "modules.json").write_text(json.dumps(listing))
    return model, tok


class StoppedByTorchrun(BaseException):
    """Raised by `rank0_waits`' sleep: torchrun's agent stopping a rank that waits for rank 0."""


@pytest.fixture
def rank0_waits(monkeypatch):
    """A rank of a 2-rank torchrun whose wait for rank 0 (`lifetime.wait_for_rank0`) ends as
    torchrun ends it once rank 0 has exited: its sleep raises `StoppedByTorchrun`. Returns
    `as_rank(rank)`, which sets the rank."""
    import time

    def stopped(seconds):
        raise StoppedByTorchrun(seconds)

    monkeypatch.setattr(time, "sleep", stopped)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")  # torchrun sets both
    return lambda rank: monkeypatch.setenv("RANK", str(rank))
