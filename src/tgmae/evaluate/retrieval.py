"""Zero-shot video <-> text retrieval with the contrastive head (paper Table 3).

Video: the unmasked encoder's mean token through the trained head (`embed_video`, eval mode),
L2-normalized; several views average the pooled output first. `eval.retrieval_align_epochs` > 0:
the head (and text map) is instead one trained afterwards on `model.pretrained`'s frozen encoder,
on temporally pooled tokens (`tgmae.evaluate.align`, LiT), kept in <train.output_dir>/aligned_head.safetensors. Text: the frozen CLIP embedding
through the text map (`embed_text`), L2-normalized. `classes`: one text per class, relevant to its
videos: the class name in each `eval.class_prompt` template or the class's descriptions
(`eval.class_descriptions`, CuPL), averaged and renormalized (CLIP's prompt ensemble); `captions`:
every distinct caption of the evaluated videos, relevant to the videos that carry it.
Recall@1/5/10 both ways (ties count against the query), queries without a relevant video left
out, each with a random ranking's 95% band (`tgmae.evaluate.chance`). Unreadable videos are left
out and listed (`eval.strict=true`: an error). `tgmae retrieve` writes
`<train.output_dir>/retrieval_results.json` with `written_by` and the `settings` that decide its
numbers (`retrieval_settings`); results there of other settings (or without any) are refused
naming the file and keys (`refuse_other_retrieval`) unless `checkpoint.resume=ignore_config`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from tgmae.config import ConfigError
from tgmae.evaluate.align import resolved_path
from tgmae.evaluate.chance import ChanceBand, retrieval_bands
from tgmae.evaluate.metrics import recall_at_k, relevance_from_ids
from tgmae.evaluate.sharded import default_device, map_eval, split_unreadable
from tgmae.hub import model_name, same_model
from tgmae.train.precision import autocast
from tgmae.weights.files import CheckpointError, require_checkpoint, require_pretrained
from tgmae.train.resume import locks_run_folder

log = logging.getLogger("tgmae")

KS = (1, 5, 10)
DEFAULT_PROMPT = "a video of {}."


@dataclass
class RetrievalResult:
    """Recall@K both ways (fractions in [0, 1]), the sizes they were measured on, and a random
    ranking's band for each (`chance[direction][k]`, `tgmae.evaluate.chance.retrieval_bands`)."""

    video_to_text: dict[int, float]
    text_to_video: dict[int, float]
    num_videos: int
    num_texts: int
    mode: str
    unreadable: list = field(default_factory=list)  # videos left out: {index, video_id, label, reason}
    chance: dict[str, dict[int, ChanceBand]] = field(default_factory=dict)
    # the texts video -> text ranks among (num_texts: those with a relevant video, text -> video's queries)
    num_gallery_texts: int = 0

    def summary(self) -> dict[str, Any]:
        return {"mode": self.mode, "num_videos": self.num_videos, "num_texts": self.num_texts,
                "num_gallery_texts": self.num_gallery_texts,
                "num_unreadable": len(self.unreadable), "unreadable": self.unreadable,
                "video_to_text": {f"R@{k}": v for k, v in self.video_to_text.items()},
                "text_to_video": {f"R@{k}": v for k, v in self.text_to_video.items()},
                "chance": {d: {f"R@{k}": b.as_dict() for k, b in bands.items()} for d, bands in self.chance.items()}}

    def sizes_text(self) -> str:
        """'N videos, M texts', or where some texts have no video (class prompts of classes the split
        lacks) the gallery each way: 'N videos ranked among G texts; M texts (those with a video)
        among the videos'."""
        if self.num_gallery_texts in (0, self.num_texts):
            return f"{self.num_videos} videos, {self.num_texts} texts"
        return (f"{self.num_videos} videos ranked among {self.num_gallery_texts} texts; {self.num_texts} texts "
                "(those with a video) among the videos")

    def at_chance(self, direction: str, k: int) -> bool:
        """True when R@k in `direction` ("video_to_text" | "text_to_video") lies in its chance band."""
        return self.chance[direction][k].contains(getattr(self, direction)[k])


