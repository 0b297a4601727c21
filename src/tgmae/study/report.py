"""Study reports: the results table (paper Table 2 layout), loss curves (Figure 4) and figures, as
Markdown, HTML (rendered from the Markdown, `tgmae.study.report_html`: the same sections) and JSON;
`tgmae report RUN_DIRS...` (`report_runs`) rebuilds one from finished runs.

Every cell is a (masking, objective, variant) over seeds: mean ± sample std (n - 1). Comparisons
are paired by seed (`tgmae.study.paired`: per-seed differences, 95% Student-t intervals). Figures inside a random guesser's 95% band
(`tgmae.study.at_chance`) are marked "(at chance)".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import re
import statistics
from pathlib import Path
from typing import Optional, Sequence

from tgmae.atomic import atomic_write_text

from tgmae.config import ConfigError
from tgmae.errors import UserError
from tgmae.evaluate.chance import accuracy_band
from tgmae.locks import refuse_inside_run
from tgmae.weights.checkpoint import RESUMABLE_KEYS, flatten
from tgmae.study.cells import cell_defined_keys
from tgmae.study.at_chance import at_chance_lines, certain_lines, pooled_band
from tgmae.study.paired import cell_key, contrastive_gains, diff_stats, paired_difference, points, sample_std, verdict

log = logging.getLogger("tgmae")

COLUMNS = [  # (header, getter)
    ("FT top-1", lambda r: r.get("finetune_top1")),
    ("LP top-1", lambda r: r.get("linear_probe_top1")),
    ("V->T R@1", lambda r: _recall(r, "video_to_text", 1)),
    ("V->T R@5", lambda r: _recall(r, "video_to_text", 5)),
    ("T->V R@1", lambda r: _recall(r, "text_to_video", 1)),
    ("T->V R@5", lambda r: _recall(r, "text_to_video", 5)),
]


# the extra frozen probes of `study.probes` (tgmae.study.frozen_probes): shown only when a record has them
FROZEN_COLUMNS = [("kNN top-1", lambda r: r.get("knn_top1")), ("AP top-1", lambda r: r.get("attentive_probe_top1"))]
COLUMNS += FROZEN_COLUMNS


def shown_columns(rows: Sequence[dict]) -> list:
    """COLUMNS less the extra probes' (`study.probes`) that no row has."""
    optional = {h for h, _ in FROZEN_COLUMNS}
    return [(h, g) for h, g in COLUMNS if h not in optional or any(r.get(h) is not None for r in rows)]


def _recall(record: dict, direction: str, k: int) -> Optional[float]:
    table = (record.get("retrieval") or {}).get(direction) or {}
    value = table.get(f"R@{k}")
    return None if value is None else float(value)


# Reference rows of a study (`tgmae.study.cells.REFERENCES`): masking name -> table label.
REFERENCE_LABELS = {"none": "no pretraining (random encoder)", "scratch": "supervised from scratch"}
METRICS = {"linear_probe_top1": "LP top-1", "finetune_top1": "FT top-1"}


def cell_label(masking: str, variant: str = "") -> str:
    name = REFERENCE_LABELS.get(masking, masking)
    return f"{name} [{variant}]" if variant else name


def aggregate(records: Sequence[dict]) -> list[dict]:
    """One row per (masking, objective, variant): mean, sample std and count over seeds of every
    column (None where no run has the value), and "chance": {column: a random guesser's band for
    that mean (`at_chance.pooled_band`), None where unknown}."""
    num_val = _common([r for r in records if r.get("num_val")], "num_val")
    rows = []
    for (masking, objective, variant), runs in _by_cell(records).items():
        row = {"masking": masking, "objective": objective, "variant": variant,
               "seeds": sorted(r["seed"] for r in runs), "mask_ratio": runs[0].get("mask_ratio")}
        for header, get in COLUMNS:
            values = [get(r) for r in runs if get(r) is not None and not math.isnan(get(r))]
            row[header] = (statistics.fmean(values), sample_std(values), len(values)) if values else None
        row["chance"] = {h: pooled_band([r for r in runs if get(r) is not None], h, num_val) if row[h] else None
                         for h, get in COLUMNS}
        rows.append(row)
    return rows


def _by_cell(records: Sequence[dict]) -> dict[tuple[str, str, str], list[dict]]:
    """{cell_key: its records}, in first-seen order."""
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for r in records:
        groups.setdefault(cell_key(r), []).append(r)
    return groups


def _name(key: tuple[str, str, str]) -> str:
    masking, objective, variant = key
    if masking in REFERENCE_LABELS:
        return cell_label(masking, variant)
    return f"{cell_label(masking, variant)} {objective}"


def findings(records: Sequence[dict]) -> list[tuple[str, dict]]:
    """The report's comparisons, (title, paired difference): the video-text loss's gain per masking (LP,
    FT), maskings against tube and TGM top-k against bottom-k (LP), variants against their base run,
    pretrained cells against no pretraining."""
    out: list[tuple[str, dict]] = []
    for metric, short in METRICS.items():
        for g in contrastive_gains(records, metric):
            out.append((f"Video-text loss, {cell_label(g['masking'], g['variant'])}, {short}", g))
    cells = sorted({cell_key(r) for r in records})
    for _, objective, variant in sorted({(0, o, v) for m, o, v in cells if m not in REFERENCE_LABELS}):
        maskings = sorted({m for m, o, v in cells if (o, v) == (objective, variant) and m not in REFERENCE_LABELS})
        pairs = [(m, "tube") for m in maskings if m != "tube" and "tube" in maskings]
        if "tgm" in maskings and "tgm_bottom" in maskings:
            pairs.append(("tgm", "tgm_bottom"))
        for m, other in pairs:
            d = paired_difference(records, (m, objective, variant), (other, objective, variant))
            if d is not None:
                out.append((f"{cell_label(m, variant)} vs {other}, {objective}, LP top-1", d))
    for m, o, v in cells:
        if v and m not in REFERENCE_LABELS:
            d = paired_difference(records, (m, o, v), (m, o, ""))
            if d is not None:
                out.append((f"{m} {o}: [{v}] vs the base run, LP top-1", d))
    if ("none", "none", "") in cells:
        for key in cells:
            if key[0] not in REFERENCE_LABELS:
                d = paired_difference(records, key, ("none", "none", ""))
                if d is not None:
                    out.append((f"{_name(key)} vs no pretraining, LP top-1", d))
    return out


