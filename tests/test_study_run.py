"""The study command end to end at CI size, and the report's aggregation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from tgmae.config import ConfigError, from_dict
from tgmae.study.paired import contrastive_gains, seeds_to_resolve
from tgmae.study.report import aggregate, collect_records, markdown_table, report_runs, write_report
from tgmae.study.run import QUICK_RECON_STEPS, StudyConfig, run_study


def test_study_config_validation():
    with pytest.raises(ConfigError, match="study.maskings: unknown"):
        StudyConfig(maskings=["tube", "magic"])
    with pytest.raises(ConfigError, match="unknown config key study.epochs"):
        from_dict(StudyConfig, {"epochs": 3}, prefix="study")
    with pytest.raises(ConfigError, match=r"study.recon_check_steps=-1: must be >= 0 \(0 = off\)"):
        StudyConfig(recon_check_steps=-1)
    assert StudyConfig().recon_check_steps == 3200 and StudyConfig(recon_check_steps=0).recon_check_steps == 0


def test_aggregate_mean_std_over_seeds(tmp_path):
    records = [
        {"masking": "tgm", "objective": "mae", "seed": s, "mask_ratio": 0.6, "finetune_top1": ft,
         "linear_probe_top1": lp, "retrieval": {}, "run_dir": str(tmp_path)}
        for s, ft, lp in ((0, 0.5, 0.2), (1, 0.7, 0.4))
    ]
    row = aggregate(records)[0]
    # sample standard deviation over seeds: sqrt(0.02 / 1) = 0.1414
    assert row["FT top-1"][0] == pytest.approx(0.6) and row["FT top-1"][1] == pytest.approx(0.02 ** 0.5)
    assert row["V->T R@1"] is None
    table = markdown_table([row])
    assert "| tgm | 0.6 | ✓ |  | 60.0 ± 14.1 | 30.0 ± 14.1 | - |" in table
    write_report(records, tmp_path / "rep")
    assert json.loads((tmp_path / "rep" / "results.json").read_text())[1]["seed"] == 1
    assert "60.0 ± 14.1" in (tmp_path / "rep" / "report.html").read_text()


def test_contrastive_gain_is_paired_by_seed(tmp_path):
    lp = {("tube", "mae"): (0.20, 0.40, 0.30), ("tube", "mae+contrastive"): (0.25, 0.42, 0.29),
          ("tgm", "mae"): (0.10, 0.10, 0.10)}  # tgm has no contrastive runs: no row
    records = [{"masking": m, "objective": o, "seed": s, "mask_ratio": 0.75, "finetune_top1": 0.5,
                "linear_probe_top1": v, "retrieval": {}, "run_dir": str(tmp_path), "num_classes": 10}
               for (m, o), values in lp.items() for s, v in enumerate(values)]
    (row,) = contrastive_gains(records)
    assert row["masking"] == "tube" and row["wins"] == 2
    assert row["diffs"] == pytest.approx([0.05, 0.02, -0.01])
    assert row["mean"] == pytest.approx(0.02)
    report = write_report(records, tmp_path / "rep").read_text()
    assert "Chance level: 1/10 = 10.0% top-1." in report
    assert "standard error" not in report  # num_val unknown: no claim about noise
    # diffs 5, 2, -1 points: sd 3.0, t(0.975, 2 dof) = 4.3027, half width 4.302653 * 3 / sqrt(3) = 7.45
    assert row["std"] == pytest.approx(0.03) and row["n"] == 3
    assert row["ci"] == pytest.approx((0.02 - 0.0745241, 0.02 + 0.0745241), abs=1e-6)
    assert "| tube | +2.0 ± 3.0 | [-5.5, +9.5] | 3 | +5.0, +2.0, -1.0 | 2/3 |" in report
    # mean 2, sd 3 points: t(n-1) * 3 / sqrt(n) < 2 first at n = 12 (t(0.975, 11) = 2.201: 1.906)
    assert seeds_to_resolve(0.02, 0.03) == 12
    assert ("- Video-text loss, tube, LP top-1: +2.0 points, within noise: the 95% interval over n = 3 seeds, "
            "[-5.5, +9.5], includes zero; at this seed-to-seed s.d. (3.0 points) a difference this size needs ~12 seeds "
            "for its interval to exclude zero.") in report
    assert seeds_to_resolve(0.0, 0.03) is None and seeds_to_resolve(0.001, 0.05) is None  # > MAX_SEEDS
    from tgmae.study.paired import verdict

    zero = {"n": 3, "mean": -1e-9, "std": 0.02, "ci": (-0.05, 0.05)}
    assert verdict(zero) == ("+0.0 points, within noise: the 95% interval over n = 3 seeds, [-5.0, +5.0], includes "
                             "zero: no number of seeds tells a zero difference from zero")
    same = {"n": 2, "mean": -0.05, "std": 3e-9, "ci": (-0.05, -0.05)}  # both seeds -5 points, up to float32
    assert verdict(same) == ("-5.0 points in each of the 2 seeds: no spread between seeds to judge noise by, so it "
                             "cannot be told from noise")


@pytest.mark.slow
def test_quick_study_runs_every_phase_and_resumes(tmp_path):
    study = StudyConfig(out_dir=str(tmp_path / "study"), num_videos=24, video_frames=24, clip_steps=8, jobs=1,
                        recon_check_steps=QUICK_RECON_STEPS, maskings=["tube", "tgm"], objectives=["mae+contrastive"], text_model="", clip_motion_weight=1.0)
    root = run_study(study, quick=True)
    all_records = json.loads((root / "results.json").read_text())
    assert [(r["masking"], r["objective"]) for r in all_records] == [
        ("none", "none"), ("scratch", "supervised"), ("tgm", "mae+contrastive"), ("tube", "mae+contrastive")]
    none, scratch, *records = all_records
    assert 0.0 <= none["linear_probe_top1"] <= 1.0 and none["mask_ratio"] is None and not none["retrieval"]
    assert scratch["linear_probe_top1"] is None and 0.0 <= scratch["finetune_top1"] <= 1.0
    assert not (root / "runs" / "scratch__supervised__s0" / "pretrain").exists()
    for r in records:
        assert 0.0 <= r["finetune_top1"] <= 1.0 and 0.0 <= r["linear_probe_top1"] <= 1.0
        assert set(r["retrieval"]["video_to_text"]) == {"R@1", "R@5", "R@10"}
    report = (root / "report.md").read_text()
    assert all(r["num_classes"] == 10 and r["num_val"] > 0 for r in records) and "Chance level: 1/10" in report
    assert "| no pretraining (random encoder) | - |" in report and "| supervised from scratch | - |" in report
    probe = json.loads((root / "text_probe.json").read_text())  # the targets' text space, measured once
    assert probe["model"] == str(root / "clip") and 0.0 <= probe["text_model"]["action"] <= 1.0
    assert "Text probe: a linear probe recovers the action" in report
    assert (root / "clip" / "motion" / "config.json").is_file()  # the study's CLIP saw clips
    # one decoded-clip cache per split, built once and read by every phase of every run
    cached = sorted((root / "clip_cache").glob("*.u8"))
    assert len(cached) == 2
    stamps = [f.stat().st_mtime_ns for f in cached]
    for r in records:  # attributes of the synthetic set, probed from the cached features
        probe = r["attribute_probe"]
        assert set(probe) == {"action", "colour", "shape", "action_classes", "colour_classes", "shape_classes"}
        assert all(0.0 <= probe[a] <= 1.0 for a in ("action", "colour", "shape"))
    assert "## What the features encode" in report
    assert "| tgm | 0.6 | ✓ | ✓ |" in report and "loss_curves.png" in report
    # the reconstruction check: once per study folder, --quick's few steps, in the report with its figure
    check = json.loads((root / "reconstruction_check" / "reconstruction_check.json").read_text())
    assert check["steps"] == QUICK_RECON_STEPS and "masking.name=random" in check["settings"]["run"]
    assert "## Reconstruction check: MAE on static-camera clips" in report
    assert (f"| {check['mse']:.4f} | {check['patch_mean_mse']:.4f} | {check['visible_mean_mse']:.4f} | "
            f"{check['copy_mse']:.4f} | {check['ratio']:.2f} | {QUICK_RECON_STEPS} |") in report
    assert "](reconstruction_check/reconstruction_check.png)" in report and "Reconstruction check" in (
        root / "report.html").read_text()
    assert (root / "loss_curves.png").stat().st_size > 5000
    # A second call finds every phase done and only rewrites the report.
    before = (root / "runs" / "tube__mae_contrastive__s0" / "study_record.json").stat().st_mtime
    run_study(study, quick=True)
    assert (root / "runs" / "tube__mae_contrastive__s0" / "study_record.json").stat().st_mtime == before
    assert len(collect_records([root])) == 4
    assert [f.stat().st_mtime_ns for f in cached] == stamps
    # probes added later (study.probes): finished cells gain the k-NN and attentive probes, nothing else reruns
    run_study(dataclasses.replace(study, probes=["linear", "knn", "attentive"]), quick=True)
    rec = json.loads((root / "runs" / "tube__mae_contrastive__s0" / "study_record.json").read_text())
    assert 0.0 <= rec["knn_top1"] <= 1.0 and 0.0 <= rec["attentive_probe_top1"] <= 1.0
    assert set(rec["probe_seconds"]) == {"linear", "knn", "attentive"} and set(rec["knn"]) == {"1", "3"}
    assert (root / "runs" / "tube__mae_contrastive__s0" / "probe_attentive" / "test_predictions.csv").is_file()
    assert "| kNN top-1 | AP top-1 |" in (root / "report.md").read_text()
    # re-trial 26B M4: back to probes=[linear], the report showed the kNN column and its seconds of the
    # invocation before; it shows the probes asked for now, the records keep the others' results
    run_study(study, quick=True)
    report = (root / "report.md").read_text()
    assert "kNN top-1" not in report and "AP top-1" not in report and "Frozen-backbone probes" not in report
    assert "knn_top1" in json.loads((root / "runs" / "tube__mae_contrastive__s0" / "study_record.json").read_text())
    # an ablation in the same folder: its own runs and rows, the shared set-up reused
    ablation = dataclasses.replace(study, maskings=["tgm"], references=[], variant="ratio 0.9",
                                   pretrain=["masking.ratio=0.9"], text_model="words")
    assert run_study(ablation, quick=True) == root / "variants" / "ratio_0.9"
    assert (root / "variants" / "ratio_0.9" / "report.md").is_file() and "Text probe" in (root / "report.md").read_text()
    rec = json.loads((root / "runs" / "tgm__mae_contrastive__s0__ratio_0.9" / "study_record.json").read_text())
    assert rec["variant"] == "ratio 0.9" and rec["mask_ratio"] == 0.9
    import yaml

    ran = yaml.safe_load((root / "runs" / "tgm__mae_contrastive__s0__ratio_0.9" / "pretrain" / "config.yaml").read_text())
    assert ran["captions"]["text_model"] == str(root / "word_encoder")  # text_model=words: built once, used
    assert json.loads((root / "text_probe.json").read_text())["model"] == str(root / "word_encoder")
    # `tgmae report` of the folder: its cells' real configs differ only in what makes them cells (and the
    # variant's in its own settings), so nothing is refused as another recipe (`refuse_mixed_settings`)
    assert "| tgm [ratio 0.9] | 0.9 | ✓ | ✓ |" in report_runs([root], tmp_path / "all").read_text()
    # links relative to the report (the study folder can move): the variant's report is two levels down
    assert "](../../reconstruction_check/reconstruction_check.png)" in (root / "variants" / "ratio_0.9" / "report.md").read_text()
    # a full run's settings in the same folder: refused before anything runs, naming the key
    with pytest.raises(ConfigError, match=r"study.recon_check_steps=3200: .*other settings \(steps: 8 -> 3200\)"):
        run_study(dataclasses.replace(study, variant="full", recon_check_steps=3200), quick=False)
    assert not (root / "runs" / "tgm__mae_contrastive__s0__full").exists()


def test_a_phase_made_with_other_settings_is_not_reused(tmp_path):
    """The study skips phases whose results exist; a changed setting must not pick up those results."""
    from tgmae.config import ConfigError, load_config, save_config
    from tgmae.study.run import check_phase_settings

    ran = load_config(None, [f"train.output_dir={tmp_path / 'pretrain'}", "optim.lr=1e-3"])
    (tmp_path / "pretrain").mkdir()
    save_config(ran, tmp_path / "pretrain" / "config.yaml")
    check_phase_settings(ran)
    check_phase_settings(load_config(None, [f"train.output_dir={tmp_path / 'pretrain'}", "optim.lr=1e-3",
                                            "data.num_workers=0", "log.progress=false"]))
    with pytest.raises(ConfigError, match=r"(?s)other settings.*optim\.lr: 0\.001 -> 0\.002.*another study out_dir"):
        check_phase_settings(load_config(None, [f"train.output_dir={tmp_path / 'pretrain'}", "optim.lr=2e-3"]))


def test_t_interval_matches_the_t_table():
    from tgmae.study.paired import t_interval

    assert t_interval([0.5]) is None
    lo, hi = t_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(0.975, 2 dof) = 4.302653
    assert (lo, hi) == pytest.approx((2 - 4.302653 / 3 ** 0.5, 2 + 4.302653 / 3 ** 0.5), abs=1e-5)
    lo, hi = t_interval([0.0, 1.0], level=0.9)  # t(0.95, 1 dof) = 6.313752, sd 0.7071
    assert hi - 0.5 == pytest.approx(6.313752 * 0.5, abs=1e-5)


def _records(tmp_path, table):
    """Study records from {(masking, objective, variant): [LP per seed]} (FT = LP + 0.1)."""
    return [{"masking": m, "objective": o, "variant": v, "seed": s, "mask_ratio": None if m == "none" else 0.75,
             "finetune_top1": lp + 0.1, "linear_probe_top1": lp, "retrieval": {}, "run_dir": str(tmp_path),
             "num_classes": 10}
            for (m, o, v), values in table.items() for s, lp in enumerate(values)]


def test_findings_say_whether_each_effect_is_beyond_noise(tmp_path):
    from tgmae.study.paired import verdict
    from tgmae.study.report import findings

    records = _records(tmp_path, {
        ("tube", "mae", ""): [0.30, 0.32, 0.31], ("tube", "mae+contrastive", ""): [0.40, 0.41, 0.42],
        ("tgm", "mae", ""): [0.30, 0.35, 0.28], ("tgm", "mae+contrastive", ""): [0.31, 0.33, 0.30],
        ("tgm", "mae+contrastive", "ratio 0.9"): [0.20, 0.22, 0.21],
        ("none", "none", ""): [0.10, 0.12, 0.11]})
    found = dict(findings(records))
    gain = found["Video-text loss, tube, LP top-1"]
    assert gain["diffs"] == pytest.approx([0.10, 0.09, 0.11]) and gain["ci"][0] > 0
    assert verdict(gain).startswith("+10.0 points, beyond noise: the 95% interval over n = 3 seeds, [+7.5, +12.5]")
    assert "within noise" in verdict(found["Video-text loss, tgm, LP top-1"])
    assert found["Video-text loss, tube, FT top-1"]["mean"] == pytest.approx(0.10)
    below = verdict(found["tgm mae+contrastive: [ratio 0.9] vs the base run, LP top-1"])
    assert "beyond noise in the other direction" in below and "below zero" in below
    assert "tgm vs tube, mae+contrastive, LP top-1" in found and "tgm vs tube, mae, LP top-1" in found
    assert found["tube mae vs no pretraining, LP top-1"]["mean"] == pytest.approx(0.20)
    assert not any("[ratio 0.9] vs tube" in t for t in found)  # no tube run of that variant
    one_seed = [r for r in records if r["seed"] == 0]
    assert "from 1 seed: no interval" in verdict(dict(findings(one_seed))["Video-text loss, tube, LP top-1"])
    report = write_report(records, tmp_path / "rep").read_text()
    assert "| no pretraining (random encoder) | - |  |  | 21.0 ± 1.0 | 11.0 ± 1.0 |" in report
    assert "| tgm [ratio 0.9] | 0.75 | ✓ | ✓ | 31.0 ± 1.0 | 21.0 ± 1.0 |" in report
    assert "## Findings: beyond noise?" in report and "- Video-text loss, tube, LP top-1: +10.0 points" in report


def test_a_study_clip_of_other_settings_is_refused(tmp_path):
    from tgmae.study.run import StudyPaths, check_clip_settings
    from tgmae.study.clip.train import ClipTrainConfig

    paths = StudyPaths(tmp_path)
    paths.clip.mkdir()
    (paths.clip / "train_clip.json").write_text(json.dumps({"config": {"steps": 400}}))  # before the motion tower
    check_clip_settings(ClipTrainConfig(steps=400), paths)
    with pytest.raises(ConfigError, match=r"study.clip_motion_weight=1.0 but .*clip holds a CLIP trained with 0.0"):
        check_clip_settings(ClipTrainConfig(steps=400, motion_weight=1.0), paths)
    with pytest.raises(ConfigError, match="study.clip_steps=600"):
        check_clip_settings(ClipTrainConfig(steps=600), paths)
    with pytest.raises(ConfigError, match="study.references: unknown"):
        StudyConfig(references=["oracle"])


def test_study_refuses_a_synthetic_set_of_other_settings(tmp_path):
    from tgmae.config import ConfigError
    from tgmae.study.run import StudyPaths, check_data_settings

    paths = StudyPaths(tmp_path)
    paths.data.mkdir()
    # the 360-video study of before issue 15, written before the difficulty knobs and val_fraction
    meta = {"num_videos": 360, "frames": 48, "height": 128}
    old = dict(num_videos=360, video_frames=48, video_size=128, val_fraction=0.2)
    (paths.data / "meta.json").write_text(json.dumps(meta))
    check_data_settings(StudyConfig(**old, distractors=2), paths)  # the original set: accepted
    with pytest.raises(ConfigError, match="study.distractors=0"):
        check_data_settings(StudyConfig(**old), paths)
    with pytest.raises(ConfigError, match="study.num_videos=2304 but .* holds a set with 360"):
        check_data_settings(StudyConfig(), paths)  # today's defaults never read that old set
    (paths.data / "meta.json").write_text(json.dumps(meta | {"distractors": 0, "distractor_speed": 1.0}))
    check_data_settings(StudyConfig(**old), paths)
    with pytest.raises(ConfigError, match="study.num_videos=40"):
        check_data_settings(StudyConfig(**old | {"num_videos": 40}), paths)
    # a set with another validation split: its validation videos are other videos
    with pytest.raises(ConfigError, match="study.val_fraction=0.5 but .* holds a set with 0.2"):
        check_data_settings(StudyConfig(**old | {"val_fraction": 0.5}), paths)
    (paths.data / "meta.json").write_text(json.dumps(meta | {"distractors": 0, "val_fraction": 0.5}))
    check_data_settings(StudyConfig(**old | {"val_fraction": 0.5}), paths)
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(ConfigError, match="study.val_fraction"):
            StudyConfig(val_fraction=bad)


def test_report_names_the_linear_probe(tmp_path):
    def rec(seed, probe):
        return {"masking": "tube", "objective": "mae", "seed": seed, "mask_ratio": 0.75, "finetune_top1": 0.5,
                "linear_probe_top1": 0.2, "retrieval": {}, "run_dir": str(tmp_path), "probe": probe}
    one = write_report([rec(0, "lbfgs"), rec(1, "lbfgs")], tmp_path / "a").read_text()
    assert "LP: linear probe on frozen features (L-BFGS logistic regression, L2 chosen by k-fold" in one
    assert "eval.probe_optimizer=lbfgs)" in one
    mixed = write_report([rec(0, "lbfgs"), rec(1, "lars")], tmp_path / "b").read_text()
    assert "probes differ between runs: ['lars', 'lbfgs']" in mixed
    old = write_report([rec(0, None)], tmp_path / "c").read_text()  # records from before the field
    assert "LP: linear probe on frozen features;" in old


@pytest.mark.slow
def test_parallel_study_trains_the_clip_alongside_and_keeps_the_cell_order(tmp_path):
    """jobs=2: cells run in two processes; with a text_model the CLIP and similarity maps are made
    in the pool while the cells that do not need them run, and TGM's cells start after."""
    study = StudyConfig(out_dir=str(tmp_path / "study"), num_videos=24, video_frames=16, clip_steps=8,
                        recon_check_steps=QUICK_RECON_STEPS, maskings=["tgm", "tube"], objectives=["mae"], references=["none"], jobs=2,
                        pretrain=["data.num_workers=0"], probe=["data.num_workers=0"], finetune=["data.num_workers=0"])
    root = run_study(study, quick=True)
    records = json.loads((root / "results.json").read_text())
    assert sorted((r["masking"], r["objective"]) for r in records) == [
        ("none", "none"), ("tgm", "mae"), ("tube", "mae")]
    assert all(0.0 <= r["finetune_top1"] <= 1.0 and 0.0 <= r["linear_probe_top1"] <= 1.0 for r in records)
    assert (root / "clip" / "config.json").is_file() and (root / "similarity_cache" / "manifest.json").is_file()
    check = json.loads((root / "reconstruction_check" / "reconstruction_check.json").read_text())  # one more job
    assert check["steps"] == QUICK_RECON_STEPS and "## Reconstruction check" in (root / "report.md").read_text()
    import yaml

    ran = yaml.safe_load((root / "runs" / "tgm__mae__s0" / "pretrain" / "config.yaml").read_text())
    assert ran["masking"]["name"] == "tgm" and ran["masking"]["cache_dir"] == str(root / "similarity_cache")
    with pytest.raises(ConfigError, match="study.jobs=0"):
        StudyConfig(jobs=0)


