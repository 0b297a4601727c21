"""The study's frozen-backbone probes beyond the linear one (`study.probes`): DINO's k-NN and
V-JEPA's attentive probe of every pretrained encoder (their report columns, costs and the
attentive-vs-linear comparison: `tgmae.study.report`).

Each extra probe runs `tgmae probe` (`tgmae.evaluate.probe.run_probe`) with the cell's linear-probe
config, `eval.probe` set, its own folder `<run>/probe_<kind>`, and the linear probe's feature cache
(`<run>/probe/features`: the k-NN reads the same pooled features, the attentive probe adds its
token grids there). The attentive probe trains with `ATTENTIVE_RECIPE` (below: why) and tests the
finetuning phase's views (`data.test_temporal_views` x `data.test_spatial_views`), as finetuning
does; `--quick` trains it for 1 epoch. A cell's record
gains `knn_top1` (the first k of `eval.knn_k`), `knn` ({k: top-1}), `attentive_probe_top1`, and
`probe_seconds` ({kind: wall seconds of that probe in this process}, for the probes run by it).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

from tgmae.config import PROBE_KINDS, ConfigError, check_known

# each extra probe's fields in a cell's record (its top-1 first) and its `probe_seconds` key
RECORD_FIELDS = {"knn": ("knn_top1", "knn"), "attentive": ("attentive_probe_top1",)}
RECORD_KEYS = {kind: fields[0] for kind, fields in RECORD_FIELDS.items()}
# The study's attentive probe: V-JEPA's recipe (lr 1e-3, 20 epochs) is ~19k steps on K400; on the study's
# 1,152 training videos at batch 32 it is 720 steps and leaves the probe near chance (tube MAE seed 0:
# 12.4%, loss 2.25 of ln 10 = 2.30). 10x the lr at batch 128 for 60 epochs (540 steps) trains it: 29.4%
# (lr 3e-2: 31.7%, 150 epochs: 31.3%; chosen on that one cell, docs/study.md). One probe's figure depends on its
# init (that encoder: 18.7 / 32.2 / 41.2% for probe seeds 0 / 1 / 2), more than the cells differ: an ensemble of 4
# (33.6%) measures the encoder instead. --quick: 1 epoch, train.batch_size, one probe.
ATTENTIVE_RECIPE = {"attentive_lr": 1e-2, "attentive_batch_size": 128, "attentive_epochs": 60, "attentive_ensemble": 4}
ATTENTIVE_QUICK = {"attentive_batch_size": None, "attentive_epochs": 1}
KNN_QUICK = {"knn_k": (1, 3)}  # --quick's few training videos: DINO's k up to 200 would exceed them


def frozen_probe_configs(probes: Sequence[str], probe: Any, fine: Any, run: Path, quick: bool) -> dict[str, Any]:
    """{kind: RunConfig} of a cell's extra probes (`probes` less "linear"), from its linear-probe
    config `probe` and finetuning config `fine` (module doc)."""
    out = {}
    for kind in probes:
        if kind == "linear":
            continue
        recipe = (ATTENTIVE_QUICK if quick else ATTENTIVE_RECIPE) if kind == "attentive" else (
            KNN_QUICK if quick else {})
        ev = dataclasses.replace(probe.eval, probe=kind, feature_cache=probe.eval.feature_cache
                                 or str(run / "probe" / "features"), **recipe)
        cfg = dataclasses.replace(probe, eval=ev, train=dataclasses.replace(probe.train,
                                                                             output_dir=str(run / f"probe_{kind}")))
        if kind == "attentive":  # fp32: bf16 autocast cost this 64-wide probe 7 points (tube MAE: 22.1% vs 29.4%)
            cfg = dataclasses.replace(cfg, data=dataclasses.replace(
                cfg.data, test_temporal_views=fine.data.test_temporal_views,
                test_spatial_views=fine.data.test_spatial_views),
                train=dataclasses.replace(cfg.train, precision="fp32"))
        out[kind] = cfg
    return out


def missing(record: dict, configs: dict[str, Any]) -> bool:
    """Whether `record` lacks the result of one of `configs`' probes."""
    return any(record.get(RECORD_KEYS[kind]) is None for kind in configs)


def asked_probes(record: dict, probes: Sequence[str]) -> dict:
    """`record` less the fields and `probe_seconds` of the extra probes `probes` (`study.probes`) does
    not name: a cell's record keeps those an earlier invocation with other probes ran (a later one
    asking again reuses them), the study's report shows the probes it was asked for."""
    drop = {key for kind, keys in RECORD_FIELDS.items() if kind not in probes for key in keys}
    out = {k: v for k, v in record.items() if k not in drop}
    if out.get("probe_seconds"):
        out["probe_seconds"] = {k: v for k, v in out["probe_seconds"].items() if k not in RECORD_FIELDS or k in probes}
    return out


def run_frozen_probes(configs: dict[str, Any]) -> dict[str, Any]:
    """Run each probe of `configs` whose probe_results.json is missing (timed), read every one's
    results -> the record fields of the module doc."""
    from tgmae.evaluate.probes import run_probe
    from tgmae.study.report import phase_done

    fields: dict[str, Any] = {"probe_seconds": {}}
    for kind, cfg in configs.items():
        results = Path(cfg.train.output_dir) / "probe_results.json"
        if not phase_done(results):  # gone or damaged: rerun (the study's test of a done phase)
            t0 = time.perf_counter()
            run_probe(cfg)
            fields["probe_seconds"][kind] = time.perf_counter() - t0
        saved = json.loads(results.read_text())
        fields[RECORD_KEYS[kind]] = saved["top1"]
        if kind == "knn":
            fields["knn"] = {k: v["top1"] for k, v in saved["knn"].items()}
    return fields


def check_probes(probes: Sequence[str]) -> None:
    """ConfigError for a bad `study.probes`: an unknown kind, or no linear probe."""
    check_known("study.probes", probes, PROBE_KINDS)
    if "linear" not in probes:
        raise ConfigError(f"study.probes={list(probes)}: must include linear (the table's LP column and its "
                          "comparisons)")