def retrieval_metrics(video_emb: torch.Tensor, text_emb: torch.Tensor, relevant: torch.Tensor,
                      ks: Sequence[int] = KS, mode: str = "") -> RetrievalResult:
    """video_emb [Nv, P], text_emb [Nt, P] (normalized here), relevant [Nv, Nt] bool.

    Videos without a relevant text are an error; texts without a relevant video are dropped
    from the text -> video queries."""
    v = F.normalize(video_emb.float(), dim=-1)
    t = F.normalize(text_emb.float(), dim=-1)
    sim = v @ t.T  # [Nv, Nt]
    v2t = recall_at_k(sim, relevant, ks)
    used = relevant.any(dim=0)
    t2v = recall_at_k(sim.T[used], relevant.T[used], ks)
    return RetrievalResult(v2t, t2v, int(sim.shape[0]), int(used.sum()), mode,
                           chance=retrieval_bands(relevant, ks), num_gallery_texts=int(sim.shape[1]))


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------


def _video_text_state(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(state dict, metadata) of the first file under `path` holding a contrastive video head.
    CheckpointError naming `path`, where the head is (a run's checkpoints) and
    `eval.retrieval_align_epochs` as the way for an encoder without one."""
    from tgmae.weights.checkpoint import find_latest
    from tgmae.weights.files import read_safetensors

    candidates: list[Path] = []
    if path.is_dir():
        candidates += [path / "model.safetensors"]
        if (path / "checkpoints").is_dir():
            latest = find_latest(path / "checkpoints")
            if latest is not None:
                candidates.append(latest / "model.safetensors")
    else:
        candidates.append(path)
    for c in candidates:
        if c.is_file():
            state, meta = read_safetensors(c)
            if "video_head.fc1.weight" in state:
                return state, meta
    hint = "retrieval needs a checkpoint of a VideoTextPretrainer run (captions.file and a contrastive objective)"
    run_checkpoints = path.parent / "checkpoints"
    if path.is_file() and run_checkpoints.is_dir() and find_latest(run_checkpoints) is not None:
        # the run's final model.safetensors is the portable MAE model; the head is in its checkpoints
        latest = find_latest(run_checkpoints) / "model.safetensors"
        if latest.is_file() and "video_head.fc1.weight" in read_safetensors(latest)[0]:
            hint = f"the contrastive head of this run is in {latest}: pass that file or the run folder {path.parent}"
    looked = [str(c) for c in candidates if c != path]  # the path itself is named once, in front
    where = f" (looked in {', '.join(looked)})" if looked else ""
    # the other way out: an aligned head works on any encoder (re-trial 32A M1: only a contrastive run was named)
    raise CheckpointError(f"{path}: no contrastive video head found{where}; {hint}; or set "
                          "eval.retrieval_align_epochs=N (N > 0) to train a head on its frozen encoder (MAE-only too)")


def load_video_text_model(path: str | os.PathLike) -> nn.Module:
    """A `VideoTextPretrainer` (eval mode, CPU) from a training checkpoint or run directory, or a
    safetensors file of its state dict with `arch` or `tgmae_config` metadata."""
    from tgmae.models.arch import VideoMAEArch, arch_from_config
    from tgmae.models.pretrainer import VideoMAEPretrainer
    from tgmae.models.video_text import VideoTextPretrainer

    from tgmae.weights.files import load_strict, resolve_checkpoint

    p = resolve_checkpoint(require_checkpoint(path))  # checkpoints/latest, a step folder -> its weights file
    state, meta = _video_text_state(p)
    if "arch" in meta:
        arch = VideoMAEArch.from_json(meta["arch"])
    elif "tgmae_config" in meta:
        from tgmae.config import RunConfig, from_dict

        cfg = from_dict(RunConfig, json.loads(meta["tgmae_config"]))
        arch = arch_from_config(cfg.model, cfg.data.num_frames, cfg.data.image_size)
    else:
        raise CheckpointError(f"{p}: no 'arch' or 'tgmae_config' metadata to rebuild the model from")
    proj_dim = int(state["video_head.fc2.weight"].shape[0])
    hidden = int(state["video_head.fc1.weight"].shape[0])
    text_proj = "text_proj.weight" in state
    text_dim = int(state["text_proj.weight"].shape[1]) if text_proj else proj_dim
    model = VideoTextPretrainer(VideoMAEPretrainer(arch), text_dim, objective="mae", proj_dim=proj_dim,
                                text_projection=text_proj, hidden_dim=hidden)
    return load_strict(model, state, str(p), "VideoTextPretrainer").eval()


@torch.no_grad()
def video_embeddings(model: nn.Module, dataset: Dataset, *, batch_size: int = 8, precision: str = "fp32",
                     num_workers: int = 0, device: Optional[torch.device] = None,
                     progress: bool = False) -> dict[str, torch.Tensor]:
    """{embedding [N, P] L2-normalized, label [N], index [N]} of every video, in dataset order
    (never a substitute: a video that cannot be read is marked in `unreadable`).

    model: a VideoTextPretrainer (its `encoder` and `embed_video` are used, in eval mode)."""
    device = device or default_device(model)

    def fn(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        video = batch["video"]
        views = video.dim() == 6
        clips = video.flatten(0, 1) if views else video
        with autocast(precision, device):
            latent = model.encoder(clips).float()  # [B(*V), N, D]
        if views:
            latent = latent.view(video.shape[0], video.shape[1], *latent.shape[1:]).mean(dim=1)
        return {"embedding": F.normalize(model.embed_video(latent).float(), dim=-1)}

    return map_eval(model, dataset, fn, batch_size=batch_size, device=device, num_workers=num_workers,
                    progress=progress, desc="video embeddings")


@torch.no_grad()
def text_embeddings(model: nn.Module, clip_embeddings: torch.Tensor) -> torch.Tensor:
    """[Nt, Dt] frozen CLIP text embeddings -> [Nt, P] L2-normalized, through the model's text map."""
    device = default_device(model)
    return F.normalize(model.embed_text(clip_embeddings.to(device)).float(), dim=-1).cpu()


# ---------------------------------------------------------------------------------------------
# Texts
# ---------------------------------------------------------------------------------------------


def class_prompts(class_names: Sequence[str], template: str = DEFAULT_PROMPT) -> list[str]:
    """One prompt per class: `template` with {} replaced by the class name as words."""
    from tgmae.data.annotations import class_text

    return [template.replace("{}", class_text(n)) for n in class_names]


def class_texts(class_names: Sequence[str], templates: str | Sequence[str] = DEFAULT_PROMPT,
                descriptions: Optional[dict[str, list[str]]] = None) -> list[list[str]]:
    """Per class, the texts whose embeddings `ensemble_embeddings` averages: its descriptions
    (`descriptions`: class -> [texts], matched by `tgmae.captions.sources.match_classes`, which
    raises DescriptionsError naming the classes without any) when given, else the class name in
    each of `templates` (a string is one template)."""
    if descriptions is not None:
        from tgmae.captions.sources import match_classes

        table = match_classes(class_names, descriptions)
        return [list(table[n]) for n in class_names]
    templates = [templates] if isinstance(templates, str) else list(templates)
    per_template = [class_prompts(class_names, t) for t in templates]
    return [[prompts[c] for prompts in per_template] for c in range(len(class_names))]


@torch.no_grad()
def ensemble_embeddings(model: nn.Module, clip_embeddings: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """[sum(counts), Dt] frozen text embeddings, `counts[c]` consecutive rows per class ->
    [C, P] L2-normalized: each text through the model's text map and normalized, the mean over
    its class's texts normalized again (CLIP's prompt ensemble, in the joint space)."""
    if sum(counts) != clip_embeddings.shape[0] or min(counts, default=0) < 1:
        raise ValueError(f"counts {list(counts)} must be >= 1 and sum to the {clip_embeddings.shape[0]} embeddings")
    texts = text_embeddings(model, clip_embeddings)
    return F.normalize(torch.stack([t.mean(dim=0) for t in texts.split(list(counts))]), dim=-1)


def class_text_embeddings(cfg, model: nn.Module, class_names: Sequence[str], device: str = "cpu") -> torch.Tensor:
    """[C, P] class texts of `eval.class_descriptions` (if set) or `eval.class_prompt`'s templates,
    embedded by `captions.target_model` (cached in <train.output_dir>/class_prompts.emb.safetensors)
    and averaged per class by `ensemble_embeddings`. ConfigError naming the key when no text model
    is set or the descriptions file lacks a class."""
    from tgmae.captions.embed import embed_texts
    from tgmae.captions.sources import DescriptionsError, load_descriptions

    if not cfg.captions.target_model:
        raise ConfigError("captions.clip_model (or captions.text_model) must name the model that embeds the prompts")
    descriptions = None
    if cfg.eval.class_descriptions:
        descriptions = load_descriptions(cfg.eval.class_descriptions)[0]
    try:
        texts = class_texts(class_names, cfg.eval.class_prompt, descriptions)
    except DescriptionsError as e:
        raise ConfigError(f"eval.class_descriptions={cfg.eval.class_descriptions}: {e}") from None
    cache = Path(cfg.train.output_dir) / "class_prompts.emb.safetensors"
    flat = [t for per_class in texts for t in per_class]
    from tgmae.weights.checkpoint import IGNORE_CONFIG

    # the cache is this folder's own: another text model's is replaced when its results are (ignore_config)
    clip = embed_texts(flat, cfg.captions.target_model, cache, device=device,
                       setting="captions.text_model" if cfg.captions.text_model else "captions.clip_model",
                       rebuild=cfg.checkpoint.resume == IGNORE_CONFIG,
                       way_out="It holds this folder's earlier results' class texts: give another "
                               "train.output_dir, or checkpoint.resume=ignore_config to replace both.")
    return ensemble_embeddings(model, clip, [len(t) for t in texts])


def caption_relevance(video_ids: Sequence[str], provider: Any) -> torch.Tensor:
    """[Nv, Nt] bool: caption t of the provider's distinct texts belongs to video v."""
    rel = torch.zeros(len(video_ids), provider.num_captions, dtype=torch.bool)
    for i, vid in enumerate(video_ids):
        rel[i, provider.caption_ids(vid)] = True
    return rel


@locks_run_folder
def evaluate_retrieval(cfg, model: Optional[nn.Module] = None, dataset: Optional[Dataset] = None,
                       *, mode: Optional[str] = None, progress: bool = True,
                       given: Optional[Collection[str]] = None) -> RetrievalResult:
    """Retrieval on `data.val_annotations` (or `dataset`) with `cfg.model.pretrained` (or `model`).

    mode: "classes" or "captions" (default `eval.retrieval_text`, else "classes"). Every rank
    takes part; rank 0 writes `<train.output_dir>/retrieval_results.json` (RunFolderError for a
    train.output_dir in a run's checkpoints, `locks.refuse_in_checkpoints`, or holding a run stopped
    before its first checkpoint, `locks.refuse_stopped_run`). A val list made of the
    training list's videos, or of model.pretrained's run's (its saved config.yaml), is refused as
    evaluate refuses it, and so is one without labels in mode "classes" (`refuse_test_list`). given:
    the dotted keys the user set; the model keys among the others are model.pretrained's weights'
    (`with_checkpoint_model`; None: none), one set against them a ConfigError naming it.
    """
    from tgmae.distributed import init_distributed, rank_world
    from tgmae.train.precision import resolve_precision
    from tgmae.weights.checkpoint import IGNORE_CONFIG
    from tgmae.weights.sources import tensors_digest

    mode = mode or cfg.eval.retrieval_text  # both validated where they are set (eval / study config)
    refuse_test_list(cfg, mode, dataset)
    dist_info = init_distributed(cfg.train.device)
    settings, replace = retrieval_settings(cfg, mode), cfg.checkpoint.resume == IGNORE_CONFIG
    if rank_world()[0] == 0:
        from tgmae.atomic import check_writable
        from tgmae.locks import refuse_in_checkpoints, refuse_stopped_run

        refuse_in_checkpoints(cfg.train.output_dir, "train.output_dir")  # beside a run, never in its checkpoints
        refuse_stopped_run(cfg.train.output_dir, "train.output_dir", "retrieve")  # nor beside one without any
        check_writable(Path(cfg.train.output_dir) / RESULTS, keep_new_folders=False)  # refused: none made
    if model is None:  # found before this folder's results are compared: a typo is not "other settings"
        require_pretrained(cfg.model.pretrained, "the encoder eval.retrieval_align_epochs aligns a head on"
                           if cfg.eval.retrieval_align_epochs > 0 else "a contrastive (VideoTextPretrainer) checkpoint")
    if rank_world()[0] == 0:  # before the embeddings: another test's results are not replaced
        refuse_other_retrieval(Path(cfg.train.output_dir), settings, replace=replace)
    if dataset is None:
        from tgmae.data.dataset import build_dataset

        dataset = build_dataset(cfg.data, "val", train=False, seed=cfg.train.seed)
    # the gallery's store checked before an aligned head is trained (re-trial 32A S3: refused after it)
    captions = caption_gallery(cfg, dataset, str(dist_info.device)) if mode == "captions" else None
    if cfg.eval.retrieval_align_epochs > 0:  # a head aligned on the frozen encoder of model.pretrained
        if model is not None:
            raise ValueError("eval.retrieval_align_epochs > 0 aligns a head on model.pretrained's encoder: "
                             "pass no model")
        from tgmae.evaluate.align import aligned_model

        model = aligned_model(cfg, dist_info.device, progress=progress, given=given)
    elif model is None:
        model = load_video_text_model(cfg.model.pretrained)
        from tgmae.models.arch import check_checkpoint_geometry, with_checkpoint_model

        model_cfg, note = with_checkpoint_model(cfg.model, model.mae.arch, given)
        if note:
            log.info("model.pretrained=%s: %s", cfg.model.pretrained, note)
        check_checkpoint_geometry(model_cfg, model.mae.arch, cfg.model.pretrained)
        refuse_other_clip_geometry(cfg, model.mae.arch)
        warn_other_text_model(cfg)
    weights = tensors_digest(model.state_dict())  # other weights under the same path: other results
    if rank_world()[0] == 0:
        refuse_other_retrieval(Path(cfg.train.output_dir), settings, replace=replace, weights=weights)
    model = model.to(dist_info.device)
    out = video_embeddings(model, dataset, batch_size=cfg.train.batch_size,
                           precision=resolve_precision(cfg.train.precision, dist_info.device),
                           num_workers=cfg.data.num_workers, device=dist_info.device,
                           progress=progress and cfg.log.progress)
    out, unreadable = split_unreadable(out, dataset, cfg.eval.strict, "retrieval")
    text, relevant = gallery_texts(cfg, model, dataset, out, captions, str(dist_info.device))
    result = retrieval_metrics(out["embedding"], text, relevant, KS, mode)
    result.unreadable = unreadable
    if unreadable:
        log.warning("retrieval: %d unreadable videos left out of the gallery (listed in retrieval_results.json)",
                    len(unreadable))
    if rank_world()[0] == 0:
        from tgmae.atomic import atomic_write_text

        summary = dict(result.summary(), written_by=RETRIEVE, settings=settings, weights=weights)
        atomic_write_text(Path(cfg.train.output_dir) / RESULTS, json.dumps(summary, indent=2))
        log.info("retrieval (%s): V->T R@1/5/10 %s, T->V %s", mode, _fmt(result.video_to_text), _fmt(result.text_to_video))
    return result


def refuse_test_list(cfg, mode: str, dataset: Optional[Dataset]) -> None:
    """At set-up (ConfigError, one line): the val list (`dataset`, else the one `cfg.data` names) made of
    the videos the model (or the aligned head) trained on (`multiview.refuse_test_of_training_videos`;
    checked for the list `cfg` names), or in mode "classes" without any label, whose videos then have
    no relevant class prompt (`data.dataset.refuse_unlabelled`; re-trial 29B T2: a traceback after the
    embeddings), or with classes that have no names (numbers only) and no eval.class_descriptions
    (`data.dataset.refuse_unnamed_classes`; re-trial 30B S2: "a video of 0." embedded, recalls
    reported). Captions need no labels or names."""
    if dataset is None:
        from tgmae.evaluate.multiview import refuse_test_of_training_videos

        refuse_test_of_training_videos(cfg, trains=cfg.eval.retrieval_align_epochs > 0)
    if mode == "classes":
        from tgmae.data.dataset import refuse_unlabelled, refuse_unnamed_classes

        refuse_unlabelled(cfg.data, "val", dataset, use="eval.retrieval_text=classes ranks each video's class "
                                                        "prompt (eval.retrieval_text=captions needs none)")
        if not cfg.eval.class_descriptions:  # its texts per class stand in for the names
            refuse_unnamed_classes(cfg.data, "val", dataset, need=(
                "eval.retrieval_text=classes embeds each class's name as text (eval.class_prompt) "
                "unless eval.class_descriptions gives texts per class (or use eval.retrieval_text=captions)"))


def caption_gallery(cfg, dataset: Dataset, device: str):
    """The `CaptionProvider` of `captions.file` with its texts embedded, checked at set-up against
    the val videos as training checks its store (`data.dataset.check_videos_known`): a caption for
    each, of its file, frames and (for a store made from annotations) its text and class now. A
    store of another data set with the same ids, or of annotations edited since, ranked other
    videos' captions without a word (session 16). ConfigError without a store or a text model."""
    from tgmae.captions.provider import CaptionProvider
    from tgmae.data.dataset import check_videos_known

    provider = CaptionProvider.from_config(cfg.captions, device=device)
    if provider is None or provider.embeddings is None:
        from tgmae.config import ConfigError

        raise ConfigError("eval.retrieval_text=captions ranks the val videos' captions: it needs captions.file "
                          "and captions.clip_model (or captions.text_model)")
    records = getattr(dataset, "records", None)
    if records is None:
        raise ValueError("caption retrieval needs a dataset with `records` (video ids)")
    check_videos_known(records, provider, None, getattr(dataset, "class_names", None) or ())
    return provider


def gallery_texts(cfg, model: nn.Module, dataset: Dataset, out: dict[str, torch.Tensor], captions,
                  device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """([T, D] embedded texts, [N, T] relevance of the N embedded videos `out`): the dataset's class
    prompts (`captions` None) or the captions of those videos (`captions`: `caption_gallery`'s
    provider; the gallery: theirs only)."""
    if captions is None:
        names = list(getattr(dataset, "class_names", None) or [])
        if not names:
            raise ValueError("class-prompt retrieval needs the dataset's class names")
        return (class_text_embeddings(cfg, model, names, device=device),
                relevance_from_ids(out["label"], torch.arange(len(names))))
    relevant = caption_relevance([dataset.records[int(i)].video_id for i in out["index"]], captions)
    used = relevant.any(dim=0)
    return text_embeddings(model, captions.embeddings[used]), relevant[:, used]


RETRIEVE, RESULTS = "tgmae retrieve", "retrieval_results.json"  # `written_by`, the file


def retrieval_settings(cfg, mode: str) -> dict[str, Any]:
    """What decides retrieval's numbers: the model (`model.pretrained` as given), the `data` keys that
    choose the videos and their pixels (`test_settings`' but the multi-view counts), the texts
    (`eval.retrieval_text` = mode, the class prompts or descriptions, the caption file) and the
    model that embeds them; {key: value}."""
    from tgmae.evaluate.multiview import test_settings

    settings = {k: v for k, v in test_settings(cfg).items() if not k.startswith("data.test_")}
    prompt = cfg.eval.class_prompt
    settings.update({"eval.retrieval_text": mode, "captions.target_model": model_name(cfg.captions.target_model)})
    if mode == "classes" and cfg.eval.class_descriptions:  # they replace the templates
        settings["eval.class_descriptions"] = resolved_path(cfg.eval.class_descriptions)
    elif mode == "classes":
        settings["eval.class_prompt"] = prompt if isinstance(prompt, str) else list(prompt)
    else:
        settings["captions.file"] = resolved_path(cfg.captions.file)
    if cfg.eval.retrieval_align_epochs > 0:  # absent at 0: results of the pretraining's head stay valid
        from tgmae.evaluate.align import align_settings

        settings.update(align_settings(cfg))
    return settings


def warn_other_text_model(cfg) -> None:
    """One warning naming the key when the text model that embeds the prompts is not the one
    model.pretrained's run trained its video-text head against (its config.yaml, when known): the
    joint space is that model's, so another one's recalls mean little."""
    from tgmae.weights.model_card import read_run

    run = read_run(cfg.model.pretrained).config
    own, given = (run.captions.target_model, cfg.captions.target_model) if run is not None else ("", "")
    if not own or same_model(given, own):
        return
    key = "text_model" if cfg.captions.text_model or run.captions.text_model else "clip_model"
    log.warning("the prompts are embedded by %s (captions.text_model, else captions.clip_model), but "
                "model.pretrained=%s trained its video-text head against %s: its joint space is that model's; "
                "set captions.%s=%s", given or "''", cfg.model.pretrained, own, key, own)


def refuse_other_clip_geometry(cfg, arch) -> None:
    """ConfigError naming data.num_frames / data.image_size when they are not the pretrained model's
    own (`arch`): its video embedding reads the clip at the geometry it was trained at (a traceback
    from the model's shape check otherwise)."""
    wrong = [f"data.{k}={getattr(cfg.data, k)} (its own: {getattr(arch, k)})" for k in ("num_frames", "image_size")
             if getattr(cfg.data, k) != getattr(arch, k)]
    if wrong:
        raise ConfigError(f"{', '.join(wrong)}: model.pretrained={cfg.model.pretrained} embeds clips of its own "
                          "geometry; set the keys to its values")


def refuse_other_retrieval(out: Path, settings: dict[str, Any], replace: bool = False, weights: str = "",
                           ways: str = "") -> None:
    """ConfigError naming `out/retrieval_results.json` and the differing keys when it holds results
    of other `settings`, or of unknown ones (written before they were recorded). replace: asked to
    replace them. weights: the model's `tensors_digest`; results of other weights under the same
    model.pretrained path are refused too (results written before the digest was kept are not checked).
    ways: the caller's ways out (a study's), instead of the command's keys."""
    from tgmae.evaluate.multiview import REPLACE_WAYS, not_replaced, read_results, setting_diffs

    ways = ways or REPLACE_WAYS
    results = out / RESULTS
    if replace or not results.is_file():
        return
    old = read_results(results)
    stored = old.get("settings")
    if not isinstance(stored, dict):
        raise not_replaced(out, results.name, "of unrecorded settings", ways)
    diffs = setting_diffs(stored, settings)
    if weights and old.get("weights") and old["weights"] != weights:
        diffs.append(f"model.pretrained's weights changed: digest {old['weights'][:12]} -> {weights[:12]}")
    if diffs:
        raise not_replaced(out, results.name, "of other settings (" + "; ".join(diffs) + ")", ways)


def _fmt(r: dict[int, float]) -> str:
    return "/".join(f"{100 * v:.1f}" for v in r.values())


def chance_text(result: RetrievalResult, direction: str) -> str:
    """'R@1 at chance (band 8.3-11.8% over 1152 queries), ...': which figures of `direction` a
    random ranking reaches often; "" when none is."""
    parts = [f"R@{k} ({100 * b.lo:.1f}-{100 * b.hi:.1f}% over {b.n} queries)"
             for k, b in result.chance.get(direction, {}).items() if result.at_chance(direction, k)]
    return "at chance: " + ", ".join(parts) if parts else ""