def test_tgm_seeds_config_is_the_demo_for_tgm_with_ten_seeds():
    """configs/study_tgm_seeds.yaml: the defaults (make demo's settings and folder, so its TGM runs
    are reused) for the TGM cells only, seeds 0-9, no reference rows."""
    from pathlib import Path

    from tgmae.study.run import load_study

    configs = Path(__file__).resolve().parents[1] / "configs"
    study = load_study(str(configs / "study_tgm_seeds.yaml"))
    assert study == dataclasses.replace(StudyConfig(), maskings=["tgm"], seeds=list(range(10)), references=[])


def test_fidelity_config_is_the_demo_with_three_seeds():
    """configs/study_fidelity.yaml reuses make demo's seed-0 runs: same settings and folder."""
    from pathlib import Path

    import yaml

    configs = Path(__file__).resolve().parents[1] / "configs"
    demo = yaml.safe_load((configs / "study_synthetic.yaml").read_text())
    fidelity = yaml.safe_load((configs / "study_fidelity.yaml").read_text())
    assert from_dict(StudyConfig, fidelity, prefix="study").seeds == [0, 1, 2]
    assert {**fidelity, "seeds": demo["seeds"]} == demo


def test_bare_study_is_the_demo_yaml():
    """`tgmae study` (no -c) runs configs/study_synthetic.yaml's study: the YAML pins every value it
    sets to the dataclass default (the fidelity YAML = this one with 3 seeds: the test below)."""
    from pathlib import Path

    import yaml

    from tgmae.study.run import load_study

    configs = Path(__file__).resolve().parents[1] / "configs"
    demo = yaml.safe_load((configs / "study_synthetic.yaml").read_text())
    defaults = dataclasses.asdict(StudyConfig())
    assert {k: defaults[k] for k in demo} == demo  # e.g. num_videos 2304, jobs 2, the phase lists
    assert load_study() == load_study(str(configs / "study_synthetic.yaml")) == StudyConfig()


