"""The study's frozen-backbone probes beyond the linear one (`study.probes`): DINO's k-NN and
V-JEPA's attentive probe of every pretrained encoder, their report columns, costs and the
attentive-vs-linear comparison.

Each extra probe runs `tgmae probe` (`tgmae.evaluate.probe.run_probe`) with the cell's linear-probe
config, `eval.probe` set, its own folder `<run>/probe_<kind>`, and the linear probe's feature cache
(`<run>/probe/features`: the k-NN reads the same pooled features, the attentive probe adds its
token grids there). The attentive probe tests the finetuning phase's views (`data.test_temporal_views`
x `data.test_spatial_views`), as finetuning does; `--quick` trains it for 1 epoch. A cell's record
gains `knn_top1` (the first k of `eval.knn_k`), `knn` ({k: top-1}), `attentive_probe_top1`, and
`probe_seconds` ({kind: wall seconds of that probe in this process}, for the probes run by it).
"""

from __future__ import annotations

import dataclasses
import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional, Sequence

PROBE_KINDS = ("linear", "knn", "attentive")
RECORD_KEYS = {"knn": "knn_top1", "attentive": "attentive_probe_top1"}
COLUMNS = [("kNN top-1", lambda r: r.get("knn_top1")), ("AP top-1", lambda r: r.get("attentive_probe_top1"))]


def frozen_probe_configs(probes: Sequence[str], probe: Any, fine: Any, run: Path, quick: bool) -> dict[str, Any]:
    """{kind: RunConfig} of a cell's extra probes (`probes` less "linear"), from its linear-probe
    config `probe` and finetuning config `fine` (module doc)."""
    out = {}
    for kind in probes:
        if kind == "linear":
            continue
        ev = dataclasses.replace(probe.eval, probe=kind, feature_cache=probe.eval.feature_cache
                                 or str(run / "probe" / "features"), **({"attentive_epochs": 1} if quick else {}))
        cfg = dataclasses.replace(probe, eval=ev, train=dataclasses.replace(probe.train,
                                                                             output_dir=str(run / f"probe_{kind}")))
        if kind == "attentive":
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(
                cfg.data, test_temporal_views=fine.data.test_temporal_views,
                test_spatial_views=fine.data.test_spatial_views))
        out[kind] = cfg
    return out


def missing(record: dict, configs: dict[str, Any]) -> bool:
    """Whether `record` lacks the result of one of `configs`' probes."""
    return any(record.get(RECORD_KEYS[kind]) is None for kind in configs)


def run_frozen_probes(configs: dict[str, Any]) -> dict[str, Any]:
    """Run each probe of `configs` whose probe_results.json is missing (timed), read every one's
    results -> the record fields of the module doc."""
    from tgmae.evaluate.probe import run_probe

    fields: dict[str, Any] = {"probe_seconds": {}}
    for kind, cfg in configs.items():
        results = Path(cfg.train.output_dir) / "probe_results.json"
        if not results.is_file():
            t0 = time.perf_counter()
            run_probe(cfg)
            fields["probe_seconds"][kind] = time.perf_counter() - t0
        saved = json.loads(results.read_text())
        fields[RECORD_KEYS[kind]] = saved["top1"]
        if kind == "knn":
            fields["knn"] = {k: v["top1"] for k, v in saved["knn"].items()}
    return fields


def probe_gains(records: Sequence[dict]) -> list[dict]:
    """Per cell (masking, objective, variant): attentive-probe minus linear-probe top-1, paired by
    seed, as `tgmae.study.report.paired_difference`'s rows (+ "cell"); cells without both skipped."""
    from tgmae.study.report import _std, cell_key, t_interval

    cells: dict[tuple, list[tuple[int, float]]] = {}
    for r in records:
        ap, lp = r.get("attentive_probe_top1"), r.get("linear_probe_top1")
        if ap is not None and lp is not None:
            cells.setdefault(cell_key(r), []).append((r["seed"], ap - lp))
    rows = []
    for key, pairs in sorted(cells.items()):
        diffs = [d for _, d in sorted(pairs)]
        rows.append({"cell": key, "seeds": sorted(s for s, _ in pairs), "diffs": diffs, "n": len(diffs),
                     "mean": statistics.fmean(diffs), "std": _std(diffs), "ci": t_interval(diffs),
                     "wins": sum(d > 0 for d in diffs)})
    return rows


def frozen_probes_markdown(records: Sequence[dict]) -> str:
    """The report's section on the extra probes: attentive vs linear per cell (beyond noise?) and
    each probe's mean wall seconds per run; "" when no record has an extra probe."""
    from tgmae.study.report import _name, verdict

    if not any(r.get(key) is not None for r in records for key in RECORD_KEYS.values()):
        return ""
    lines = ["## Frozen-backbone probes", "",
             "kNN: DINO's weighted k-NN on the linear probe's features (top-1 of the first k in eval.knn_k); "
             "AP: V-JEPA's attentive probe (one cross-attention block with a learnable query, then linear) on "
             "the frozen token grids, tested on the finetuning's views. Attentive minus linear probe, paired "
             "by seed:", ""]
    lines += [f"- {_name(d['cell'])}: {verdict(d)}." for d in probe_gains(records)]
    costs = {}
    for r in records:
        for kind, s in (r.get("probe_seconds") or {}).items():
            costs.setdefault(kind, []).append(s)
    if costs:
        lines += ["", "Wall seconds per run (mean over the runs that ran it in this process): "
                  + ", ".join(f"{k} {statistics.fmean(v):.1f} s (n = {len(v)})" for k, v in sorted(costs.items()))
                  + "."]
    return "\n".join(lines)


def check_probes(probes: Sequence[str]) -> Optional[str]:
    """The error message for a bad `study.probes`, None when it is fine."""
    bad = [p for p in probes if p not in PROBE_KINDS]
    if bad:
        return f"study.probes: unknown {bad}; known: {list(PROBE_KINDS)}"
    if "linear" not in probes:
        return f"study.probes={list(probes)}: must include linear (the table's LP column and its comparisons)"
    return None


__all__ = ["PROBE_KINDS", "COLUMNS", "frozen_probe_configs", "run_frozen_probes", "missing", "probe_gains",
           "frozen_probes_markdown", "check_probes"]
