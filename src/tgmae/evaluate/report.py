"""Study reports: the results table (paper Table 2 layout), loss curves (Figure 4 layout) and
figures, as Markdown, HTML and JSON. `tgmae report RUN_DIRS...` rebuilds one from finished runs.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import statistics
from pathlib import Path
from typing import Optional, Sequence

COLUMNS = [  # (header, getter)
    ("FT top-1", lambda r: r.get("finetune_top1")),
    ("LP top-1", lambda r: r.get("linear_probe_top1")),
    ("V->T R@1", lambda r: _recall(r, "video_to_text", 1)),
    ("V->T R@5", lambda r: _recall(r, "video_to_text", 5)),
    ("T->V R@1", lambda r: _recall(r, "text_to_video", 1)),
    ("T->V R@5", lambda r: _recall(r, "text_to_video", 5)),
]


def _recall(record: dict, direction: str, k: int) -> Optional[float]:
    table = (record.get("retrieval") or {}).get(direction) or {}
    value = table.get(f"R@{k}")
    return None if value is None else float(value)


def aggregate(records: Sequence[dict]) -> list[dict]:
    """One row per (masking, objective): mean and std over seeds of every column."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["masking"], r["objective"]), []).append(r)
    rows = []
    for (masking, objective), runs in groups.items():
        row = {"masking": masking, "objective": objective, "seeds": sorted(r["seed"] for r in runs),
               "mask_ratio": runs[0].get("mask_ratio")}
        for header, get in COLUMNS:
            values = [get(r) for r in runs if get(r) is not None and not math.isnan(get(r))]
            row[header] = (statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0,
                           len(values)) if values else None
        rows.append(row)
    return rows


def contrastive_gains(records: Sequence[dict], metric: str = "linear_probe_top1") -> list[dict]:
    """Per masking: `metric` of MAE + contrastive minus MAE alone, paired by seed (Table 2's
    question). Pairing removes the between-seed spread the two runs share (data order, init)."""
    by_key = {(r["masking"], r["objective"], r["seed"]): r for r in records}
    rows = []
    for masking in sorted({r["masking"] for r in records}):
        diffs = [by_key[(masking, "mae+contrastive", s)][metric] - by_key[(masking, "mae", s)][metric]
                 for s in sorted({r["seed"] for r in records})
                 if (masking, "mae", s) in by_key and (masking, "mae+contrastive", s) in by_key]
        if diffs:
            rows.append({"masking": masking, "diffs": diffs, "mean": statistics.fmean(diffs),
                         "std": statistics.pstdev(diffs) if len(diffs) > 1 else 0.0,
                         "wins": sum(d > 0 for d in diffs)})
    return rows


def gains_markdown(rows: Sequence[dict]) -> str:
    lines = ["| Mask | LP gain of +V->T (points) | per seed | seeds where it helps |", "|---|---|---|---|"]
    for r in rows:
        per_seed = ", ".join(f"{100 * d:+.1f}" for d in r["diffs"])
        lines.append(f"| {r['masking']} | {100 * r['mean']:+.1f} ± {100 * r['std']:.1f} | {per_seed} | "
                     f"{r['wins']}/{len(r['diffs'])} |")
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
    from tgmae.evaluate.attributes import ATTRIBUTES

    recs = [r for r in records if r.get("attribute_probe")]
    if not recs:
        return ""
    first = recs[0]["attribute_probe"]
    chance = ", ".join(f"{a} {100 / first[f'{a}_classes']:.1f}" for a in ATTRIBUTES)
    lines = ["Logistic regression (L-BFGS) on each run's cached probe features, for the action and for "
             "the acting object's colour and shape that every caption names; validation top-1 %, "
             f"chance: {chance}.", "",
             "| Mask | objective | " + " | ".join(ATTRIBUTES) + " | seeds |", "|---|---|" + "---|" * (len(ATTRIBUTES) + 1)]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in recs:
        groups.setdefault((r["masking"], r["objective"]), []).append(r)
    for (masking, objective), runs in sorted(groups.items()):
        cells = []
        for a in ATTRIBUTES:
            v = [100 * r["attribute_probe"][a] for r in runs]
            cells.append(f"{statistics.fmean(v):.1f} ± {statistics.pstdev(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}")
        lines.append(f"| {masking} | {objective} | " + " | ".join(cells) + f" | {len(runs)} |")
    flat = [dict(r, **{f"attr_{a}": r["attribute_probe"][a] for a in ATTRIBUTES}) for r in recs]
    gains = {a: {g["masking"]: g for g in contrastive_gains(flat, f"attr_{a}")} for a in ATTRIBUTES}
    if any(gains.values()):
        lines += ["", "Paired gain of MAE + contrastive over MAE (points, mean ± std over seeds):", ""]
        for masking in sorted(gains[ATTRIBUTES[0]]):
            parts = [f"{a} {100 * gains[a][masking]['mean']:+.1f} ± {100 * gains[a][masking]['std']:.1f}"
                     for a in ATTRIBUTES]
            lines.append(f"- {masking}: " + ", ".join(parts))
    return "\n".join(lines)