def test_quick_is_ci_sized_whatever_the_yaml_and_overrides_win(tmp_path):
    from pathlib import Path

    from tgmae.study.run import QUICK, load_study

    configs = Path(__file__).resolve().parents[1] / "configs"
    bare, demo = load_study(quick=True), load_study(str(configs / "study_synthetic.yaml"), quick=True)
    fidelity = load_study(str(configs / "study_fidelity.yaml"), quick=True)
    assert bare == demo == fidelity  # the YAMLs' 2,304 videos, 400 CLIP steps and 3 seeds do not survive
    assert (bare.num_videos, bare.clip_steps, bare.seeds) == (QUICK["num_videos"], QUICK["clip_steps"], [0])
    assert bare.out_dir == "runs/study_quick"  # never the full study's folder
    assert bare.recon_check_steps == QUICK_RECON_STEPS
    assert dataclasses.replace(bare, num_videos=2304, clip_steps=400, out_dir="runs/study",
                               recon_check_steps=3200) == StudyConfig()
    assert load_study(None, ["recon_check_steps=100"], quick=True).recon_check_steps == 100  # key=value wins
    given = load_study(str(configs / "study_fidelity.yaml"), ["num_videos=60", f"out_dir={tmp_path}",
                                                              "seeds=[1, 2]"], quick=True)
    assert (given.num_videos, given.out_dir, given.seeds, given.clip_steps) == (60, str(tmp_path), [1, 2], 60)
    own = tmp_path / "mine.yaml"
    own.write_text("out_dir: elsewhere/s\nseeds: [3, 4]\nnum_videos: 100\n")
    assert (load_study(str(own), quick=True).out_dir, load_study(str(own), quick=True).seeds) == (
        "elsewhere/s_quick", [3])
    with pytest.raises(ConfigError, match="override 'num_videos'"):
        load_study(None, ["num_videos"])
    own.write_text("- a\n")
    with pytest.raises(ConfigError, match="mine.yaml: top level must be a mapping"):
        load_study(str(own))


