"""Resume policy of the training loop: which checkpoint a run continues from, the checks that it
belongs to the run (kind, settings, task inputs, something left to do), what it restores, and the
run folder's record of the settings (config.yaml, config_changes.jsonl)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch
from torch import nn

from tgmae.atomic import atomic_write_text, remove_stale_temps
from tgmae.config import RunConfig, is_saved_config, read_config_file, save_config, to_dict
from tgmae.data.fileid import copy_key, video_identities
from tgmae.distributed import DistInfo, any_rank, rank_world
from tgmae.lifetime import launch_env
from tgmae.errors import UserError, count
from tgmae.locks import LATEST, NO_CHECKPOINT_YET, hold, refuse_extraction, refuse_holding_run, run_files
from tgmae.weights import checkpoint as ckpt
from tgmae.weights.model_card import folder_run_id, is_runs, own_run_id, recorded_run_id

log = logging.getLogger("tgmae")


@dataclass
class Resumed:
    """What a resume restores beyond the weights and optimizer (a fresh run: the defaults)."""

    source: Optional[Path] = None
    position: ckpt.TrainPosition = field(default_factory=ckpt.TrainPosition)
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (key, stored, now)
    eval_history: list[dict] = field(default_factory=list)
    load_failures: float = 0.0  # unreadable videos replaced so far (this rank's share)
    step_offset: int = 0  # the step counter minus this run's plan's step (`plan_offset`)


def resume_source(cfg: RunConfig, say: bool = True) -> Optional[Path]:
    """checkpoint.resume: none, the latest of the run's (auto / ignore_config) or a path. `say`: log
    that a run folder without `latest` resumes its newest step, and the newer incomplete step folders
    passed over (once per run, by the main rank: the resume says it)."""
    spec = cfg.checkpoint.resume
    if not spec:
        return None
    if spec in ("auto", ckpt.IGNORE_CONFIG):
        ckpts = Path(cfg.train.output_dir) / "checkpoints"
        found = ckpt.find_latest(ckpts)
        if not say or found is None or rank_world()[0] != 0:  # said once, by the main rank
            return found
        skipped = [f"{p.name} (lacks {' and '.join(ckpt.missing_files(p))})" for p in ckpt.step_folders(ckpts)
                   if p.name > found.name and ckpt.missing_files(p)]
        passed = f"; passed over, incomplete: {', '.join(skipped)}" if skipped else ""
        if not os.path.lexists(ckpts / LATEST):
            log.info("%s has no `latest` (a kill before it was written?): resuming its newest complete step "
                     "folder, %s%s", ckpts, found.name, passed)
        elif skipped:
            log.warning("%s: resuming %s, the newest complete step folder%s (a kill while it was written?)",
                        ckpts, found.name, passed)
        return found
    path = Path(spec)
    if not path.exists():
        raise ckpt.CheckpointError(f"checkpoint.resume={spec!r}: no such checkpoint")
    return path


def begun(cfg: RunConfig, key: str) -> Any:
    """What the run `cfg` resumes (`resume_source`) kept under `key` in its checkpoint's extras
    (`save_checkpoint(extra=)`: the choices it measured at its start, such as its precision and
    attention kernels); None for a fresh run or a checkpoint written before the key was kept."""
    source = resume_source(cfg, say=False)
    return ckpt.read_extra(source).get(key) if source is not None else None


def refuse_other_kind(cfg: RunConfig, task_name: str) -> None:
    """`check_run_kind`'s CheckpointError when the checkpoint this run would resume (`resume_source`)
    was written by another kind of run (its stored task name; one without it is left to `resume`):
    for a command that checks the results train.output_dir holds before its loop starts, so that a
    probe run's folder is named as one first, not refused for its files with the way out
    checkpoint.resume=ignore_config, which the loop's kind check then refuses (finetune). A folder
    without checkpoints (a k-NN or L-BFGS probe's) is named by its probe_results.json's `probe`."""
    source = resume_source(cfg)
    stored = ckpt.read_extra(source).get("task") if source is not None else None
    if source is None:
        source = Path(cfg.train.output_dir) / PROBE_RESULTS
        try:
            probe = json.loads(source.read_text()).get("probe")
        except (OSError, ValueError, AttributeError):  # none there (or not a probe's): the results' checks say
            probe = None
        stored = {"attentive": "attentive_probe"}.get(probe, "probe") if isinstance(probe, str) else None
    if stored:
        ckpt.check_run_kind(source, stored, task_name, str(cfg.train.output_dir))


PROBE_RESULTS = "probe_results.json"  # every probe's results file (tgmae.evaluate.probe), with its `probe` kind
WEIGHTS = ("model.safetensors", "classifier.safetensors")  # a run's trained weights (with its step folders)


def refuse_unresumed_run(cfg: RunConfig, source: Optional[Path], unused: Sequence[str] = (),
                         copies: Optional[Mapping[str, str]] = None) -> None:
    """RunFolderError naming train.output_dir when it holds a run (`locks.run_files`) that this one
    would not continue: no checkpoint of its own to resume (checkpoints/ deleted to free disk),
    checkpoint.resume='' (start afresh), or a checkpoint.resume path outside it; the keys its
    config.yaml differs in are named. A fresh run there would replace its weights, config.yaml and
    metrics.jsonl and leave its step folders beside its own. Two such folders are replaced instead,
    said in a line: under checkpoint.resume=ignore_config, one holding results without trained
    weights (`WEIGHTS`; a k-NN or L-BFGS probe's), as the probes' refusals offer; and one holding
    this run's settings and its `NO_CHECKPOINT_YET` marker (a run stopped before its first
    checkpoint: Ctrl-C, SIGTERM, kill -9, a full disk at that checkpoint), as its stop promised "a
    rerun of the same command resumes from the start" (re-trial 29A M2; fix 31e). A folder without
    the marker (written before runs wrote it) is refused. `unused`, `copies`: as `resume`'s, for
    the comparison of the settings."""
    out = Path(cfg.train.output_dir)
    if _own_checkpoint(out, source):
        return
    spec = cfg.checkpoint.resume
    held = run_files(out)
    trained = any(h in WEIGHTS or h.endswith("in checkpoints/") for h in held)
    if spec == ckpt.IGNORE_CONFIG and held and not trained:
        # results alone (a k-NN probe's): ignore_config replaces them, as the results' own refusals say
        log.warning("%s: replacing what it holds (%s) under checkpoint.resume=%s", out, ", ".join(held), spec)
        return
    diffs = saved_config_differences(cfg, unused, copies)
    if held and diffs == [] and (out / NO_CHECKPOINT_YET).is_file():
        if rank_world()[0] == 0:
            log.info("%s holds this run, stopped before its first checkpoint (%s): starting it afresh, "
                     "replacing them", out, ", ".join(held))
        return
    why = ("checkpoint.resume='' would not continue (it starts afresh)" if not spec else
           f"checkpoint.resume={spec} (a checkpoint outside it) would not continue" if source is not None else
           f"has no complete checkpoint in {out / 'checkpoints'} to resume")
    if diffs:
        why += f", made with other settings ({describe(diffs)})"
    refuse_holding_run(out, "train.output_dir", why)


def _own_checkpoint(out: Path, source: Optional[Path]) -> bool:
    """Whether `source`, the checkpoint a run resumes (None: none), is one of run folder `out`'s."""
    return source is not None and Path(source).resolve().is_relative_to(out.resolve())


def refuse_other_runs_step(out: Path, source: Path) -> None:
    """CheckpointError naming `source` and both ids when the checkpoint a run resumes inside its own
    folder `out` records a run id that is not the folder's (`model_card.run_ids`: its own, or one of
    the runs the folder was copied or moved from): a step folder of another run moved or copied in,
    which would go on under this run's id and mix two runs in its metrics.jsonl (re-trial 34A S1),
    or a step its original made after the folder was copied (`model_card.is_runs`, re-trial 34B S1).
    A checkpoint recording none (saved before ids were recorded) resumes, as before; one outside
    `out` (checkpoint.resume=PATH) starts this run from it."""
    made_by = recorded_run_id(source)[0]
    if not _own_checkpoint(out, source) or made_by is None or is_runs(out, made_by, source):
        return
    own = folder_run_id(out)
    raise ckpt.CheckpointError(
        f"{source}: records run id {made_by}, but the run in {out} is {own or 'one whose folder records none'}: "
        f"a step folder of another run, moved or copied in; move it out of {out}, or resume it in its own run "
        "folder (checkpoint.resume=PATH with another train.output_dir starts a new run from it)")


def saved_config_differences(cfg: RunConfig, unused: Sequence[str] = (),
                             copies: Optional[Mapping[str, str]] = None) -> Optional[list[tuple[str, Any, Any]]]:
    """The keys train.output_dir/config.yaml (a run's, `is_saved_config`) differs from `cfg` in, as a
    resume compares them (`config_differences`: RESUMABLE_KEYS, `unused` and `copies` left out);
    None when it is missing, a user's file or unreadable (the run there is not known to be this one)."""
    path = Path(cfg.train.output_dir) / "config.yaml"
    if not is_saved_config(path):
        return None
    try:
        stored = read_config_file(path)
    except (UserError, OSError):
        return None
    return ckpt.config_differences(stored, to_dict(cfg), to_dict(RunConfig()), unused, copies)


def resume(cfg: RunConfig, dist: DistInfo, task_name: str, fingerprint: Optional[str], model: nn.Module,
           optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, total_steps: int,
           class_names: Sequence[str] = (), unused_keys: Sequence[str] = (),
           copied_keys: Optional[Mapping[str, str]] = None, videos: Optional[dict] = None,
           steps_per_epoch: Optional[int] = None,
           inputs_named: str | Sequence[str] = "model.pretrained's weights") -> Resumed:
    """checkpoint.resume: the checkpoint's weights, optimizer, scaler, position and RNG, after
    the checks that it belongs to this run (kind, settings, inputs, class names in label order,
    videos on disk, something left to do). unused_keys: config keys the task never reads;
    copied_keys: {key: the user's key the task copies into it} (`config_differences`); videos:
    `videos_on_disk` of this run's data (rank 0; None on the other ranks). steps_per_epoch: this
    run's; on another number of processes than the checkpoint's, `total_steps` is re-counted from
    the position its data reached (`plan_offset`, returned as Resumed.step_offset). inputs_named:
    what `fingerprint` covers (`input_changes`)."""
    source = resume_source(cfg)
    refuse_unresumed_run(cfg, source, unused_keys, copied_keys)
    if source is None:
        return Resumed()
    refuse_other_runs_step(Path(cfg.train.output_dir), source)
    loaded = ckpt.load_checkpoint(source)
    out = str(cfg.train.output_dir)
    ckpt.check_run_kind(source, loaded.extra.get("task"), task_name, out,
                        fits=set(loaded.model_state) == set(model.state_dict()))
    changes = ckpt.check_resume_config(source, loaded.config, to_dict(cfg), to_dict(RunConfig()),
                                       output_dir=out, unused=unused_keys, copies=copied_keys)
    try:  # class names first: a renumbering also changes a probe's fingerprint, and this names it
        changes += class_changes(cfg, source, loaded.extra.get("class_names"), class_names)
        changes += input_changes(cfg, task_name, source, loaded.extra.get("inputs_fingerprint"), fingerprint,
                                 inputs_named)
        changes += video_changes(cfg, dist, source, loaded.extra.get("videos"), videos)
    except InputsChanged as e:
        if loaded.position.step < total_steps and loaded.position.epoch < cfg.train.epochs:
            raise
        # a finished run: ignore_config would only report its results under inputs they were not made with
        raise ckpt.CheckpointError(f"cannot resume {source}: {e.why}. It has finished (step {loaded.position.step}): "
                                   f"start a new run with another train.output_dir, or raise "
                                   f"{_epochs_key(task_name)} with checkpoint.resume={ckpt.IGNORE_CONFIG} to "
                                   "continue it on them.") from None
    position, world = loaded.position, loaded.extra.get("world_size")
    offset = 0
    if steps_per_epoch and position.epoch < cfg.train.epochs:
        offset = plan_offset(cfg, position, _rebased(cfg, dist, position, world, loaded.config), steps_per_epoch)
        total_steps = planned_total(cfg, steps_per_epoch, offset)
    if position.step < total_steps and position.epoch < cfg.train.epochs:  # something left to train
        changes += world_changes(cfg, dist, source, world, loaded.config)
        position = rebase_position(cfg, dist, position, world, loaded.config)
    refuse_shorter(cfg, task_name, source, position)
    if changes and not (position.step < total_steps and position.epoch < cfg.train.epochs):
        raise ckpt.CheckpointError(
            f"{source} has finished (step {position.step}) under other settings "
            f"({describe(changes)}): with nothing left to train, "
            f"checkpoint.resume={ckpt.IGNORE_CONFIG} would report its results under settings they were "
            "not made with. Start a new run with another train.output_dir, or raise "
            f"{_epochs_key(task_name)} to continue this one under the new settings.")
    try:
        ckpt.load_model_weights(model, loaded.model_state, str(source))
    except ckpt.CheckpointError as e:
        raise ckpt.CheckpointError(f"{e}. {ckpt.another_run_hint(out)}") from None
    ckpt.load_optimizer_state(model, optimizer, loaded.optimizer_state)
    if loaded.scaler_state:
        scaler.load_state_dict(loaded.scaler_state)
    restore_rng(dist, loaded, source)
    if dist.is_main:
        log.info("resumed from %s at step %d (epoch %d, batch %d)", source, position.step,
                 position.epoch, position.batches_in_epoch)
    # Evaluations made under other settings (checkpoint.resume=ignore_config) do not count
    # for this run's best: only those since the change (they stay in metrics.jsonl).
    return Resumed(source, position, changes, [] if changes else list(loaded.extra.get("eval_history", [])),
                   float(loaded.extra.get("load_failures", 0.0)) if dist.is_main else 0.0, offset)


def restore_rng(dist: DistInfo, loaded: ckpt.LoadedCheckpoint, source: Path) -> None:
    """Each rank's RNG state as the checkpoint kept it, so drop-path, mixup and dual masks go on
    with the streams an uninterrupted run draws. On another number of processes each rank keeps
    its fresh seeding (train.seed + rank). A checkpoint written before each rank's state was kept
    holds rank 0's only: the other ranks keep their fresh seeding, said in a warning (the resumed
    run is not bit-identical to an uninterrupted one)."""
    if dist.world_size != loaded.extra.get("world_size", dist.world_size):
        return
    if dist.rank < len(loaded.rngs):
        ckpt.set_rng_state(loaded.rngs[dist.rank])
    if dist.is_main and len(loaded.rngs) < dist.world_size:
        log.warning("%s holds rank 0's RNG state only (written by an older tgmae): the other %d "
                    "rank(s) draw drop-path, mixup and dual masks seeded afresh (train.seed + rank), so this run will "
                    "not end bit-identical to an uninterrupted one", source, dist.world_size - 1)


def planned_total(cfg: RunConfig, steps_per_epoch: int, offset: int = 0) -> int:
    """The run's last optimizer step on its counter: train.epochs x steps_per_epoch (+ `offset`,
    `plan_offset`), at most train.max_steps (a bound on the counter)."""
    total = cfg.train.epochs * steps_per_epoch + offset
    return min(total, cfg.train.max_steps or total)


def plan_offset(cfg: RunConfig, stored: ckpt.TrainPosition, now: ckpt.TrainPosition, steps_per_epoch: int) -> int:
    """The checkpoint's step counter minus the step this run's plan (`steps_per_epoch` of now)
    has at the same data position (`now`: `rebase_position`'s, in this run's micro-batches): 0 for
    a run resumed as it was planned; else its clips per step changed (processes, train.batch_size
    under checkpoint.resume=ignore_config), now or at an earlier resume. The counter goes on
    (metrics.jsonl, step_N checkpoints); the progress bar's end and the lr schedule are this run's
    plan shifted by it."""
    return stored.step - (now.epoch * steps_per_epoch + now.batches_in_epoch // cfg.train.accum_steps)


def _epochs_key(task_name: str) -> str:
    """The key a user sets for the loop's train.epochs (the attentive probe's is its own)."""
    return "eval.attentive_epochs" if task_name == "attentive_probe" else "train.epochs"


def refuse_shorter(cfg: RunConfig, task_name: str, source: Path, position: ckpt.TrainPosition) -> None:
    """CheckpointError naming the key when the checkpoint is past the run asked for (more epochs
    than train.epochs / eval.attentive_epochs, counting a started one; more steps than
    train.max_steps): resuming it would hand back the longer run's weights and results as this
    one's. Raising the key continues. (Steps alone are not compared: fewer steps per epoch, other
    data, is not a shorter run.)"""
    epochs, key = cfg.train.epochs, _epochs_key(task_name)
    over_epochs = position.epoch > epochs or (position.epoch == epochs and position.batches_in_epoch > 0)
    over_steps = bool(cfg.train.max_steps) and position.step > cfg.train.max_steps
    if not (over_epochs or over_steps):
        return
    where = f"the run in {cfg.train.output_dir}" if cfg.checkpoint.resume in ("auto", ckpt.IGNORE_CONFIG) \
        else f"checkpoint.resume={source}"
    done = count(position.epoch, "epoch")
    if position.batches_in_epoch:
        done += f" and {count(position.batches_in_epoch, 'batch', 'batches')}"
    asked = f"the {count(epochs, 'epoch')} asked for ({key}={epochs})" if over_epochs \
        else f"the {count(cfg.train.max_steps, 'step')} asked for (train.max_steps={cfg.train.max_steps})"
    raise ckpt.CheckpointError(
        f"{where} already trained {done} ({count(position.step, 'step')}), more than {asked}: a run is not "
        "shortened. Use another train.output_dir (raising the key continues this run).")


def input_changes(cfg: RunConfig, task_name: str, source: Path, stored: Optional[str], now: Optional[str],
                  named: str | Sequence[str] = "model.pretrained's weights") -> list[tuple[str, Any, Any]]:
    """A resume on other task inputs (other features, other weights under the same path, other
    captions) is refused, or recorded as a change under checkpoint.resume=ignore_config. named:
    what the task's fingerprint covers, for the message; a fingerprint "DIGEST.PART1.PART2..."
    with one name per part is compared by DIGEST and names the parts that changed (a checkpoint
    without parts: all of them)."""
    if not (now and stored and stored.split(".")[0] != now.split(".")[0]):
        return []
    names = [named] if isinstance(named, str) else list(named)
    was, new = stored.split(".")[1:], now.split(".")[1:]
    join = " or "  # which of them: not known
    if len(was) == len(new) == len(names) and (changed := [n for n, a, b in zip(names, was, new) if a != b]):
        names, join = changed, " and "
    digest, now_digest = stored.split(".")[0][:12], now.split(".")[0][:12]
    return _refuse_or_record(cfg, source, f"the {task_name} inputs differ from the ones it was trained on "
                             f"(fingerprint {digest} -> {now_digest}: {join.join(names)} changed)",
                             (f"{task_name} inputs (fingerprint)", digest, now_digest))


FILES_KEPT = 2000  # per-file identities a checkpoint keeps up to this many videos a split (else the digest)
_SPLITS = {"train": ("training videos", "data.train_annotations"),
           "val": ("validation videos", "data.val_annotations")}


def videos_on_disk(datasets: Mapping[str, Any], root: str = "") -> dict:
    """{split: {"sha256": digest, "count": n, "files": {path: `copy_key`}}} of the files of each
    dataset's `records` (stat only, nothing read; "files" up to FILES_KEPT videos; paths relative to
    `root`, data.root, where under it). A video's key is what a copy keeps (`copy_key`: its size):
    a set copied to a node's local disk resumes, a video replaced by another does not. Datasets
    without records (a probe's features, fingerprinted as its inputs) and None are left out. Kept in
    every checkpoint: a resume on other files is refused (`video_changes`)."""
    out = {}
    for split, data in datasets.items():
        records = getattr(data, "records", None)
        if not records:
            continue
        on_disk = video_identities(str(r.path) for r in records)  # a frame folder's segments: one scan
        files = {}
        for path, ident in on_disk.items():
            name = os.path.relpath(path, root) if root and Path(path).is_relative_to(root) else path
            files[name] = copy_key(ident)
        out[split] = _files_entry(files)
    return out


def _files_entry(files: dict[str, Any]) -> dict[str, Any]:
    """{"sha256", "count", "files" (up to FILES_KEPT)} of {name: `copy_key`} (`videos_on_disk`)."""
    digest = hashlib.sha256(json.dumps(sorted(files.items())).encode()).hexdigest()
    entry: dict[str, Any] = {"sha256": digest, "count": len(files)}
    if len(files) <= FILES_KEPT:
        entry["files"] = files
    return entry


def _in_todays_form(entry: Optional[dict]) -> Optional[dict]:
    """A checkpoint's `videos_on_disk` split entry with each kept `copy_key` in today's form (a frame
    folder's [name, size] per frame, as checkpoints wrote before folder identities were compact,
    becomes its digest), so an older checkpoint of the same files is not taken for other files.
    Without "files" (over FILES_KEPT videos) it cannot be converted and is returned as is."""
    if not entry or not isinstance(entry.get("files"), dict):
        return entry
    return _files_entry({name: copy_key(key) for name, key in entry["files"].items()})


def _videos_differ(cfg: RunConfig, split: str, old: dict, new: dict) -> str:
    """Why `split`'s videos are not the ones the checkpoint was trained on: where both sides kept
    per-file identities, how many were added, replaced (or rewritten in place) and removed, naming
    up to 3 of each, and the counts now and then; else the fingerprints."""
    name, key = _SPLITS.get(split, (f"{split} videos", f"data.{split}_annotations"))
    where = f"{name} ({key}={getattr(cfg.data, key.split('.')[1], '')})"
    before, now = old.get("files"), new.get("files")
    if before is None or now is None:
        return (f"its {where} differ from the files it was trained on (fingerprint {old['sha256'][:12]} -> "
                f"{new['sha256'][:12]}: a video replaced or rewritten in place)")
    kinds = (("added", sorted(set(now) - set(before))),
             ("replaced or rewritten in place", sorted(p for p in set(now) & set(before) if before[p] != now[p])),
             ("removed", sorted(set(before) - set(now))))
    said = ", ".join(f"{len(paths)} {kind} ({', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''})"
                     for kind, paths in kinds if paths)
    return f"its {where} changed on disk since it was trained: {said} ({new['count']} now, {old['count']} then)"


def video_changes(cfg: RunConfig, dist: DistInfo, source: Path, stored: Optional[dict],
                  now: Optional[dict]) -> list[tuple[str, Any, Any]]:
    """A resume whose training or validation videos are other files than the checkpoint's (a video
    replaced in place keeps every setting) is refused naming the split and the files, or recorded
    as a change under checkpoint.resume=ignore_config. `now` is rank 0's (`videos_on_disk`): its
    verdict is every rank's, so no rank waits for one that left. A checkpoint written before the
    fingerprint was kept (`stored` None, the same on every rank) resumes unchecked, said in a line."""
    if stored is None:
        if dist.is_main and now:
            log.info("%s was written before runs recorded their videos' fingerprint: whether its videos "
                     "changed since cannot be checked", source)
        return []
    whys, change = [], None
    for split, entry in (now or {}).items() if dist.is_main else ():
        old = _in_todays_form(stored.get(split))
        if old and old.get("sha256") != entry["sha256"]:
            whys.append(_videos_differ(cfg, split, old, entry))
            change = change or (f"{_SPLITS.get(split, (split,))[0]} (fingerprint)", old["sha256"][:12],
                                entry["sha256"][:12])
    if dist.enabled and any_rank(change is not None, dist.device) and change is None:
        whys, change = ["rank 0 found its videos changed on disk (its message names them)"], ("videos", "", "")
    return _refuse_or_record(cfg, source, "; ".join(whys), change) if change else []


def world_changes(cfg: RunConfig, dist: DistInfo, source: Path, stored_world: Optional[int],
                  stored_config: Mapping[str, Any]) -> list[tuple[str, Any, Any]]:
    """A resume on another number of processes than the checkpoint was trained on is refused,
    naming both counts and the global batch (train.batch_size x train.accum_steps x processes;
    saved -> now), or recorded as a change under checkpoint.resume=ignore_config: the lr (scaled
    with the global batch), the schedule's length and the data position inside the epoch (counted
    in the other count's batches) would all differ. Checkpoints written before the count was kept
    (`stored_world` None) are not checked."""
    if stored_world is None or int(stored_world) == dist.world_size:
        return []
    batch, accum = _stored_micro_batch(cfg, stored_config)
    before = batch * accum * int(stored_world)
    now = cfg.train.batch_size * cfg.train.accum_steps * dist.world_size
    was = f"{count(int(stored_world), 'process', 'processes')}"
    return _refuse_or_record(
        cfg, source, f"it was trained on {was}, this run has {count(dist.world_size, 'process', 'processes')} "
        f"(global batch {before} -> {now}: the lr scaled with it, the schedule's length and the data position "
        f"would differ); resume it on {was} (torchrun --nproc_per_node={stored_world})",
        ("processes (global batch)", f"{stored_world} ({before})", f"{dist.world_size} ({now})"))


def _stored_micro_batch(cfg: RunConfig, stored_config: Mapping[str, Any]) -> tuple[int, int]:
    """(train.batch_size, train.accum_steps) a checkpoint was trained with (this run's where absent)."""
    train = dict(stored_config.get("train") or {})
    return int(train.get("batch_size", cfg.train.batch_size)), int(train.get("accum_steps", cfg.train.accum_steps))


def rebase_position(cfg: RunConfig, dist: DistInfo, position: ckpt.TrainPosition, stored_world: Optional[int],
                    stored_config: Mapping[str, Any]) -> ckpt.TrainPosition:
    """The position inside the epoch in this run's micro-batches when the checkpoint's held other
    clips per micro-batch (processes, train.batch_size: under checkpoint.resume=ignore_config,
    otherwise refused): the ranks together had trained on the epoch's first batches_in_epoch x
    batch x processes videos of the shared permutation (`ResumableSampler`), so this run starts after them, at the first whole
    optimizer step of its own past them (no video trained twice; less than one global batch skipped)."""
    now = _rebased(cfg, dist, position, stored_world, stored_config)
    if dist.is_main and now.batches_in_epoch != position.batches_in_epoch:
        batch, _ = _stored_micro_batch(cfg, stored_config)
        world = dist.world_size if stored_world is None else int(stored_world)
        log.warning("the checkpoint's %s had trained on %d videos of epoch %d: this run (%s x %s a "
                    "micro-batch) starts the epoch at its micro-batch %d", count(world, "process", "processes"),
                    position.batches_in_epoch * batch * world, position.epoch,
                    count(dist.world_size, "process", "processes"), count(cfg.train.batch_size, "video"),
                    now.batches_in_epoch)
    return now


def _rebased(cfg: RunConfig, dist: DistInfo, position: ckpt.TrainPosition, stored_world: Optional[int],
             stored_config: Mapping[str, Any]) -> ckpt.TrainPosition:
    """`rebase_position`'s position, without its log line: `position` itself when a micro-batch of
    all processes holds as many clips as the checkpoint's (process count unrecorded: this run's),
    else a new one (also at an epoch's start)."""
    batch, _ = _stored_micro_batch(cfg, stored_config)
    world = dist.world_size if stored_world is None else int(stored_world)
    if batch * world == cfg.train.batch_size * dist.world_size:
        return position
    seen = position.batches_in_epoch * batch * world
    step_videos = cfg.train.batch_size * cfg.train.accum_steps * dist.world_size
    micro = -(-seen // step_videos) * cfg.train.accum_steps  # rounded up: none trained twice
    return ckpt.TrainPosition(position.step, position.epoch, micro)


class InputsChanged(ckpt.CheckpointError):
    """A resume on other inputs than the checkpoint's (`why`: which), refused with the ways out."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


def _refuse_or_record(cfg: RunConfig, source: Path, why: str, change: tuple[str, Any, Any]) -> list:
    """InputsChanged "cannot resume SOURCE: WHY" with the ways out, or [change] under
    checkpoint.resume=ignore_config."""
    if cfg.checkpoint.resume != ckpt.IGNORE_CONFIG:
        raise InputsChanged(f"cannot resume {source}: {why}. Start a new run with another train.output_dir, "
                            f"or continue this one with checkpoint.resume={ckpt.IGNORE_CONFIG}.", why)
    return [change]


def class_changes(cfg: RunConfig, source: Path, stored: Optional[Sequence[str]],
                  now: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """A resume whose class names (label order) differ from the checkpoint's is refused, naming the
    first labels that changed and the file they were read from (`data.formats.class_names_origin`;
    a reordered classes.txt keeps the head's shape, so nothing else notices), or recorded as a
    change under checkpoint.resume=ignore_config. Checkpoints written before class names were
    stored (none) are not checked."""
    if not (stored and now) or list(stored) == list(now):
        return []
    moved = [f"label {i}: {a!r} -> {b!r}" for i, (a, b) in enumerate(zip(stored, now)) if a != b]
    if len(stored) != len(now):
        moved.append(f"{len(stored)} -> {len(now)} classes")
    what = ", ".join(moved[:3]) + (" ..." if len(moved) > 3 else "")
    from tgmae.data.formats import class_names_origin

    # the format's own source (a Diving48 vocabulary, classInd.txt), not "its classes.txt" (re-trial 32A M3)
    d = cfg.data
    origin = class_names_origin(d.format, d.root, d.train_annotations, d.split)
    came = f" (read from {origin})" if origin else ""
    return _refuse_or_record(cfg, source, f"the class names of data.train_annotations={d.train_annotations}{came} "
                             f"differ from the ones it was trained on ({what}); restore them",
                             ("class names", list(stored), list(now)))


def _legacy_run_folder(folder: Path) -> bool:
    """Whether `folder` is a run folder written before `save_config` marked its config.yaml: it holds
    the run's checkpoints/ folder (every run has it once a step is saved) or the model.safetensors
    a finished run writes. A lone metrics.jsonl or probe_results.json is not enough: beside a
    user's own config.yaml it made the run replace that file."""
    return (folder / "checkpoints").is_dir() or (folder / "model.safetensors").is_file()


def check_config_file(out_dir: str | Path) -> None:
    """CheckpointError naming `out_dir`/config.yaml when it is there but not a run's (not marked
    by `save_config`, nor in a run folder written before the mark, `_legacy_run_folder`): a file
    of the user's (the `-c` file) that the run's would replace."""
    path = Path(out_dir) / "config.yaml"
    if not path.is_file() or is_saved_config(path) or _legacy_run_folder(path.parent):
        return
    raise ckpt.CheckpointError(f"{path}: not a run's config.yaml (a file of yours?), which the run's would "
                               "replace; give the run another train.output_dir")


def run_folder_lock(cfg: RunConfig) -> AbstractContextManager:
    """One run per `train.output_dir`: its lock (`tgmae.locks`), held by the main process, after
    `check_config_file` and the refusal of an extraction's folder (`locks.refuse_extraction`)."""
    refuse_extraction(cfg.train.output_dir, "train.output_dir")
    check_config_file(cfg.train.output_dir)
    # a killed checkpoint write's temp folder (a copy of a whole step) goes even when this run is refused;
    # one holding the only complete copy of the step `latest` names is put back first, by the process
    # that writes checkpoints/ (another rank's clean-up could remove that copy as it is put back)
    if launch_env()[0] == 0:
        ckpt.clean_temps(Path(cfg.train.output_dir) / "checkpoints")
    return hold(cfg.train.output_dir, "train.output_dir", enabled=launch_env()[0] == 0 and rank_world()[0] == 0,
                folder=True)


def locks_run_folder(fn):
    """Decorator: `fn(cfg, ...)` runs holding `cfg.train.output_dir`'s lock, after removing the
    temps of killed writers in that folder (`remove_stale_temps`)."""
    @functools.wraps(fn)
    def wrapped(cfg: RunConfig, *args, **kwargs):
        with run_folder_lock(cfg):
            remove_stale_temps(cfg.train.output_dir)
            return fn(cfg, *args, **kwargs)
    return wrapped


def write_run_folder(cfg: RunConfig, is_main: bool, resumed: Resumed, total_steps: int) -> None:
    """The run folder: config.yaml (only settings that run: a finished run resumed keeps its
    own), its run id (`model_card.own_run_id`: written once, kept on resume; re-trial 33B S1),
    before them the `NO_CHECKPOINT_YET` marker of a run without a checkpoint of its own there
    (`first_checkpoint_written` removes it) and, under checkpoint.resume=ignore_config, what changed
    and when in config_changes.jsonl. Main rank only."""
    if not is_main:
        return
    pos, out_dir = resumed.position, Path(cfg.train.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not _own_checkpoint(out_dir, resumed.source):  # first: a config.yaml of this run has its marker
        atomic_write_text(out_dir / NO_CHECKPOINT_YET, "this run has written no checkpoint yet: a rerun of the "
                          "same settings starts it afresh (its first checkpoint removes this file)\n")
    own_run_id(out_dir)
    if resumed.source is None or (pos.step < total_steps and pos.epoch < cfg.train.epochs):
        save_config(cfg, out_dir / "config.yaml")
    if resumed.changes:
        log.warning("resuming %s at step %d under changed settings: %s", resumed.source, pos.step,
                    describe(resumed.changes))
        with open(out_dir / "config_changes.jsonl", "a") as f:
            f.write(json.dumps({"step": pos.step, "changes": {k: [a, b] for k, a, b in resumed.changes}})
                    + "\n")


def first_checkpoint_written(out_dir: str | Path) -> None:
    """Remove run folder `out_dir`'s `NO_CHECKPOINT_YET` marker once a complete checkpoint of its run
    is there (after every save: a kill between a save and this leaves it beside a checkpoint, which
    a rerun resumes). Main rank only."""
    Path(out_dir, NO_CHECKPOINT_YET).unlink(missing_ok=True)


def describe(changes: list[tuple[str, Any, Any]]) -> str:
    """(key, before, now) changes as `key: before -> now; ...`."""
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changes)
