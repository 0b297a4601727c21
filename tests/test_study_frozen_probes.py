"""The study's extra frozen probes (`study.probes`): their configs, runs and record fields, the
report's columns (only when present) and the attentive-vs-linear comparison paired by seed."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from test_evaluate_probe import ARCH, synth  # noqa: F401 (fixture)
from tgmae.config import ConfigError
from tgmae.evaluate.recipes import PROBE_RECIPE, FINETUNE_RECIPE, with_recipe
from tgmae.study.frozen_probes import asked_probes, frozen_probe_configs, missing, run_frozen_probes
from tgmae.study.report import frozen_probes_markdown, probe_gains, write_report
from tgmae.study.run import StudyConfig


def test_study_probes_are_checked():
    assert StudyConfig().probes == ["linear"]  # make demo's default: the linear probe only
    with pytest.raises(ConfigError, match=r"study.probes: unknown \['svm'\]"):
        StudyConfig(probes=["linear", "svm"])
    with pytest.raises(ConfigError, match="must include linear"):
        StudyConfig(probes=["knn"])
    with pytest.raises(ConfigError, match="study.probes: 'knn' given more than once"):
        StudyConfig(probes=["linear", "knn", "knn"])


def test_extra_probes_share_the_linear_probe_features_and_record_their_results(synth, tmp_path):  # noqa: F811
    from tgmae.models import VideoMAEArch, VideoMAEPretrainer
    from tgmae.weights.pretraining import save_pretraining_model

    torch.manual_seed(0)
    pt = save_pretraining_model(VideoMAEPretrainer(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})),
                                tmp_path / "pt.safetensors")
    run = tmp_path / "run"
    shared = ["data.format=csv", f"data.root={synth}", "data.train_annotations=train.csv",
              "data.val_annotations=val.csv", "data.num_frames=4", "data.frame_stride=2", "data.image_size=32",
              "data.num_workers=0", "model.patch_size=8", "train.batch_size=3", "train.precision=fp32",
              "log.progress=false", "log.tensorboard=false", f"model.pretrained={pt}"]
    probe = with_recipe(PROBE_RECIPE, None, shared + [f"train.output_dir={run / 'probe'}", "eval.knn_k=[1,2]",
                                                      "eval.probe_optimizer=lbfgs"])
    fine = with_recipe(FINETUNE_RECIPE, None, shared + ["data.test_temporal_views=2", "data.test_spatial_views=1"])
    configs = frozen_probe_configs(["linear", "knn", "attentive"], probe, fine, run, quick=True)
    assert set(configs) == {"knn", "attentive"}
    assert configs["knn"].eval.feature_cache == str(run / "probe" / "features")
    assert configs["attentive"].train.output_dir == str(run / "probe_attentive")
    assert (configs["attentive"].data.test_temporal_views, configs["attentive"].eval.attentive_epochs) == (2, 1)
    full = frozen_probe_configs(["linear", "attentive"], probe, fine, run, quick=False)["attentive"].eval
    assert (full.attentive_lr, full.attentive_batch_size, full.attentive_epochs, full.attentive_ensemble) == (1e-2, 128, 60, 4)
    assert configs["attentive"].eval.attentive_ensemble == 1  # --quick: one probe
    assert configs["attentive"].train.precision == "fp32" and configs["knn"].train.precision == probe.train.precision
    assert missing({}, configs) and not missing({}, {})
    fields = run_frozen_probes(configs)
    assert set(fields["probe_seconds"]) == {"knn", "attentive"}
    knn = json.loads((run / "probe_knn" / "probe_results.json").read_text())
    attentive = json.loads((run / "probe_attentive" / "probe_results.json").read_text())
    assert fields["knn_top1"] == knn["top1"] and fields["knn"] == {"1": knn["knn"]["1"]["top1"],
                                                                  "3": knn["knn"]["3"]["top1"]}  # --quick's ks
    assert fields["attentive_probe_top1"] == attentive["top1"] and attentive["views"] == 2
    assert sorted(p.name.split("-")[0] for p in (run / "probe" / "features").iterdir()) == ["train", "train", "val",
                                                                                           "val"]  # pooled + tokens
    again = run_frozen_probes(configs)  # finished probes are read, not run again
    assert again["probe_seconds"] == {} and again["attentive_probe_top1"] == fields["attentive_probe_top1"]
    assert not missing(again, configs)
    from tgmae.study.run import check_phase_settings

    for cfg in configs.values():  # a rerun of the study accepts the finished folders as its own
        check_phase_settings(cfg)
    with pytest.raises(ConfigError, match="eval.attentive_lr"):
        check_phase_settings(dataclasses.replace(configs["attentive"], eval=dataclasses.replace(
            configs["attentive"].eval, attentive_lr=0.5)))
    # a probe phase compares only the keys its kind reads (as the probe itself does): another kind's
    # knob does not make the study rerun it, its own does
    changed = lambda kind, **kw: dataclasses.replace(configs[kind], eval=dataclasses.replace(  # noqa: E731
        configs[kind].eval, **kw))
    check_phase_settings(changed("attentive", knn_temperature=0.5, knn_k=(1, 2)), probe=True)
    check_phase_settings(changed("knn", attentive_lr=0.5, attentive_queries=3, probe_l2=(0.5,)), probe=True)
    with pytest.raises(ConfigError, match="eval.knn_temperature"):
        check_phase_settings(changed("knn", knn_temperature=0.5), probe=True)
    with pytest.raises(ConfigError, match="eval.attentive_lr"):
        check_phase_settings(changed("attentive", attentive_lr=0.5), probe=True)
    with pytest.raises(ConfigError, match="eval.knn_temperature"):  # not a probe phase: every key counts
        check_phase_settings(changed("attentive", knn_temperature=0.5))


def record(masking: str, seed: int, lp: float, ap=None, knn=None) -> dict:
    r = {"masking": masking, "objective": "mae", "variant": "", "seed": seed, "mask_ratio": 0.75,
         "num_classes": 10, "finetune_top1": 0.5, "linear_probe_top1": lp, "probe": "lbfgs", "retrieval": {},
         "run_dir": "/nowhere", "total_seconds": 1.0}
    if ap is not None:
        r.update(attentive_probe_top1=ap, knn_top1=knn, probe_seconds={"attentive": 4.0, "knn": 1.0})
    return r


def test_report_shows_the_extra_probe_columns_only_when_run(tmp_path):
    plain = [record("tube", s, 0.2 + 0.01 * s) for s in range(3)]
    md = write_report(plain, tmp_path / "plain").read_text()
    assert "AP top-1" not in md and "kNN top-1" not in md and "Frozen-backbone probes" not in md
    runs = [record("tube", s, 0.2 + 0.01 * s, ap=0.3 + 0.012 * s, knn=0.15) for s in range(3)]
    runs += [record("tgm", s, 0.25, ap=0.25 + (0.01 if s else -0.01), knn=0.2) for s in range(3)]
    md = write_report(runs, tmp_path / "full").read_text()
    assert "| kNN top-1 | AP top-1 |" in md and "| 31.2 ± 1.2 |" in md
    gains = {d["cell"][0]: d for d in probe_gains(runs)}
    assert gains["tube"]["diffs"] == pytest.approx([0.1, 0.102, 0.104]) and gains["tube"]["ci"][0] > 0
    assert gains["tgm"]["wins"] == 2 and gains["tgm"]["ci"][0] < 0 < gains["tgm"]["ci"][1]
    assert "- tube mae: +10.2 points, beyond noise" in md and "- tgm mae: +0.3 points, within noise" in md
    assert "attentive 4.0 s (n = 6), knn 1.0 s (n = 6)" in md
    assert "AP top-1" in (tmp_path / "full" / "report.html").read_text()


def test_a_study_reports_only_the_probes_it_was_asked_for(tmp_path):
    """Re-trial 26B M4: a study rerun with probes=[linear] after one with [linear, knn] still showed
    the kNN column and its timing, from the cells' records of the earlier invocation. The report's
    records keep only the probes asked for; the record (on disk) keeps the others' results."""
    runs = [dict(record("tube", s, 0.2, ap=0.3, knn=0.15), knn={"1": 0.15, "3": 0.1},
                 probe_seconds={"linear": 2.0, "knn": 1.0, "attentive": 4.0}) for s in range(2)]
    linear = [asked_probes(r, ["linear"]) for r in runs]
    assert all(k not in r for r in linear for k in ("knn_top1", "knn", "attentive_probe_top1"))
    assert all(r["probe_seconds"] == {"linear": 2.0} for r in linear) and runs[0]["knn_top1"] == 0.15
    assert asked_probes(runs[0], ["linear", "knn", "attentive"]) == runs[0]
    knn = asked_probes(runs[0], ["linear", "knn"])
    assert knn["knn_top1"] == 0.15 and "attentive_probe_top1" not in knn
    assert set(knn["probe_seconds"]) == {"linear", "knn"}
    scratch = dict(record("scratch", 0, None), probe=None)  # a cell without probes keeps its fields as they are
    assert asked_probes(scratch, ["linear"]) == scratch
    md = write_report(linear, tmp_path / "rep").read_text()
    assert "kNN top-1" not in md and "AP top-1" not in md and "Frozen-backbone probes" not in md


def test_the_frozen_probe_section_says_only_what_it_shows(tmp_path):
    """Re-trial 26B M4: "Attentive minus linear probe, paired by seed:" was followed by nothing when
    no attentive probe ran, and the wall seconds were said to be of runs "in this process" when they
    came from the cells' records (an earlier invocation's, or `tgmae report`'s, which runs none)."""
    runs = [asked_probes(record("tube", s, 0.2, ap=0.3, knn=0.15), ["linear", "knn"]) for s in range(2)]
    md = frozen_probes_markdown(runs)
    assert "kNN: DINO's weighted k-NN" in md and "AP:" not in md and "Attentive minus linear" not in md
    assert "in this process" not in md and "knn 1.0 s (n = 2)" in md
    assert "Attentive minus linear probe, paired by seed:" in frozen_probes_markdown(
        [record("tube", s, 0.2, ap=0.3, knn=0.15) for s in range(2)])