def test_list_overrides_extend_with_plus_equals_and_replace_with_a_warning(caplog):
    """An ablation's `pretrain+=[...]` keeps the study's recipe (model.preset=micro, view_ratio=0, ...)
    and adds to it; `pretrain=[...]` replaces it, with a warning naming `+=`."""
    from tgmae.study.run import load_study

    default = StudyConfig().pretrain
    assert "model.preset=micro" in default
    added = load_study(None, ["pretrain+=[masking.ratio=0.75]", "pretrain+=captions.draw=first", "seeds+=[1]"])
    assert added.pretrain == default + ["masking.ratio=0.75", "captions.draw=first"] and added.seeds == [0, 1]
    with caplog.at_level("WARNING", logger="tgmae"):
        replaced = load_study(None, ["pretrain=[masking.ratio=0.75]"])
    assert replaced.pretrain == ["masking.ratio=0.75"] and "pretrain+=[...] adds to them" in caplog.text
    with pytest.raises(ConfigError, match="study.num_videos is not a list"):
        load_study(None, ["num_videos+=[3]"])
    with pytest.raises(ConfigError, match="unknown config key study.nope"):
        load_study(None, ["nope+=[3]"])


def test_phase_override_mistakes_and_repeats_are_refused_before_any_set_up(tmp_path):
    """A typo in a phase's overrides is refused naming study.<phase> before the data, CLIP or
    similarity maps are made (--quick's 1-epoch overrides do not hide a bad value), and a repeated
    seed / masking is refused (it would count as two seeds in the table)."""
    from tgmae.study.run import load_study

    out = tmp_path / "s"
    for override, match in ((["pretrain+=[masking.ratoi=0.75]"], r"^study.pretrain: unknown config key masking.ratoi"),
                            (["finetune+=[train.epochs=abc]"], r"^study.finetune: train.epochs='abc'"),
                            (["probe+=[eval.probe_folds=1]"], r"^study.probe: eval.probe_folds"),
                            (["pretrain+=[train.device=mps]"], r"^study.pretrain: train.device='mps'"),
                            (["finetune+=[train.device=meta]"], r"^study.finetune: train.device='meta'"),
                            (["pretrain+=[train.output_dir=/elsewhere]"], r"^study.pretrain: train.output_dir is the study's")):
        study = load_study(None, [f"out_dir={out}"] + override, quick=True)
        with pytest.raises(ConfigError, match=match):
            run_study(study, quick=True)
        assert not out.exists()
    with pytest.raises(ConfigError, match=r"study.seeds=\[0, -1\]: integers >= 0"):
        load_study(None, ["seeds=[0, -1]"])
    for override, key in ((["seeds+=[0]"], "seeds: 0"), (["maskings=[tube, tube]"], "maskings: 'tube'"),
                          (["references+=[none]"], "references: 'none'")):
        with pytest.raises(ConfigError, match=rf"study.{key} given more than once"):
            load_study(None, override)


