"""`tgmae` command line: a table of subcommands, each a plain `main(argv) -> int` in its own module.

Modules are imported only when their command runs, so `tgmae --help` stays fast and a
command's heavy imports (transformers, av) cost nothing elsewhere.
"""

from __future__ import annotations

import importlib
import logging
import os
import re
import sys
from typing import Sequence

from tgmae.errors import SWITCHES, UserError, env_switch

# name -> ("module:function", one-line help). Each function takes the remaining argv.
COMMANDS: dict[str, tuple[str, str]] = {
    "demo-pretrain": ("tgmae.commands.demo_pretrain:main", "synthetic set -> tiny pretraining run -> figures (make demo-pretrain)"),
    "pretrain": ("tgmae.commands.pretrain:main", "VideoMAE / TGM pretraining: -c CONFIG.yaml [section.key=value ...]"),
    "finetune": ("tgmae.commands.finetune:main", "finetune a classifier on a pretrained encoder, then the multi-view test"),
    "evaluate": ("tgmae.commands.evaluate:main", "multi-view test of a finetuned classifier (model.pretrained=CLASSIFIER)"),
    "probe": ("tgmae.commands.probe:main", "frozen-backbone probe on cached features: eval.probe=linear (MAE, LARS) | knn | attentive"),
    "extract": ("tgmae.commands.extract:main", "frozen-encoder features per video: clip, sliding windows or token grid -> shards + index"),
    "retrieve": ("tgmae.commands.retrieve:main", "zero-shot video<->text Recall@1/5/10 with the contrastive head"),
    "study": ("tgmae.commands.study:main", "the paper's comparison on the synthetic set -> report.md/html, results.json (make demo)"),
    "report": ("tgmae.commands.report:main", "aggregate finished study runs into the results table"),
    "visualize": ("tgmae.commands.visualize:main", "figures: recon | attention | masks"),
    "export-hf": ("tgmae.commands.export_hf:main", "write a transformers VideoMAEModel / ForVideoClassification directory"),
    "synth": ("tgmae.commands.synth:main", "write the synthetic captioned video set"),
    "data": ("tgmae.commands.data:main", "dataset tools: `tgmae data check --format F --root DIR ANNOTATIONS`"),
    "train-clip": ("tgmae.commands.train_clip:main", "train a small CLIP on the synthetic set (a transformers CLIPModel dir)"),
    "masks": ("tgmae.commands.masks:main", "precompute TGM caption-patch similarity maps (resumable, torchrun-sharded)"),
    "eval-masks": ("tgmae.commands.eval_masks:main", "mask precision/recall against the synthetic set's ground truth"),
    "convert": ("tgmae.commands.convert:main", "official VideoMAE .pth / HF directory (any we export) -> our safetensors"),
    "config": ("tgmae.commands.config:main", "`tgmae config show [-c FILE] [overrides]`: the resolved config, each key with its help"),
    "caption": ("tgmae.commands.caption:main", "captions per video: keyframe captioner, oracle, vision-free, combined"),
    "describe-classes": ("tgmae.commands.describe_classes:main", "vision-free class descriptions from a chat endpoint"),
    "embed-captions": ("tgmae.commands.embed_captions:main", "embed captions with a CLIP text tower into a cache"),
}


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = ["usage: tgmae [--version] COMMAND [args]", "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`tgmae COMMAND --help` shows a command's own arguments."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run `tgmae` with `argv` (None: the process's command line; its exit code, which a stop during
    the interpreter's shutdown no longer changes: `lifetime.ignore_stops`)."""
    code = _main(list(sys.argv[1:] if argv is None else argv))
    if argv is None:
        from tgmae.lifetime import ignore_stops

        ignore_stops()
    return code


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from tgmae import __version__

        print(f"tgmae {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"tgmae: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    from tgmae.lifetime import end_with_launcher, launch_env, local_rank, results_said, stop_on_sigterm, stops_deferred

    results_said(False)
    end_with_launcher()  # a torchrun rank ends with torchrun, even one killed with -9
    stop_on_sigterm()  # SIGTERM ends as Ctrl-C does: cleaned up, one line
    # the one logging set-up: library modules only get loggers
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    module_name, func_name = COMMANDS[name][0].split(":")
    try:
        # the heavy imports, with stops held: one inside numpy's or torch's import is swallowed there or
        # half-imports it (re-trial 27A T1); raised after, it ends the command in its one line
        with stops_deferred():
            module = importlib.import_module(module_name)
            importlib.import_module("torch")  # most commands import it later, from their main
            if rest and rest[0] in getattr(module, "TOOLS", ()):  # `tgmae data prepare: ...`, not `tgmae data: ...`
                name = f"{name} {rest[0]}"
        for switch in SWITCHES:  # a misspelt one is refused here, whether or not this command reads it
            env_switch(switch)
        launch_env(), local_rank()  # torchrun's variables too (RANK=abc: one line, not a traceback: 29B T4)
        code = int(getattr(module, func_name)(rest) or 0)
        from tgmae.distributed import cleanup

        cleanup()  # under torchrun every rank leaves the group together: one alone aborts another (27B T2)
        return code
    except BrokenPipeError:  # `tgmae ... | head`: the reader left; end quietly as Unix tools do
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        except (OSError, ValueError):  # stdout without a file descriptor (captured)
            pass
        return 141  # 128 + SIGPIPE, the shell's code for it
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (`lifetime.Terminated`), also one while an error unwound
        from tgmae.lifetime import stopped_after_results

        if stopped_after_results():  # in the teardown of a command that said its results: it finished
            return 0
        if _debug():
            raise
        return _stopped(name, e)
    except Exception as e:
        if (stop := _stop_behind(e)) is not None and not _debug():  # e.g. a collective in a stop's clean-up
            return _stopped(name, stop)
        # bad input (a key, a path, the wrong checkpoint kind, an unwritable output), also when a
        # DataLoader worker raised it: the message, not a traceback
        from tgmae.lifetime import launch_env, other_launched_rank, wait_for_rank0

        line = _one_line(e) or _worker_gone(e) or _peer_gone(e)
        if line is None or _debug():
            raise

        # under torchrun each rank exits 2 (torchrun then exits 1 with its ChildFailedError summary,
        # naming exitcode 2). A rank other than 0 first waits for rank 0 (`wait_for_rank0`): a mistake
        # every rank makes (a key, a file every rank reads: re-trial 26A M2) is printed by rank 0, and
        # torchrun stops this rank in the wait; one of its own (its GPU, its videos) is printed after it
        if other_launched_rank():
            wait_for_rank0()
            name = f"{name} (rank {launch_env()[0]})"
        _close_bars()
        print(f"tgmae {name}: {line}", file=sys.stderr)
        return 2


def _worker_gone(e: BaseException) -> str | None:
    """The line of a DataLoader worker that died (`data.dataset.Loader`: killed -9 by the OOM killer,
    a crash), None for any other error. torch raises it from its SIGCHLD handler wherever the main
    process is (`backward()`), or as "(pid(s) N) exited unexpectedly" from the batch queue, caused by
    the handler's; both ended in a traceback, exit 1 (re-trial 33A T1). Exit 2 as a rank's other
    errors: under a group the rank rules hold (`_main`), and a killed rank's peers exit 2 too."""
    chain, link = [], e
    while isinstance(link, BaseException) and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    texts = [str(x) for x in chain if isinstance(x, RuntimeError)]
    for pattern, said in _WORKER_DEATHS:  # the most precise first: the signal, the exit code, neither
        if (found := next(filter(None, (pattern.search(t) for t in texts)), None)) is not None:
            return (f"{said(*found.groups())}; what it finished is kept: rerun the same command to go on, "
                    "or lower data.num_workers")
    return None


def _killed(pid: str, description: str) -> str:
    """`a data loader worker (pid N) was killed (SIGKILL; out of memory?)` from torch's strsignal text."""
    import signal

    name = next((s.name for s in signal.Signals if signal.strsignal(s) == description), description)
    hint = {"SIGKILL": "; out of memory?", "SIGBUS": "; out of shared memory? /dev/shm is too small"}.get(name, "")
    return f"a data loader worker (pid {pid}) was killed ({name}{hint})"


def _ended(pids: str) -> str:
    """`a data loader worker (pid N) ended (...)` for the queue's text, which names no signal."""
    many = "," in pids
    return f"{'data loader workers (pids' if many else 'a data loader worker (pid'} {pids}) ended (killed? out of memory?)"


# torch's texts (torch/csrc/DataLoader.cpp, utils/data/dataloader.py `_try_get_data`) -> the line's start
_WORKER_DEATHS = (
    (re.compile(r"DataLoader worker \(pid (\d+)\) is killed by signal: ([^.]*)\."), _killed),
    (re.compile(r"DataLoader worker \(pid (\d+)\) exited unexpectedly with exit code (-?\d+)"),
     lambda pid, code: f"a data loader worker (pid {pid}) ended with exit code {code}"),
    (re.compile(r"DataLoader worker \(pid\(s\) ([\d, ]+)\) exited unexpectedly"), _ended),
)


def _peer_gone(e: BaseException) -> str | None:
    """The line of a collective that failed because another torchrun rank ended first (its own line
    says why: a full disk at a checkpoint, a bad file), None for any other error. A rank waiting in
    a barrier then got gloo's "Connection closed by peer" and printed a 40-line traceback (re-trial
    27B T1). It quotes gloo's sentence saying what happened (`Read error [127.0.0.1]:2722: Connection
    reset by peer`), not its source path or advice, which a cut at 200 characters left half-said
    (re-trial 33A M3)."""
    from tgmae.lifetime import launch_env

    text = str(e)  # the text first: an error of a bad RANK / WORLD_SIZE is not read through them again
    if not any(s in text for s in _PEER_GONE) or launch_env()[1] <= 1:
        return None
    return f"stopped: another rank ended first ({_what_happened(text)})"


_PEER_GONE = ("Connection closed by peer", "Connection reset by peer")


def _what_happened(text: str) -> str:
    """gloo's sentence naming the peer gone, e.g. "[/__w/.../pair.cc:537] Read error [127.0.0.1]:2722:
    Connection reset by peer. This is typically caused by ..." -> "Read error [127.0.0.1]:2722:
    Connection reset by peer": no `[file.cc:N]` source locations, no advice sentences."""
    text = re.sub(r"\[[^\]\s]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", " ".join(text.split()))
    sentences = re.split(r"(?<=\.)\s+", text)  # "127.0.0.1" has no space after its dots
    said = next(s for s in sentences if any(p in s for p in _PEER_GONE)).rstrip(".")
    return said if len(said) <= 200 else said[:200].rsplit(" ", 1)[0] + " ..."


def _stop_behind(e: BaseException) -> KeyboardInterrupt | None:
    """The stop (Ctrl-C, SIGTERM) during whose clean-up `e` was raised, when `e` is the stop's
    consequence: a collective failed because another rank ended (`_peer_gone`; torchrun stops them
    all, one killed ends first). None for any other error (a mistake, a bug: said as ever) or one
    raised outside a stop. Re-trial 29B T3: rank 0, stopped by torchrun, ran a collective in its
    clean-up and said "another rank ended first", exit 2, not its stop."""
    if _peer_gone(e) is None:
        return None
    seen, context = set(), e.__context__
    while context is not None and id(context) not in seen:
        if isinstance(context, KeyboardInterrupt):
            return context
        seen.add(id(context))
        context = context.__context__
    return None


def _debug() -> bool:
    """TGMAE_DEBUG on: an input error or a stop is raised with its traceback, not said in one line.
    Off for a value that is no switch: `main` refused it before the command ran, and this is read
    while an error is reported."""
    try:
        return env_switch("TGMAE_DEBUG")
    except UserError:
        return False


def _stopped(name: str, e: KeyboardInterrupt) -> int:
    """One line for a command stopped by Ctrl-C or SIGTERM (rank 0 alone under torchrun: torchrun
    stops every rank alike); the shell's code for the signal (128 + its number). Also when the stop
    came while an error unwound, or an error came in its clean-up (`_stop_behind`): under torchrun
    a rank killed makes the others' collectives fail, and torchrun then stops them (re-trial 29B T3)."""
    import signal

    from tgmae.lifetime import Terminated, other_launched_rank

    sig = signal.SIGTERM if isinstance(e, Terminated) else signal.SIGINT
    _close_bars()
    if not other_launched_rank():
        print(f"\ntgmae {name}: stopped ({sig.name}); what it finished is kept: rerun the same command to go on",
              file=sys.stderr)
    return 128 + int(sig)


def _close_bars() -> None:
    """Close the progress bars an exception left open, before the command's last line: closed
    later (at exit), a bar is drawn again below it (re-trial 25 M3)."""
    tqdm = getattr(sys.modules.get("tqdm"), "tqdm", None)  # never imported here: it may be half-imported
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def _one_line(e: BaseException) -> str | None:
    """The one line of a user error (also one raised in a DataLoader worker, or a write the disk
    refused), None for any other exception (a bug: its traceback)."""
    from tgmae.atomic import write_failure
    from tgmae.config import ConfigError
    from tgmae.errors import worker_user_error

    if (worker := worker_user_error(e)) is not None:
        return f"config error: {worker}" if isinstance(e, ConfigError) else worker
    if isinstance(e, FileNotFoundError) and e.filename is not None and not isinstance(e, UserError):
        return f"{e.filename}: no such file or directory"
    if isinstance(e, OSError) and not isinstance(e, UserError) and (failure := write_failure(e)) is not None:
        return str(failure)
    if not isinstance(e, (UserError, FileNotFoundError)):
        return None
    msg = str(e) or type(e).__name__
    return f"config error: {msg}" if isinstance(e, ConfigError) else msg


if __name__ == "__main__":
    sys.exit(main())