def chance_check(records: Sequence[dict], rows: Sequence[dict]) -> str:
    """A sentence on how far the top-1 columns are from chance, in binomial standard errors of
    a chance-level accuracy on the validation set (small synthetic sets are noisy: say so)."""
    k, n = _common(records, "num_classes"), _common(records, "num_val")
    if not k or not n:
        return ""
    p = 1.0 / k
    se = math.sqrt(p * (1 - p) / n)
    means = [r[h][0] for r in rows for h in ("FT top-1", "LP top-1") if r[h] is not None]
    near = sum(abs(m - p) <= 2 * se for m in means)
    text = (f"With {n} validation videos a chance-level top-1 has a binomial standard error of "
            f"{100 * se:.1f} points; {near} of {len(means)} FT / LP means lie within two of them of chance")
    if near == len(means):
        return text + ": at this size no condition is distinguishable from chance, so the table says nothing about the maskings or objectives."
    return text + "."


def _cell(value) -> str:
    if value is None:
        return "-"
    mean, std, n = value
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def markdown_table(rows: Sequence[dict]) -> str:
    head = "| Mask | ratio | MAE | V->T | " + " | ".join(h for h, _ in COLUMNS) + " | seeds |"
    sep = "|" + "---|" * (len(COLUMNS) + 5)
    lines = [head, sep]
    for r in rows:
        mae = "✓" if "mae" in r["objective"].split("+") else ""
        vt = "✓" if "contrastive" in r["objective"] else ""
        cells = " | ".join(_cell(r[h]) for h, _ in COLUMNS)
        lines.append(f"| {r['masking']} | {r['mask_ratio']} | {mae} | {vt} | {cells} | {len(r['seeds'])} |")
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
            runs[f"{r['masking']} {r['objective']}"] = read_metrics(metrics)
    if not runs:
        return None
    return plot_curves(runs, ["loss_mse", "loss_nce"], out, title="pretraining losses (Figure 4 layout)",
                       smooth=3)