def test_study_cli_exits_2_with_one_line_on_a_bad_key_or_a_full_study_folder(tmp_path, capsys):
    from tgmae.cli import main

    assert main(["study", "--quick", "epochs=3"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown config key study.epochs" in err
    # --quick pointed at a full study's folder: refused before anything is written there
    (tmp_path / "data").mkdir()
    meta = {"num_videos": 2304, "frames": 16, "height": 64, "distractors": 0, "val_fraction": 0.5}
    (tmp_path / "data" / "meta.json").write_text(json.dumps(meta))
    assert main(["study", "--quick", f"out_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "study.num_videos=40 but" in err and "holds a set with 2304" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_study_val_fraction_must_leave_both_splits(tmp_path):
    from tgmae.config import ConfigError

    with pytest.raises(ConfigError, match="study.val_fraction=0.01 of study.num_videos=40 leaves"):
        StudyConfig(num_videos=40, val_fraction=0.01)
    StudyConfig(num_videos=40, val_fraction=0.5)


def test_report_refuses_runs_probed_differently(tmp_path, capsys):
    from tgmae.cli import main

    for name, probe in (("a", "lars"), ("b", "lbfgs"), ("k", "knn")):
        run = tmp_path / name
        run.mkdir()
        (run / "study_record.json").write_text(json.dumps(
            {"masking": "tube", "objective": "mae", "seed": 0, "mask_ratio": 0.75, "finetune_top1": 0.5,
             "linear_probe_top1": 0.2, "retrieval": {}, "run_dir": str(run), "probe": probe}))
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "rep")]) == 2
    assert "eval.probe_optimizer lars: 1 runs, lbfgs: 1 runs" in capsys.readouterr().err
    # re-trial 22B (M1): a k-NN probe in the linear probe's place was called a linear probe
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "k"), "--out", str(tmp_path / "rep")]) == 2
    assert "knn: 1 runs, lars: 1 runs" in capsys.readouterr().err
    for phase, name in (("probe", "probe_results.json"), ("finetune", "finetune_results.json")):
        (tmp_path / "k" / phase).mkdir()
        (tmp_path / "k" / phase / name).write_text(json.dumps({"top1": 0.2, "val_top1": 0.5}))
    assert main(["report", str(tmp_path / "k"), "--out", str(tmp_path / "repk")]) == 0
    assert "DINO's weighted k-NN in the linear probe's place; eval.probe=knn" in (tmp_path / "repk" / "report.md").read_text()


def test_report_refuses_to_replace_a_report_of_other_runs(tmp_path, capsys):
    """`tgmae report A --out R` then `tgmae report B --out R`: B's report does not silently replace
    A's (named, exit 2; --overwrite replaces); the same runs, or more of them, rewrite it."""
    from tgmae.cli import main

    for name in ("a", "b", "a2"):
        run = tmp_path / name
        run.mkdir()
        (run / "study_record.json").write_text(json.dumps(
            {"masking": "tube", "objective": "mae", "seed": 0 if name != "a2" else 1, "mask_ratio": 0.75,
             "finetune_top1": 0.5, "linear_probe_top1": 0.2, "retrieval": {}, "run_dir": str(run), "probe": "lbfgs"}))
    out = str(tmp_path / "rep")
    assert main(["report", str(tmp_path / "a"), "--out", out]) == 0
    assert main(["report", str(tmp_path / "a"), str(tmp_path / "a2"), "--out", out]) == 0  # more runs: rewritten
    capsys.readouterr()
    assert main(["report", str(tmp_path / "b"), "--out", out]) == 2
    assert "results.json holds a report of other runs" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "b"), "--out", out, "--overwrite"]) == 0
    assert [r["run_dir"] for r in json.loads((tmp_path / "rep" / "results.json").read_text())] == [str(tmp_path / "b")]