RETRIEVAL_TEXTS = {"names": "class prompts", "descriptions": "each class's descriptions, averaged per class",
                   "captions": "the validation videos' captions"}


def _retrieval_texts(records: Sequence[dict]) -> str:
    """What the recalls ranked, from the records' retrieval (mode and `prompts`; older records: class prompts)."""
    kinds = {"captions" if r["retrieval"].get("mode") == "captions" else r["retrieval"].get("prompts", "names")
             for r in records if r.get("retrieval")}
    return " / ".join(RETRIEVAL_TEXTS.get(k, k) for k in sorted(kinds)) or RETRIEVAL_TEXTS["names"]


def _retrieval_head(records: Sequence[dict]) -> str:
    """Through which head the recalls were measured, from the records' `align_epochs` (older: 0)."""
    epochs = sorted({int(r["retrieval"].get("align_epochs", 0)) for r in records if r.get("retrieval")})
    aligned = [e for e in epochs if e > 0]
    if not aligned:
        return "through the contrastive head (only for runs that trained it)"
    said = (f"through a video-text head aligned on the frozen encoder for {' / '.join(map(str, aligned))} epochs "
            "(LiT; MAE-only runs too, so MAE and MAE + video-text are read by the same head)")
    return said + (" or the contrastive head" if 0 in epochs else "")


def findings_section(records: Sequence[dict], rows: Sequence[dict]) -> list[str]:
    """The report's findings, as markdown lines: the figures at chance (`at_chance`), then every
    comparison of `findings` with its verdict (and its cells at chance); [] when there is none."""
    found = findings(records)
    chance_lines = at_chance_lines(rows, lambda r: _name(cell_key(r))) + certain_lines(rows)
    if not found and not chance_lines:
        return []
    return (["## Findings: beyond noise?", "",
             "Each comparison is paired by seed; beyond noise = its 95% t-interval over seeds excludes zero. "
             "The interval covers training randomness, not the sampling of the validation videos, which "
             "every run shares. At chance = inside the 95% band of a random guesser over the same queries.", ""]
            + [f"- {line}." for line in chance_lines]
            + [f"- {title}: {verdict(d)}{_chance_suffix(d, rows)}." for title, d in found] + [""])


def _chance_suffix(d: dict, rows: Sequence[dict]) -> str:
    """'; tube mae's LP top-1 (12.3) is at chance' for a comparison whose cells' means lie in their bands."""
    header = METRICS.get(d["metric"])
    by_key = {cell_key(r): r for r in rows}
    names = [f"{_name(key)} ({100 * by_key[key][header][0]:.1f})" for key in (d["a"], d["b"])
             if key in by_key and by_key[key].get(header) and by_key[key]["chance"].get(header) is not None
             and by_key[key]["chance"][header].contains(by_key[key][header][0])]
    if not names:
        return ""
    return f"; {' and '.join(names)} {'is' if len(names) == 1 else 'are'} at chance in {header}"