def write_report(records: Sequence[dict], out_dir: Path, title: str = "tgmae report",
                 seconds: Optional[float] = None) -> Path:
    """results.json, report.md, report.html (+ figures) in out_dir; returns report.md."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = sorted(records, key=lambda r: (r["masking"], r["objective"], r["seed"]))
    (out_dir / "results.json").write_text(json.dumps(list(records), indent=2))
    rows = aggregate(records)
    table = markdown_table(rows)
    figures: list[tuple[str, Path]] = []
    curves = loss_curves(records, out_dir / "loss_curves.png")
    if curves is not None:
        figures.append(("Pretraining losses", curves))
    for r in records:
        recon = Path(r["run_dir"]) / "pretrain" / "reconstruction.png"
        if recon.is_file() and r["seed"] == records[0]["seed"]:
            figures.append((f"Reconstruction: {r['masking']} {r['objective']}", recon))
    masks_png = out_dir / "masks.png"
    if masks_png.is_file():
        figures.insert(0, ("Masks (Figure 1 layout)", masks_png))
    took = f"\n\nWall time of this invocation: {seconds / 60:.1f} min." if seconds is not None else ""
    run_seconds = [r["total_seconds"] for r in records if r.get("total_seconds") is not None]
    if run_seconds:
        took += (f" The {len(run_seconds)} runs took {sum(run_seconds) / 60:.1f} min in all (pretrain + "
                 "probe + finetune + retrieval; shared set-up not included).")
    md = [f"# {title}", "",
          "Top-1 / recall in %, mean ± std over seeds where several ran. FT: finetune with multi-view "
          "testing; LP: linear probe on frozen features; R@k: zero-shot retrieval against class prompts "
          "through the contrastive head (only for runs that trained it)." + _chance_note(records) + took,
          "", table, ""]
    check = chance_check(records, rows)
    if check:
        md += [check, ""]
    gains = contrastive_gains(records)
    if gains:
        md += ["## Does the video-text loss help the linear probe?", "",
               "Linear-probe top-1 of MAE + contrastive minus MAE alone, same masking, paired by seed.", "",
               gains_markdown(gains), ""]
    attributes = attribute_markdown(records)
    if attributes:
        md += ["## What the features encode", "", attributes, ""]
    for caption, path in figures:
        md += [f"## {caption}", "", f"![{caption}]({_rel(path, out_dir)})", ""]
    (out_dir / "report.md").write_text("\n".join(md))
    body = [f"<h1>{html.escape(title)}</h1>", f"<p>{html.escape(md[2])}</p>", _html_table(rows)]
    for caption, path in figures:
        body.append(f"<h2>{html.escape(caption)}</h2><img src='{html.escape(_rel(path, out_dir))}' style='max-width:100%'>")
    (out_dir / "report.html").write_text(
        "<!doctype html><meta charset='utf-8'><title>" + html.escape(title) + "</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}td,th{padding:4px 10px;"
        "border-bottom:1px solid #ddd;text-align:right}</style>" + "\n".join(body))
    return out_dir / "report.md"


def _html_table(rows: Sequence[dict]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ["Mask", "ratio", "objective"] + [h for h, _ in COLUMNS])
    lines = [f"<table><tr>{head}</tr>"]
    for r in rows:
        cells = [r["masking"], str(r["mask_ratio"]), r["objective"]] + [_cell(r[h]) for h, _ in COLUMNS]
        lines.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(lines) + "</table>"


def _rel(path: Path, base: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(base.resolve()))
    except ValueError:
        return str(Path(path).resolve())


def collect_records(paths: Sequence[str | Path]) -> list[dict]:
    """study_record.json files under each path (a run directory or a whole study folder)."""
    records = []
    for p in paths:
        p = Path(p)
        files = [p / "study_record.json"] if (p / "study_record.json").is_file() else sorted(p.rglob("study_record.json"))
        if not files:
            raise FileNotFoundError(f"{p}: no study_record.json (not a finished study run)")
        records += [json.loads(f.read_text()) for f in files]
    return records


def main(argv: Sequence[str]) -> int:
    from tgmae.cli import parse_args

    parser = argparse.ArgumentParser(prog="tgmae report", description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="finished run directories or study folders")
    parser.add_argument("--out", default="report", help="folder for report.md / .html / results.json")
    args = parse_args(parser, argv)
    try:
        records = collect_records(args.runs)
    except FileNotFoundError as e:
        parser.exit(2, f"tgmae report: {e}\n")
    path = write_report(records, Path(args.out))
    print(markdown_table(aggregate(records)))
    print(f"\nreport: {path}")
    return 0