def test_report_links_figures_relative_to_itself(tmp_path):
    """A combined report elsewhere (`tgmae report STUDY --out DIR`) links the runs' figures with
    relative paths, so the folders can be moved or shared together."""
    run = tmp_path / "study" / "runs" / "tube__mae__s0"
    (run / "pretrain").mkdir(parents=True)
    (run / "pretrain" / "reconstruction.png").write_bytes(b"\x89PNG")
    record = {"masking": "tube", "objective": "mae", "seed": 0, "mask_ratio": 0.75, "finetune_top1": 0.5,
              "linear_probe_top1": 0.2, "retrieval": {}, "run_dir": str(run), "num_classes": 10}
    report = write_report([record], tmp_path / "all").read_text()
    assert "](../study/runs/tube__mae__s0/pretrain/reconstruction.png)" in report
    assert str(tmp_path) not in report


def test_study_phases_yaml_holds_valid_overrides(tmp_path):
    """configs/study_phases.yaml: every masking's and phase's overrides build a RunConfig; a list
    that is not one of strings is refused naming its key."""
    from tgmae.config import load_config
    from tgmae.study.cells import load_phases
    from tgmae.study.run import FINETUNE_BASE, MASKINGS, PRETRAIN_BASE, PROBE_BASE

    assert set(MASKINGS) == {"tube", "random", "mgm", "tgm", "tgm_bottom"}
    for overrides in [PRETRAIN_BASE, PRETRAIN_BASE[:4] + PROBE_BASE, PRETRAIN_BASE[:4] + FINETUNE_BASE]:
        load_config(None, overrides)
    text = ["captions.file=c.jsonl", "captions.clip_model=clip", "masking.cache_dir=maps"]  # what run_configs adds
    for name, overrides in MASKINGS.items():
        assert load_config(None, PRETRAIN_BASE + text + overrides).masking.name == name.removesuffix("_bottom")
    bad = tmp_path / "phases.yaml"
    bad.write_text("maskings: {tube: masking.name=tube}\npretrain: []\nprobe: []\nfinetune: []\n")
    with pytest.raises(ConfigError, match="maskings.tube"):
        load_phases(bad)


def test_a_study_setting_can_pretrain_with_repeated_sampling(tmp_path):
    """study.pretrain += data.num_sample / repeat_mode: the pretraining phase takes k views per
    video; the evaluation phases stay one view per clip."""
    from pathlib import Path

    from tgmae.study.run import StudyPaths, load_study, run_configs

    study = load_study(None, [f"out_dir={tmp_path / 's'}", "pretrain+=[data.num_sample=4, data.repeat_mode=clips]"],
                       quick=True)
    pre, probe, finetune = run_configs(study, StudyPaths(Path(study.out_dir)), "tube", "mae", 0, quick=True)
    assert (pre.data.num_sample, pre.data.repeat_mode) == (4, "clips")
    assert probe.data.num_sample == finetune.data.num_sample == 1

def test_study_cell_workers_end_when_the_study_is_killed():
    """issue 28: kill -9 of `tgmae study` left its worker pool running (600-900 MB each, 12
    minutes later). The cells' initializer is the study's own."""
    import os
    import signal

    from test_lifetime import _wait_gone, worker_pids_after_parent_kill

    pids = worker_pids_after_parent_kill("from tgmae.study.run import _init_worker as init",
                                         "(1, ctx.Queue(), 20, os.getpid())")
    left = _wait_gone(pids)
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert len(pids) == 2 and left == []


def test_retrieval_ranks_the_sets_class_descriptions_by_default(tmp_path):
    from tgmae.study.run import StudyPaths, retrieval_config, run_configs

    study = StudyConfig(out_dir=str(tmp_path))
    paths = StudyPaths(tmp_path)
    _, probe, _ = run_configs(study, paths, "tube", "mae+contrastive", 0, quick=False)
    run = paths.run("tube", "mae+contrastive", 0)
    ret = retrieval_config(study, paths, probe, run)
    assert study.retrieval_prompts == "descriptions"
    assert ret.eval.class_descriptions == str(paths.data / "descriptions.json")
    # through a head aligned on the frozen encoder (issue 27), in a folder of its own
    assert ret.eval.retrieval_align_epochs == study.retrieval_align_epochs == 60
    assert ret.train.output_dir == str(run / "retrieval_aligned")
    own = retrieval_config(dataclasses.replace(study, retrieval_align_epochs=0), paths, probe, run)
    assert own.train.output_dir == str(run / "retrieval") and own.eval.retrieval_align_epochs == 0
    assert retrieval_config(study, paths, probe, run, quick=True).eval.retrieval_align_batch_size == 8
    # the probe's own config (what check_phase_settings compares on resume) is untouched
    assert probe.eval.class_descriptions == "" and probe.train.output_dir == str(run / "probe")
    names = retrieval_config(StudyConfig(out_dir=str(tmp_path), retrieval_prompts="names"), paths, probe, run)
    assert names.eval.class_descriptions == "" and names.eval.class_prompt == "a video of {}."
    with pytest.raises(ConfigError, match=r"study.retrieval_prompts='labels': expected descriptions\|names"):
        StudyConfig(retrieval_prompts="labels")


def test_aligned_retrieval_covers_mae_only_cells_and_finished_cells_gain_it():
    from tgmae.study.run import retrieves, stale_retrieval

    aligned, own = StudyConfig(), StudyConfig(retrieval_align_epochs=0)
    assert retrieves(aligned, "mae") and retrieves(aligned, "mae+contrastive")  # MAE vs MAE + V-T, one head
    assert not retrieves(own, "mae") and retrieves(own, "mae+contrastive")  # no head of its own to read
    old = {"masking": "tube", "objective": "mae+contrastive", "retrieval": {"video_to_text": {"R@1": 0.1}}}
    assert stale_retrieval(aligned, old) and not stale_retrieval(own, old)  # older records: the pretraining's head
    assert not stale_retrieval(aligned, dict(old, retrieval={"align_epochs": 60}))
    assert stale_retrieval(aligned, {"masking": "tube", "objective": "mae", "retrieval": {}})
    assert not stale_retrieval(aligned, {"masking": "none", "objective": "none", "retrieval": {}})
    with pytest.raises(ConfigError, match="study.retrieval_align_epochs"):
        StudyConfig(retrieval_align_epochs=-1)