def gains_markdown(rows: Sequence[dict]) -> str:
    """Table of paired video-text gains (rows of `contrastive_gains`), with 95% t-intervals."""
    lines = ["| Mask | gain of +V->T (points) | 95% interval | n | per seed | seeds where it helps |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        per_seed = ", ".join(points(d) for d in r["diffs"])
        ci = f"[{points(r['ci'][0])}, {points(r['ci'][1])}]" if r["ci"] else "-"
        spread = f" ± {100 * r['std']:.1f}" if r["n"] > 1 else ""  # one seed: no spread to give
        lines.append(f"| {cell_label(r['masking'], r['variant'])} | {points(r['mean'])}{spread} | "
                     f"{ci} | {r['n']} | {per_seed} | {r['wins']}/{r['n']} |")
    return "\n".join(lines)


def _common(records: Sequence[dict], key: str):
    """The value of `key` that every record shares, else None (missing or differing)."""
    values = {r.get(key) for r in records}
    return values.pop() if len(values) == 1 else None


def _chance_note(records: Sequence[dict]) -> str:
    k = _common(records, "num_classes")
    return f" Chance level: 1/{k} = {100 / k:.1f}% top-1." if k else ""


def attribute_markdown(records: Sequence[dict]) -> str:
    """Attribute-probe table (mean ± std over seeds) and the paired gain of the video-text loss,
    for records that carry `attribute_probe` (synthetic studies); "" otherwise."""
    from tgmae.study.attributes import ATTRIBUTES

    recs = [r for r in records if r.get("attribute_probe")]
    if not recs:
        return ""
    first = recs[0]["attribute_probe"]
    chance = ", ".join(f"{a} {100 / first[f'{a}_classes']:.1f}" for a in ATTRIBUTES)
    lines = ["Logistic regression (L-BFGS) on each run's cached probe features, for the action and for "
             "the acting object's colour and shape that every caption names; validation top-1 %, "
             f"chance: {chance}.", "",
             "| Mask | objective | " + " | ".join(ATTRIBUTES) + " | seeds |", "|---|---|" + "---|" * (len(ATTRIBUTES) + 1)]
    for (masking, objective, variant), runs in sorted(_by_cell(recs).items()):
        cells = []
        for a in ATTRIBUTES:
            v = [100 * r["attribute_probe"][a] for r in runs]
            cells.append(f"{statistics.fmean(v):.1f} ± {sample_std(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}")
        lines.append(f"| {cell_label(masking, variant)} | {objective} | " + " | ".join(cells) + f" | {len(runs)} |")
    flat = [dict(r, **{f"attr_{a}": r["attribute_probe"][a] for a in ATTRIBUTES}) for r in recs]
    gains = {a: {(g["masking"], g["variant"]): g for g in contrastive_gains(flat, f"attr_{a}")} for a in ATTRIBUTES}
    if any(gains.values()):
        lines += ["", "Paired gain of MAE + contrastive over MAE (points, mean ± std over seeds):", ""]
        for key in sorted(gains[ATTRIBUTES[0]]):
            parts = [f"{a} {100 * gains[a][key]['mean']:+.1f} ± {100 * gains[a][key]['std']:.1f}"
                     for a in ATTRIBUTES]
            lines.append(f"- {cell_label(*key)}: " + ", ".join(parts))
    return "\n".join(lines)


def chance_check(records: Sequence[dict], rows: Sequence[dict]) -> str:
    """A sentence on the top-1 columns against a random guesser's 95% band on the validation set
    (small synthetic sets are noisy: say so), and one on how coarse the T->V recalls are."""
    k, n = _common(records, "num_classes"), _common([r for r in records if r.get("num_val")], "num_val")
    text = ""
    if k and n:
        b = accuracy_band(n, k)
        means = [(r[h][0], r["chance"][h]) for r in rows for h in ("FT top-1", "LP top-1") if r[h] is not None]
        near = sum(band is not None and band.contains(m) for m, band in means)
        text = (f"With {n} validation videos a random guesser's top-1 lies in {100 * b.lo:.1f}-{100 * b.hi:.1f}% "
                f"95% of the time; {near} of {len(means)} FT / LP means lie in that band (the band of a mean over "
                "seeds is narrower) and are marked \"(at chance)\"")
        text += (": at this size no condition is distinguishable from chance, so the table says nothing about the "
                 "maskings or objectives." if near == len(means) else ".")
    t2v = [r["chance"]["T->V R@1"] for r in rows if r["chance"].get("T->V R@1") is not None]
    if t2v:
        b = min(t2v, key=lambda x: x.n)
        text += (f" T->V recalls rank the videos for each of only {b.n} text queries per run: they move in steps of "
                 f"{100 / b.n:.1f} points, and a random ranking's R@1 lies in {100 * b.lo:.0f}-{100 * b.hi:.0f}%.")
    return text.strip()


def _cell(value, band=None) -> str:
    """'10.6', '20.1 ± 3.2', '-'; ' (at chance)' after a mean inside `band` (a ChanceBand)."""
    if value is None:
        return "-"
    mean, std, n = value
    text = f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"
    return text + (" (at chance)" if band is not None and band.contains(mean) else "")


def markdown_table(rows: Sequence[dict]) -> str:
    columns = shown_columns(rows)
    head = "| Mask | ratio | MAE | V->T | " + " | ".join(h for h, _ in columns) + " | seeds |"
    sep = "|" + "---|" * (len(columns) + 5)
    lines = [head, sep]
    for r in rows:
        mae = "✓" if "mae" in r["objective"].split("+") else ""
        vt = "✓" if "contrastive" in r["objective"] else ""
        cells = " | ".join(_cell(r[h], r.get("chance", {}).get(h)) for h, _ in columns)
        ratio = "-" if r["mask_ratio"] is None else r["mask_ratio"]
        lines.append(f"| {cell_label(r['masking'], r.get('variant', ''))} | {ratio} | {mae} | {vt} | {cells} | "
                     f"{len(r['seeds'])} |")
    return "\n".join(lines)


def loss_curves(records: Sequence[dict], out: Path) -> Optional[Path]:
    """Figure 4 layout: MSE and InfoNCE over steps, one line per (masking, objective), seed 0."""
    from tgmae.train.metrics import read_metrics
    from tgmae.viz.curves import plot_curves

    runs = {}
    for r in records:
        if r["seed"] != min(x["seed"] for x in records):
            continue
        metrics = Path(r["run_dir"]) / "pretrain" / "metrics.jsonl"
        if metrics.is_file():
            runs[_name(cell_key(r))] = read_metrics(metrics)
    if not runs:
        return None
    return plot_curves(runs, ["loss_mse", "loss_nce"], out, title="pretraining losses (Figure 4 layout)",
                       smooth=3)


def missing_figures(records: Sequence[dict]) -> list[Path]:
    """The pretraining files the report draws (metrics.jsonl for the curves, reconstruction.png) that
    the first seed's pretrained runs lack: said in the report, never silently dropped. Reference
    rows have no pretraining; contrastive-only runs no reconstruction (their decoder never trains)."""
    first = min((r["seed"] for r in records), default=None)
    missing = []
    for r in records:
        if r["seed"] != first or r["masking"] in REFERENCE_LABELS:
            continue
        names = ["metrics.jsonl"] + (["reconstruction.png"] if r["objective"] != "contrastive" else [])
        missing += [f for n in names if not (f := Path(r["run_dir"]) / "pretrain" / n).is_file()]
    for f in missing:
        log.warning("report: %s is missing: its figure is left out", f)
    return missing


# Each figure a study record holds (its keys) and the results file, under the run folder, it was read
# from (`tgmae.study.run.run_cell`; the extra probes: `tgmae.study.frozen_probes.run_frozen_probes`).
FIGURE_SOURCES = {"finetune/finetune_results.json": ("finetune_top1",),
                  "probe/probe_results.json": ("linear_probe_top1", "attribute_probe"),
                  "retrieval/retrieval_results.json": ("retrieval",),
                  "probe_knn/probe_results.json": ("knn_top1", "knn"),
                  "probe_attentive/probe_results.json": ("attentive_probe_top1",)}
SOURCE_LABELS = {"finetune/finetune_results.json": "FT top-1", "probe/probe_results.json": "LP top-1 and attributes",
                 "retrieval/retrieval_results.json": "recalls", "probe_knn/probe_results.json": "kNN top-1",
                 "probe_attentive/probe_results.json": "AP top-1"}


def phase_done(results: Path) -> bool:
    """Whether a phase's results JSON is there and reads as a JSON object: the study's test of a done
    phase (`tgmae.study.run.run_cell` reruns one that is not) and the report's of a figure's source."""
    try:
        return isinstance(json.loads(Path(results).read_text()), dict)
    except (OSError, ValueError):
        return False


ALIGNED_RETRIEVAL = "retrieval_aligned/retrieval_results.json"  # recalls through an aligned head (align_epochs > 0)
SOURCE_LABELS[ALIGNED_RETRIEVAL] = SOURCE_LABELS["retrieval/retrieval_results.json"]


def figure_sources(record: dict) -> dict[str, tuple[str, ...]]:
    """FIGURE_SOURCES for `record`: its recalls come from `retrieval_aligned/` when they were measured
    through a head aligned on the frozen encoder (`tgmae.study.run.retrieve`)."""
    retrieval = record.get("retrieval") or {}
    if not int(retrieval.get("align_epochs", 0)):
        return FIGURE_SOURCES
    return {(ALIGNED_RETRIEVAL if k == "retrieval/retrieval_results.json" else k): v for k, v in FIGURE_SOURCES.items()}


def lost_sources(record: dict, run: Path) -> list[str]:
    """The `figure_sources` files (relative to `run`, the record's folder) of figures `record` holds
    whose file is gone or unreadable (`phase_done`)."""
    return [name for name, keys in figure_sources(record).items()
            if any(record.get(k) not in (None, {}) for k in keys) and not phase_done(Path(run) / name)]


def drop_lost_figures(records: Sequence[dict]) -> tuple[list[dict], list[Path]]:
    """(records with each figure whose results file is gone or unreadable left out, those files): a
    deleted or damaged run no longer shows the figures its study record kept; each file is logged as a
    warning (the other figures are right: no error)."""
    out, lost = [], []
    for r in records:
        names = lost_sources(r, Path(r["run_dir"]))
        sources = figure_sources(r)
        r = dict(r, **{k: ({} if k == "retrieval" else None) for n in names for k in sources[n]})
        for n in names:
            lost.append(Path(r["run_dir"]) / n)
            log.warning("report: %s is missing or unreadable: the run's %s left out (a tgmae study rerun "
                        "recomputes it)", lost[-1], SOURCE_LABELS[n])
        out.append(r)
    return out, lost


TEXT_PROBE = "text_probe.json"  # under a study folder: `tgmae.study.run.text_probe`'s record


def read_text_probe(study_dir: Path) -> Optional[dict]:
    """The text probe record in `study_dir` (None without a readable one), its "model" named where the
    study is now when it is a folder of the study recorded at another place (the study moved since):
    the folder of that name in `study_dir` holding the recorded weights (`hub.weights_fingerprint`)."""
    from tgmae.hub import weights_fingerprint

    path = Path(study_dir) / TEXT_PROBE
    if not phase_done(path):
        return None
    probe = json.loads(path.read_text())
    if not all(isinstance(probe.get(k), dict) for k in ("text_model", "bag_of_words")):
        log.warning("report: %s is not a text probe record: its line is left out", path)
        return None
    model = str(probe.get("model") or "")
    here = Path(study_dir) / Path(model).name
    if model and Path(model) != here and here.is_dir() and weights_fingerprint(str(here)) == probe.get("weights"):
        probe = dict(probe, model=str(here))
    return probe


def text_probe_note(probe: Optional[dict]) -> str:
    """A sentence on how well the contrastive targets' text space separates the actions
    (`tgmae.study.run.text_probe`'s record), "" without one."""
    if not probe:
        return ""
    t, b = probe["text_model"], probe["bag_of_words"]
    return (f"Text probe: a linear probe recovers the action from the contrastive targets' text embeddings "
            f"({probe['model']}) for {100 * t['action']:.1f}% of {t['num_val']} held-out captions "
            f"(bag of words: {100 * b['action']:.1f}%; chance {100 / t['action_classes']:.1f}%).")


RECON_CHECK_DIR = "reconstruction_check"  # under a study folder: `tgmae.study.run.run_recon_check`'s output


RECON_TITLE = "Reconstruction check: MAE on static-camera clips"
RECON_HEADERS = ["held-out masked MSE", "patch-mean oracle", "visible mean", "copy", "ratio", "steps"]


def recon_check_section(path: Optional[Path]) -> Optional[dict]:
    """{"text", "row" (under RECON_HEADERS), "figure" (Path or None)} of the reconstruction check's
    JSON at `path`; None without one."""
    if path is None or not Path(path).is_file():
        return None
    r = json.loads(Path(path).read_text())
    figure = Path(path).parent / r["figure"]
    text = ("The library's MAE trained on clips with something to copy - a static camera, so the background is "
            "the same in every frame, under random .5 masks, so a masked token shows at the same place in another "
            f"time slice ({r['steps']} steps, {r['cpu_s']:.1f} CPU-s on 1 thread; docs/sanity.md) - while the "
            "compared cells below are on scrolling-camera clips under their own masks. Held-out masked MSE in "
            "pixels ([0, 1]); a ratio to the patch-mean oracle below 1 means the reconstructions hold more than "
            "each patch's mean colour.")
    row = [f"{r['mse']:.4f}", f"{r['patch_mean_mse']:.4f}", f"{r['visible_mean_mse']:.4f}", f"{r['copy_mse']:.4f}",
           f"{r['ratio']:.2f}", str(r["steps"])]
    return {"text": text, "row": row, "figure": figure if figure.is_file() else None}


PROBES = {"lbfgs": "L-BFGS logistic regression, L2 chosen by k-fold cross-validation on the training features",
          "lars": "BatchNorm + linear head trained with LARS", "sgd": "BatchNorm + linear head trained with SGD",
          "knn": "DINO's weighted k-NN in the linear probe's place", "attentive": "an attentive probe in its place"}
PROBE_KEYS = {"knn": "eval.probe", "attentive": "eval.probe"}  # the key that chose each kind (else probe_optimizer)


def _probe_kinds(records: Sequence[dict]) -> dict[Optional[str], int]:
    """{how the runs' "linear probe" column was fitted (eval.probe_optimizer, or eval.probe's knn /
    attentive in its place; None: not recorded): number of runs}."""
    kinds: dict[Optional[str], int] = {}
    for r in records:
        if r.get("linear_probe_top1") is not None:
            kinds[r.get("probe")] = kinds.get(r.get("probe"), 0) + 1
    return kinds


def check_one_probe(records: Sequence[dict]) -> None:
    """ConfigError naming eval.probe_optimizer when the runs used different linear probes (a cell would
    average them as seeds)."""
    kinds = _probe_kinds(records)
    if len(kinds) > 1:
        counts = ", ".join(f"{k}: {n} runs" for k, n in sorted((str(k), n) for k, n in kinds.items()))
        raise ConfigError(f"these runs were probed differently (eval.probe / eval.probe_optimizer {counts}); "
                         "report each kind separately")


def _probe_note(records: Sequence[dict]) -> str:
    """' (<how the probe was fitted>)' from the records' `probe` field; '' when unknown."""
    kinds = _probe_kinds(records)
    if len(kinds) > 1:
        return f" (probes differ between runs: {sorted(map(str, kinds))})"
    kind = next(iter(kinds), None)
    return "" if kind is None else f" ({PROBES.get(kind, kind)}; {PROBE_KEYS.get(kind, 'eval.probe_optimizer')}={kind})"


def probe_gains(records: Sequence[dict]) -> list[dict]:
    """Per cell: attentive minus linear probe top-1, paired by seed ({"cell", "seeds"} + `diff_stats`)."""
    cells: dict[tuple, list[tuple[int, float]]] = {}
    for r in records:
        ap, lp = r.get("attentive_probe_top1"), r.get("linear_probe_top1")
        if ap is not None and lp is not None:
            cells.setdefault(cell_key(r), []).append((r["seed"], ap - lp))
    rows = []
    for key, pairs in sorted(cells.items()):
        rows.append({"cell": key, "seeds": sorted(s for s, _ in pairs), **diff_stats([d for _, d in sorted(pairs)])})
    return rows


# what the frozen-probe section says of each extra probe whose record field some run has
PROBE_TEXTS = {"knn_top1": "kNN: DINO's weighted k-NN on the linear probe's features (top-1 of the first k in "
                           "eval.knn_k).",
               "attentive_probe_top1": "AP: V-JEPA's attentive probe (one cross-attention block with a learnable "
                                       "query, then linear) on the frozen token grids, tested on the finetuning's "
                                       "views."}


def frozen_probes_markdown(records: Sequence[dict]) -> str:
    """The report's section on the extra probes: attentive vs linear per cell (beyond noise?) and
    each probe's mean wall seconds per run; "" when no record has an extra probe."""
    said = [text for key, text in PROBE_TEXTS.items() if any(r.get(key) is not None for r in records)]
    if not said:
        return ""
    lines = ["## Frozen-backbone probes", "", " ".join(said)]
    if gains := probe_gains(records):
        lines += ["", "Attentive minus linear probe, paired by seed:", ""]
        lines += [f"- {_name(d['cell'])}: {verdict(d)}." for d in gains]
    costs = {}
    for r in records:
        for kind, s in (r.get("probe_seconds") or {}).items():
            costs.setdefault(kind, []).append(s)
    if costs:  # a cell's record keeps the seconds of the invocation that ran each probe; one found done is not timed
        lines += ["", "Wall seconds per run (mean over the runs timed when they ran the probe, in this invocation "
                  "or an earlier one): "
                  + ", ".join(f"{k} {statistics.fmean(v):.1f} s (n = {len(v)})" for k, v in sorted(costs.items()))
                  + "."]
    return "\n".join(lines)


def missing_sections(records: Sequence[dict], lost: Sequence[Path], out_dir: Path,
                     unfinished: Sequence[Path] = ()) -> list[str]:
    """The report's lines naming the cells that did not finish (`unfinished_runs`), the figures' files
    that are gone (`missing_figures`) and the results files whose figures `drop_lost_figures` left out
    (`lost`), relative to `out_dir` as the links."""
    md = []
    if unfinished:
        md += ["## Not finished", "", "These run folders have no study_record.json (the cell was killed or is "
               "still running), so they are not in the table:", ""]
        md += [f"- {_rel(d, out_dir)}" for d in unfinished] + [""]
    if missing := missing_figures(records):
        md += ["## Missing figures", "", "These runs' files are gone, so their figures are left out:", ""]
        md += [f"- {_rel(f, out_dir)}" for f in missing] + [""]
    if lost:
        md += ["## Missing results", "", "These runs' results files are gone or unreadable, so their figures are "
               "left out (-); a tgmae study rerun recomputes them:", ""]
        md += [f"- {_rel(f, out_dir)}: {SOURCE_LABELS.get(f'{f.parent.name}/{f.name}', 'figures')}"
               for f in lost] + [""]
    return md


def write_report(records: Sequence[dict], out_dir: Path, title: str = "tgmae report",
                 seconds: Optional[float] = None, text_probe: Optional[dict] = None,
                 recon_check: Optional[Path] = None, lost: Sequence[Path] = (),
                 unfinished: Sequence[Path] = ()) -> Path:
    """results.json, report.md, report.html (+ figures) in out_dir; returns report.md. Both reports
    come from one description, `report_markdown` (the .html rendered from the .md's lines,
    `tgmae.study.report_html`), so they hold the same sections and numbers. `text_probe`:
    the study's text_probe.json record (`read_text_probe`); `recon_check`: its reconstruction_check.json;
    `lost`: the results files whose figures `drop_lost_figures` left out; `unfinished`: cell folders
    without a record (`unfinished_runs`); both named in the report."""
    from tgmae.study.report_html import markdown_to_html

    out_dir = Path(out_dir)  # made by the first write (and removed again if the disk refuses it)
    records = sorted(records, key=lambda r: cell_key(r) + (r["seed"],))
    atomic_write_text(out_dir / "results.json", json.dumps(list(records), indent=2))
    md = report_markdown(records, out_dir, title, seconds=seconds, text_probe=text_probe,
                         recon_check=recon_check, lost=lost, unfinished=unfinished)
    atomic_write_text(out_dir / "report.md", "\n".join(md))
    atomic_write_text(out_dir / "report.html", markdown_to_html(md, title))
    return out_dir / "report.md"


def report_figures(records: Sequence[dict], out_dir: Path) -> list[tuple[str, Path]]:
    """(caption, PNG path) of the report's figures: the masks (out_dir/masks.png, when there), the
    pretraining loss curves (drawn into out_dir) and the first seed's reconstructions."""
    figures: list[tuple[str, Path]] = []
    masks_png = out_dir / "masks.png"
    if masks_png.is_file():
        figures.append(("Masks (Figure 1 layout)", masks_png))
    curves = loss_curves(records, out_dir / "loss_curves.png")
    if curves is not None:
        figures.append(("Pretraining losses", curves))
    for r in records:
        recon = Path(r["run_dir"]) / "pretrain" / "reconstruction.png"
        if recon.is_file() and r["seed"] == records[0]["seed"]:
            figures.append((f"Reconstruction: {_name(cell_key(r))}", recon))
    return figures


def report_markdown(records: Sequence[dict], out_dir: Path, title: str, seconds: Optional[float] = None,
                    text_probe: Optional[dict] = None, recon_check: Optional[Path] = None,
                    lost: Sequence[Path] = (), unfinished: Sequence[Path] = ()) -> list[str]:
    """The report's lines of Markdown, sorted `records` in, figures linked relative to `out_dir`: the
    one description of its sections that report.md and report.html are both written from
    (arguments as `write_report`'s)."""
    rows = aggregate(records)
    md = [f"# {title}", "",
          "Top-1 / recall in %, mean ± std over seeds where several ran. FT: finetune with multi-view "
          f"testing; LP: linear probe on frozen features{_probe_note(records)}; R@k: zero-shot retrieval "
          f"against {_retrieval_texts(records)} {_retrieval_head(records)}."
          + _chance_note(records) + _took(records, seconds) + unfinished_note(unfinished),
          "", markdown_table(rows), ""]
    md += [check, ""] if (check := chance_check(records, rows)) else []
    md += [text_probe_note(text_probe), ""] if text_probe else []
    gains = contrastive_gains(records)
    if gains:
        md += ["## Does the video-text loss help the linear probe?", "",
               "Linear-probe top-1 of MAE + contrastive minus MAE alone, same masking, paired by seed; "
               "95% Student-t interval over the n seeds.", "",
               gains_markdown(gains), ""]
    md += findings_section(records, rows)
    md += [frozen, ""] if (frozen := frozen_probes_markdown(records)) else []
    md += ["## What the features encode", "", attributes, ""] if (attributes := attribute_markdown(records)) else []
    check_section = recon_check_section(recon_check)
    if check_section:
        md += [f"## {RECON_TITLE}", "", check_section["text"], "", "| " + " | ".join(RECON_HEADERS) + " |",
               "|" + "---|" * len(RECON_HEADERS), "| " + " | ".join(check_section["row"]) + " |", ""]
        if check_section["figure"]:
            md += [f"![reconstruction check]({_rel(check_section['figure'], out_dir)})", ""]
    for caption, path in report_figures(records, out_dir):
        md += [f"## {caption}", "", f"![{caption}]({_rel(path, out_dir)})", ""]
    return md + missing_sections(records, lost, out_dir, unfinished)


def _took(records: Sequence[dict], seconds: Optional[float]) -> str:
    """The opening paragraph's sentences on this invocation's wall time and the runs' summed time."""
    took = f"\n\nWall time of this invocation: {seconds / 60:.1f} min." if seconds is not None else ""
    run_seconds = [r["total_seconds"] for r in records if r.get("total_seconds") is not None]
    if run_seconds:
        took += (f" The {len(run_seconds)} runs took {sum(run_seconds) / 60:.1f} min summed over runs (pretrain + "
                 "probe + finetune + retrieval; shared set-up not included; runs in parallel overlap, so the sum "
                 "can exceed the wall time).")
    return took


def _rel(path: Path, base: Path) -> str:
    """The relative link from a report in `base` to `path` (the folder stays movable); absolute where
    none exists (another drive)."""
    import os

    try:
        return Path(os.path.relpath(Path(path).resolve(), base.resolve())).as_posix()
    except ValueError:
        return str(Path(path).resolve())


def collect_records(paths: Sequence[str | Path]) -> list[dict]:
    """study_record.json files under each path (a run directory or a whole study folder), each
    record's `run_dir` set to the folder it was found in: a study moved or copied elsewhere reads its
    own figures, never those at the recorded place (which may since hold another study)."""
    records = []
    for p in paths:
        p = Path(p)
        files = [p / "study_record.json"] if (p / "study_record.json").is_file() else sorted(p.rglob("study_record.json"))
        if not files:
            raise FileNotFoundError(f"{p}: no study_record.json (not a finished study run)")
        records += [dict(json.loads(f.read_text()), run_dir=str(f.parent)) for f in files]
    return records


class RepeatedRunError(ValueError, UserError):
    """`tgmae report` was given two records of one (masking, objective, variant, seed): the same runs
    twice or a study and its copy; averaged, they would pass as two seeds. The message names both
    folders (not a wrong key: no "config error" prefix)."""


def refuse_repeated_runs(records: Sequence[dict]) -> None:
    """RepeatedRunError naming both run folders when two of `records` are one cell's same seed
    (`cell_key` + seed): the table would count the run twice, as seeds with no spread between them."""
    seen: dict[tuple, str] = {}
    for r in records:
        key = cell_key(r) + (r["seed"],)
        if key not in seen:
            seen[key] = r["run_dir"]
            continue
        first, second = seen[key], r["run_dir"]
        how = ("the same folder given twice" if Path(first).resolve() == Path(second).resolve()
               else "two folders of one cell and seed, e.g. a study and its copy")
        variant = f" [{key[2]}]" if key[2] else ""
        raise RepeatedRunError(f"{first} and {second} both hold {key[0]} {key[1]}{variant} seed {key[3]} ({how}): "
                               "a report would count it as two seeds; give each study or run once")


# Keys of a run's phase configs that say where and how it ran (logging, checkpoints, workers, device,
# decoded-clip cache: a resume's RESUMABLE_KEYS less the run's length), and the seed: runs of one variant may
# differ in these and in what makes their cells (`cells.cell_defined_keys`), nothing else
WHERE_RUN_KEYS = tuple(k for k in RESUMABLE_KEYS if k not in ("train.epochs", "train.max_steps")) + ("train.seed",)
RETRIEVAL_SETTINGS = ("mode", "prompts", "align_epochs")  # a record's retrieval keys that say how it was measured


def _located(value, run: str, study: str):
    """`value` with the recorded run folder and study folder at its start written <run> / <study>: two
    studies' runs name their own folders (data, CLIP, word encoder, weights) where the recipe is one."""
    if not isinstance(value, str):
        return value
    for folder, name in ((run, "<run>"), (study, "<study>")):
        if value == folder or value.startswith(folder + "/"):
            return name + value[len(folder):]
    return value


def run_settings(record: dict) -> dict[str, object]:
    """{"<phase> <dotted key>": value} of a study run's settings (re-trial 31A S1): every phase config
    (<run_dir>/<phase>/config.yaml) less WHERE_RUN_KEYS, paths into the run's own study folder as
    `_located`; "clip <key>" of its study's CLIP (clip/train_clip.json); "retrieval <key>" of the
    record's RETRIEVAL_SETTINGS. Unreadable or missing files add nothing."""
    import yaml

    run_dir = Path(record["run_dir"])
    out: dict[str, object] = {}
    for path in sorted(run_dir.glob("*/config.yaml")):
        with contextlib.suppress(OSError, ValueError, yaml.YAMLError):
            cfg = flatten(yaml.safe_load(path.read_text()) or {})
            recorded = Path(str(cfg.get("train.output_dir") or path.parent)).parent  # the folder when it ran
            for key, value in cfg.items():
                if not any(key == k or (k.endswith(".") and key.startswith(k)) for k in WHERE_RUN_KEYS):
                    out[f"{path.parent.name} {key}"] = _located(value, str(recorded), str(recorded.parent.parent))
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        clip = json.loads((run_dir.parent.parent / "clip" / "train_clip.json").read_text())["config"]
        out.update({f"clip {k}": v for k, v in clip.items()})
    retrieval = record.get("retrieval") or {}
    out.update({f"retrieval {k}": retrieval[k] for k in RETRIEVAL_SETTINGS if k in retrieval})
    return out


def setting_differences(a: dict, b: dict, settings: Optional[dict] = None) -> list[tuple[str, object, object]]:
    """(key, a's value, b's value) of each `run_settings` key both runs have and that differs, but those
    that make their cells (`cells.cell_defined_keys`: none between runs of one cell). settings: {run_dir:
    `run_settings`} read so far, filled in (a report compares each run with several)."""
    settings = {} if settings is None else settings
    for r in (a, b):
        if r["run_dir"] not in settings:
            settings[r["run_dir"]] = run_settings(r)
    sa, sb = settings[a["run_dir"]], settings[b["run_dir"]]
    cells = cell_defined_keys(cell_key(a)[:2], cell_key(b)[:2])
    return [(k, sa[k], sb[k]) for k in sorted(set(sa) & set(sb)) if sa[k] != sb[k] and k not in cells]


def _mixed_settings_error(a: dict, b: dict, diffs: list) -> ConfigError:
    """The one-line refusal of `refuse_mixed_settings` for runs `a` and `b` and their `diffs`."""
    said = "; ".join(f"{k}: {x!r} -> {y!r}" for k, x, y in diffs[:4])
    said += f" (and {len(diffs) - 4} more)" if len(diffs) > 4 else ""
    if cell_key(a) == cell_key(b):
        return ConfigError(f"{a['run_dir']} and {b['run_dir']} are one cell ({_name(cell_key(b))}) run with other "
                           f"settings ({said}): a report would average them as seeds; report each study separately, "
                           "or rerun one under a study.variant name (rows of its own)")
    return ConfigError(f"{a['run_dir']} ({_name(cell_key(a))}) and {b['run_dir']} ({_name(cell_key(b))}) differ in "
                       f"more than their cells ({said}): a report's rows and differences would compare those settings, "
                       "not the cells; report each study separately, or rerun one under a study.variant name (rows "
                       "of its own)")


def refuse_mixed_settings(records: Sequence[dict]) -> None:
    """ConfigError naming the keys and two run folders when two runs of one variant differ in a setting
    (`setting_differences`) that does not make their cells (`cells.cell_defined_keys`), the seed or where
    they ran: one cell's runs of two recipes would be averaged as seeds (re-trial 31A S1), two cells'
    rows, paired differences and "best" marks would compare recipes, not maskings (re-trial 31A S1:
    cells of two recipes side by side). Runs of other variants are not compared: a variant is an
    ablation, its own settings by name. Each run is compared with the first run of every cell of its
    variant (its own cell's first: named as one cell)."""
    firsts: dict[tuple, dict] = {}  # cell_key -> the first run of that cell
    settings: dict[str, dict] = {}
    for r in records:
        key = cell_key(r)
        firsts.setdefault(key, r)
        for cell in sorted((c for c in firsts if c[2] == key[2]), key=lambda c: c != key):
            diffs = setting_differences(firsts[cell], r, settings) if firsts[cell] is not r else []
            if diffs:
                raise _mixed_settings_error(firsts[cell], r, diffs)


CELL_FOLDER = re.compile(r".+__.+__s\d+(__.+)?")  # `tgmae.study.run.StudyPaths.run`'s names


def unfinished_runs(paths: Sequence[str | Path]) -> list[Path]:
    """The cell folders (named as `StudyPaths.run`) without a study_record.json beside the finished
    ones under each study folder of `paths` (its runs/ and the folders holding its records): cells
    killed or still running. A run folder given itself brings none of its siblings."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if (p / "study_record.json").is_file():
            continue
        homes = {f.parent.parent for f in p.rglob("study_record.json")}
        homes |= {p / "runs"} if (p / "runs").is_dir() else set()  # a study with no cell finished yet
        found |= {d for home in homes for d in home.iterdir()
                  if d.is_dir() and CELL_FOLDER.fullmatch(d.name) and not (d / "study_record.json").is_file()}
    for d in sorted(found):
        log.warning("report: %s has no study_record.json: the cell did not finish (killed, or still running), "
                    "so it is not in the table", d)
    return sorted(found)


def unfinished_note(unfinished: Sequence[Path]) -> str:
    """The opening paragraph's sentence on the cells that did not finish ("" for none)."""
    if not unfinished:
        return ""
    return (f" Not finished: {len(unfinished)} run folders have no study_record.json (a cell killed or still "
            "running) and are not in the table; a tgmae study rerun with the same settings finishes them.")


def _same_run(a: dict, b: dict) -> bool:
    """Whether two study records are one run: the same folder, or the same record at another place
    (the folder moved or copied since; figures one report left out, `drop_lost_figures`, do not count)."""
    if a.get("run_dir") and b.get("run_dir") and Path(a["run_dir"]).resolve() == Path(b["run_dir"]).resolve():
        return True
    ignored = {"run_dir"}.union(*FIGURE_SOURCES.values())
    return {k: v for k, v in a.items() if k not in ignored} == {k: v for k, v in b.items() if k not in ignored}


class ReportFolderError(FileExistsError, UserError):
    """`tgmae report --out` holds a results.json that is not a report of these runs (a file in the
    way, not a wrong key: no "config error" prefix); the message names the file."""


def refuse_other_report(out: Path, records: Sequence[dict]) -> None:
    """ReportFolderError when `out` holds a report (results.json) of runs that are not among `records`
    (`_same_run`), or a results.json that is not a report's: another study's report is not
    replaced without --overwrite. The same runs (also
    moved since), or more of them (cells finished since), are rewritten."""
    saved = out / "results.json"
    if not saved.is_file():
        return
    try:
        old = json.loads(saved.read_text())
    except ValueError:
        old = None
    if not (isinstance(old, list) and all(isinstance(r, dict) and "run_dir" in r for r in old)):
        raise ReportFolderError(f"{saved}: not a study report's results.json (a list of study records), so it is "
                                "not replaced; give --out another folder, or --overwrite to replace it")
    other = sorted(str(r.get("run_dir")) for r in old if not any(_same_run(r, n) for n in records))
    if other:
        raise ReportFolderError(f"{saved} holds a report of other runs ({len(other)}, e.g. {other[0]}): it is "
                                "not replaced; give --out another folder, or --overwrite to replace it")


def _data_set(record: dict) -> tuple:
    """What a record's scores were measured on: its class and val-video counts, and the settings of
    its study's synthetic set (`<study>/data/meta.json` beside its runs/, when there)."""
    meta = {}
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
        found = json.loads((Path(record["run_dir"]).parent.parent / "data" / "meta.json").read_text())
        meta = {k: found.get(k) for k in SET_KEYS}
    return record.get("num_classes"), record.get("num_val"), json.dumps(meta, sort_keys=True)


SET_KEYS = ("seed", "num_videos", "val_fraction", "height", "width", "frames", "fps", "distractors",
            "distractor_speed")  # a synthetic set's meta.json settings that make it another set


def _same_data(a: tuple, b: tuple) -> bool:
    """Whether two `_data_set`s are one set: a record without a val-video count (the "scratch"
    reference: no probe, and its finetuning validates on the study's val set) agrees with any count."""
    return a[0] == b[0] and a[2] == b[2] and (a[1] is None or b[1] is None or a[1] == b[1])


def check_one_data_set(records: Sequence[dict]) -> None:
    """ConfigError naming two runs measured on different data (other class or val-video counts, or
    another synthetic set's settings; `_same_data`): their rows and paired differences would compare
    sets, not conditions."""
    first: dict[tuple, dict] = {}
    for r in records:
        first.setdefault(_data_set(r), r)
    other = [(x, y) for i, x in enumerate(first) for y in list(first)[i + 1:] if not _same_data(x, y)]
    if other:
        a, b = first[other[0][0]], first[other[0][1]]
        raise ConfigError(f"{a.get('run_dir')} and {b.get('run_dir')} were measured on different data "
                          f"({a.get('num_classes')} classes / {a.get('num_val')} val videos vs {b.get('num_classes')} / "
                          f"{b.get('num_val')}, or another synthetic set): report each data set separately")


def report_runs(runs: Sequence[str | Path], out: str | Path, overwrite: bool = False) -> Path:
    """`tgmae report`: one report in `out` from the finished runs or study folders `runs` (with the
    first reconstruction check and text probe found in them; figures whose results file is gone or
    unreadable left out and named, `drop_lost_figures`; cell folders without a record named,
    `unfinished_runs`); prints the table; returns report.md's path.
    FileNotFoundError for a folder without records, RepeatedRunError for two records of one cell and
    seed (`refuse_repeated_runs`), ConfigError for runs probed differently or runs of one variant made
    with other settings than their cells' (`refuse_mixed_settings`),
    ReportFolderError for an `out` holding a report of other runs or another results.json
    (`refuse_other_report`) unless `overwrite`; RunFolderError for an `out` that is a run or lies inside one, `overwrite` or not
    (`locks.refuse_inside_run`)."""
    refuse_inside_run(out, "--out")  # report.md, results.json, figures would mix with the run's files
    records = collect_records(runs)
    check_one_probe(records)  # first: runs probed differently are not copies, whatever their seeds
    check_one_data_set(records)
    refuse_repeated_runs(records)
    refuse_mixed_settings(records)  # after: a copy of one run is named as such, not as "other settings"
    if not overwrite:
        refuse_other_report(Path(out), records)
    records, lost = drop_lost_figures(records)
    checks = [Path(p) / RECON_CHECK_DIR / "reconstruction_check.json" for p in runs]
    text_probe = next((t for p in runs if (t := read_text_probe(Path(p)))), None)  # study folders only
    unfinished = unfinished_runs(runs)
    path = write_report(records, Path(out), text_probe=text_probe, lost=lost, unfinished=unfinished,
                        recon_check=next((c for c in checks if c.is_file()), None))
    print(markdown_table(aggregate(records)))
    if unfinished:
        print(f"\nnot finished ({len(unfinished)} run folders without a study_record.json, not in the table): "
              + ", ".join(map(str, unfinished)))
    print(f"\nreport: {path}")
    return path