def test_a_second_study_into_one_folder_is_refused_naming_the_holder(tmp_path, capsys):
    """Issue #28.8: two `tgmae study` runs into one out_dir both ran, their phases interleaved. The
    study folder is locked (`tgmae.locks`): the second is refused in one line naming the first,
    before anything is written there."""
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from tgmae.cli import main

    out = tmp_path / "s"
    code = textwrap.dedent(f"""
        import time
        from tgmae.locks import acquire
        acquire({str(out)!r}, "study.out_dir", folder=True)
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, "study"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        assert main(["study", "--quick", f"out_dir={out}"]) == 2
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"pid {proc.pid}" in err and "study.out_dir" in err
    assert not out.exists()


def test_a_study_clip_killed_while_saving_is_trained_again(tmp_path, monkeypatch):
    """issue 28: a CLIP's config.json is its first file (save_pretrained), train_clip.json its last;
    a study killed in between took config.json as done, then failed on the missing summary for
    good. The study trains a CLIP again unless its train_clip.json is there."""
    import tgmae.study.clip.train as clip_train
    from tgmae.study.run import StudyPaths, prepare_clip

    paths = StudyPaths(tmp_path)
    paths.clip.mkdir()
    (paths.clip / "config.json").write_text("{}")  # the killed save's first file
    trained = []

    def train_clip(root, out, cfg, **kwargs):
        trained.append(out)
        (out / "train_clip.json").write_text(json.dumps({"config": dataclasses.asdict(cfg)}))
        return {"steps": cfg.steps}

    monkeypatch.setattr(clip_train, "train_clip", train_clip)
    study = StudyConfig(maskings=["tube"])
    prepare_clip(study, paths)
    assert trained == [paths.clip]
    prepare_clip(study, paths)  # done now
    assert trained == [paths.clip]


def test_a_word_encoder_killed_while_saving_is_saved_again(tmp_path, monkeypatch):
    """issue 28: the study took the word encoder's config.json (save_pretrained's first file) as
    done; a kill before its weights and tokenizer left a folder no text model loads. It is saved
    whole into place (a temp folder renamed), so a half one is never there."""
    import transformers

    from tgmae.captions.tiny import save_word_encoder

    class Killed(Exception):
        pass

    def killed(*args, **kwargs):
        raise Killed()

    out = tmp_path / "word_encoder"
    monkeypatch.setattr(transformers.BertTokenizer, "save_pretrained", killed)
    with pytest.raises(Killed):
        save_word_encoder(out, ["a red square moves left."])
    assert not (out / "config.json").exists() and [p.name for p in tmp_path.iterdir()] == []
    monkeypatch.undo()
    save_word_encoder(out, ["a red square moves left."])
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["word_encoder"]


def test_a_later_cells_folder_of_other_settings_is_named_before_any_cell_trains(tmp_path):
    """Re-trial 16B: rerunning a variant with changed overrides retrained the first cells, then
    stopped at the first folder of the old settings; now every cell's folders are checked first."""
    import dataclasses

    from tgmae.config import ConfigError, save_config
    from tgmae.study.run import StudyPaths, cell_phases, load_study, run_study

    study = dataclasses.replace(load_study(None, [f"out_dir={tmp_path / 's'}"], quick=True),
                                maskings=["tube", "random"], objectives=["mae"], references=[])
    paths = StudyPaths(tmp_path / "s")
    pre = cell_phases(study, paths, "random", "mae", study.seeds[0], True)[0]
    old = dataclasses.replace(pre, optim=dataclasses.replace(pre.optim, base_lr=pre.optim.base_lr * 2))
    Path(old.train.output_dir).mkdir(parents=True)
    save_config(old, Path(old.train.output_dir) / "config.yaml")
    with pytest.raises(ConfigError, match=r"(?s)random__mae.*other settings.*optim\.base_lr"):
        run_study(study, quick=True)
    assert sorted(p.name for p in paths.root.iterdir()) == ["runs"]  # no set-up, no cell trained


def test_a_study_running_in_the_folder_is_named_before_its_cells_are_judged(tmp_path):
    """Re-trial 26B M2 (the same order in the study): the cells' folders were judged before the
    study folder's lock was taken, so a study started beside a running one of other settings was
    told to delete a folder the running one was writing. The lock comes first: it is in use."""
    import dataclasses
    import os
    import signal
    import subprocess
    import sys
    import textwrap

    from tgmae.config import save_config
    from tgmae.locks import LockError
    from tgmae.study.run import StudyPaths, cell_phases, load_study, run_study

    study = dataclasses.replace(load_study(None, [f"out_dir={tmp_path / 's'}"], quick=True),
                                maskings=["tube"], objectives=["mae"], references=[])
    paths = StudyPaths(tmp_path / "s")
    pre = cell_phases(study, paths, "tube", "mae", study.seeds[0], True)[0]
    other = dataclasses.replace(pre, optim=dataclasses.replace(pre.optim, base_lr=pre.optim.base_lr * 2))
    Path(other.train.output_dir).mkdir(parents=True)
    save_config(other, Path(other.train.output_dir) / "config.yaml")  # the running study's cell
    code = textwrap.dedent(f"""
        import time
        from tgmae.locks import acquire
        acquire({str(paths.root)!r}, "study.out_dir", folder=True)
        print("held", flush=True)
        time.sleep(120)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code, "study"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LockError, match=f"in use by another run.*pid {proc.pid}"):
            run_study(study, quick=True)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def test_a_later_cells_retrieval_of_other_settings_is_named_before_any_cell_trains(tmp_path):
    """Re-trial 17B (N1): a rerun with another retrieval_align_epochs trained the first cell, then
    stopped at the next cell's retrieval_aligned folder with advice (train.output_dir,
    checkpoint.resume) a study user cannot follow; now named up front with the study's way out."""
    import dataclasses

    from tgmae.config import ConfigError
    from tgmae.evaluate.retrieval import RESULTS, RETRIEVE, retrieval_settings
    from tgmae.study.run import StudyPaths, cell_phases, load_study, retrieval_config, run_study

    study = dataclasses.replace(load_study(None, [f"out_dir={tmp_path / 's'}"], quick=True),
                                maskings=["tube", "random"], objectives=["mae"], references=[])
    assert study.retrieval_align_epochs > 0
    paths = StudyPaths(tmp_path / "s")
    run = paths.run("random", "mae", study.seeds[0], study.variant)
    probe = cell_phases(study, paths, "random", "mae", study.seeds[0], True)[1]
    before = dataclasses.replace(study, retrieval_align_epochs=3)
    cfg = retrieval_config(before, paths, probe, run, True)
    out = Path(cfg.train.output_dir)
    out.mkdir(parents=True)
    (out / RESULTS).write_text(json.dumps({"written_by": RETRIEVE, "settings": retrieval_settings(cfg, study.retrieval)}))
    with pytest.raises(ConfigError, match=r"(?s)random__mae.*retrieval_aligned.*retrieval_align_epochs.*another study out_dir"):
        run_study(study, quick=True)
    assert sorted(p.name for p in paths.root.iterdir()) == ["runs"]
    assert not (paths.run("tube", "mae", study.seeds[0], study.variant)).exists()


def test_the_studys_similarity_cache_follows_the_pretraining_grid(tmp_path, monkeypatch):
    """After re-trial 17A (S6: a cache of another image size is refused at pretraining), the study's
    own cache is built at the image and patch size its TGM cells train with, not a fixed 64 / 16."""
    import dataclasses

    from tgmae.study import run as study_run

    seen = {}
    monkeypatch.setattr("tgmae.clip.features.load_clip", lambda path: None)
    monkeypatch.setattr("tgmae.masking.precompute.precompute",
                        lambda videos, captions, clip, out, opts, **kw: seen.update(opts=opts) or {})
    study = study_run.load_study(None, [f"out_dir={tmp_path / 's'}", "pretrain+=[data.image_size=32]"])
    paths = study_run.StudyPaths(tmp_path / "s")
    paths.data.mkdir(parents=True)
    (paths.data / "annotations.csv").write_text("path,label\na.mp4,0\n")
    study_run._precompute_masks(study, paths)
    assert (seen["opts"].image_size, seen["opts"].patch_size) == (32, 16)
    study_run._precompute_masks(dataclasses.replace(study, pretrain=study.pretrain[:-1]), paths)
    assert (seen["opts"].image_size, seen["opts"].patch_size) == (64, 16)  # the defaults: make demo's cache


def test_a_killed_study_leaves_every_cell_it_never_started_for_the_report_to_name(tmp_path, monkeypatch):
    """Re-trial 18: `tgmae report` of a study killed in its first cell named that cell only; the
    cells never started were not named. Every cell's folder is made when the study starts, so the
    report's "Not finished" lists them all."""
    import dataclasses

    from tgmae.study import run as study_run
    from tgmae.study.report import unfinished_runs

    study = dataclasses.replace(study_run.load_study(None, [f"out_dir={tmp_path / 's'}"], quick=True),
                                maskings=["tube", "random"], objectives=["mae"], references=[], jobs=1)
    monkeypatch.setattr(study_run, "prepare_shared", lambda *a, **k: None)
    monkeypatch.setattr(study_run, "run_recon_check", lambda *a, **k: None)

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(study_run, "run_cell", killed)
    with pytest.raises(KeyboardInterrupt):
        study_run.run_study(study, quick=True)
    paths = study_run.StudyPaths(tmp_path / "s")
    expected = sorted(paths.run(m, "mae", s, study.variant) for s in study.seeds for m in ("tube", "random"))
    assert len(expected) >= 2 and unfinished_runs([tmp_path / "s"]) == expected


def test_the_phases_file_given_as_a_study_config_is_named_as_such(capsys):
    """Re-trial 22B (M3): `tgmae study -c configs/study_phases.yaml` printed the maskings dict and
    "expected a list", not that the file holds the phases' defaults."""
    from tgmae.cli import main

    assert main(["study", "-c", "configs/study_phases.yaml", "--quick"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds the phases' defaults" in err[0] and "study_synthetic.yaml" in err[0], err
    assert "tube:" not in err[0] and "{" not in err[0]


def test_a_probe_kind_in_the_linear_probes_place_is_refused_naming_study_probes(tmp_path, capsys):
    """Re-trial 23B (S1): `probe+=[eval.probe=knn]` ran the L-BFGS linear probe and labelled its
    result k-NN (report, record); the other kinds are study.probes' own phases."""
    from tgmae.cli import main

    for kind in ("knn", "attentive"):
        assert main(["study", "--quick", f"out_dir={tmp_path / kind}", f"probe+=[eval.probe={kind}]"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"eval.probe={kind}" in err[0] and "study.probes" in err[0], err
        assert not (tmp_path / kind / "runs").exists()


def test_report_refuses_runs_measured_on_different_data(tmp_path, capsys):
    """Re-trial 23A (S1): `tgmae report` of a 16-video study's run beside a 20-video study's paired
    them ("+10.0 points from 1 seed") though their val sets differed (6 vs 10 videos)."""
    from tgmae.cli import main

    for name, masking, num_val in (("a", "tube", 6), ("b", "random", 10), ("c", "random", 6)):
        run = tmp_path / name / "runs" / f"{masking}__mae__s0"
        run.mkdir(parents=True)
        (run / "study_record.json").write_text(json.dumps(
            {"masking": masking, "objective": "mae", "seed": 0, "mask_ratio": 0.75, "finetune_top1": 0.5,
             "linear_probe_top1": 0.2, "retrieval": {}, "run_dir": str(run), "probe": "lbfgs",
             "num_classes": 10, "num_val": num_val}))
    a, b, c = (tmp_path / n / "runs" for n in "abc")
    assert main(["report", str(a / "tube__mae__s0"), str(b / "random__mae__s0"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "different data" in err[0] and "6 val videos vs 10" in err[0], err
    assert main(["report", str(a / "tube__mae__s0"), str(c / "random__mae__s0"), "--out", str(tmp_path / "r")]) == 0
    # the "scratch" reference has no probe and so no val-video count: its finetuning's val set is the study's
    run = tmp_path / "a" / "runs" / "scratch__supervised__s0"
    run.mkdir()
    (run / "study_record.json").write_text(json.dumps(
        {"masking": "scratch", "objective": "supervised", "seed": 0, "mask_ratio": None, "finetune_top1": 0.4,
         "linear_probe_top1": None, "retrieval": {}, "run_dir": str(run), "num_classes": 10}))
    assert main(["report", str(tmp_path / "a"), "--out", str(tmp_path / "ra")]) == 0, capsys.readouterr().err
    assert main(["report", str(tmp_path / "a"), str(b / "random__mae__s0"), "--out", str(tmp_path / "rb")]) == 2
