"""The study command end to end at CI size, and the report's aggregation."""

from __future__ import annotations

import json

import pytest

from tgmae.config import ConfigError, from_dict
from tgmae.evaluate.report import aggregate, collect_records, contrastive_gains, markdown_table, write_report
from tgmae.evaluate.study import StudyConfig, run_study


def test_study_config_validation():
    with pytest.raises(ConfigError, match="study.maskings: unknown"):
        StudyConfig(maskings=["tube", "magic"])
    with pytest.raises(ConfigError, match="unknown config key study.epochs"):
        from_dict(StudyConfig, {"epochs": 3}, prefix="study")


def test_aggregate_mean_std_over_seeds(tmp_path):
    records = [
        {"masking": "tgm", "objective": "mae", "seed": s, "mask_ratio": 0.6, "finetune_top1": ft,
         "linear_probe_top1": lp, "retrieval": {}, "run_dir": str(tmp_path)}
        for s, ft, lp in ((0, 0.5, 0.2), (1, 0.7, 0.4))
    ]
    row = aggregate(records)[0]
    assert row["FT top-1"][0] == pytest.approx(0.6) and row["FT top-1"][1] == pytest.approx(0.1)
    assert row["V->T R@1"] is None
    table = markdown_table([row])
    assert "| tgm | 0.6 | ✓ |  | 60.0 ± 10.0 | 30.0 ± 10.0 | - |" in table
    write_report(records, tmp_path / "rep")
    assert json.loads((tmp_path / "rep" / "results.json").read_text())[1]["seed"] == 1
    assert "60.0 ± 10.0" in (tmp_path / "rep" / "report.html").read_text()


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
    assert "| tube | +2.0 ± 2.4 | +5.0, +2.0, -1.0 | 2/3 |" in report


def test_chance_check_counts_cells_near_chance(tmp_path):
    def rec(masking, lp):
        return {"masking": masking, "objective": "mae", "seed": 0, "mask_ratio": 0.75, "finetune_top1": 0.1,
                "linear_probe_top1": lp, "retrieval": {}, "run_dir": str(tmp_path), "num_classes": 10,
                "num_val": 100}
    # chance 0.1, SE = sqrt(0.09 / 100) = 3 points: 0.15 is within 2 SE, 0.4 is not
    near = write_report([rec("tube", 0.15), rec("tgm", 0.05)], tmp_path / "a").read_text()
    assert "binomial standard error of 3.0 points; 4 of 4 FT / LP means lie within" in near
    assert "no condition is distinguishable from chance" in near
    far = write_report([rec("tube", 0.15), rec("tgm", 0.4)], tmp_path / "b").read_text()
    assert "3 of 4 FT / LP means" in far and "distinguishable" not in far


@pytest.mark.slow
def test_quick_study_runs_every_phase_and_resumes(tmp_path):
    study = StudyConfig(out_dir=str(tmp_path / "study"), num_videos=24, video_frames=24, clip_steps=8,
                        maskings=["tube", "tgm"], objectives=["mae+contrastive"])
    root = run_study(study, quick=True)
    records = json.loads((root / "results.json").read_text())
    assert [(r["masking"], r["objective"]) for r in records] == [("tgm", "mae+contrastive"),
                                                                ("tube", "mae+contrastive")]
    for r in records:
        assert 0.0 <= r["finetune_top1"] <= 1.0 and 0.0 <= r["linear_probe_top1"] <= 1.0
        assert set(r["retrieval"]["video_to_text"]) == {"R@1", "R@5", "R@10"}
    report = (root / "report.md").read_text()
    assert all(r["num_classes"] == 10 and r["num_val"] > 0 for r in records) and "Chance level: 1/10" in report
    for r in records:  # attributes of the synthetic set, probed from the cached features
        probe = r["attribute_probe"]
        assert set(probe) == {"action", "colour", "shape", "action_classes", "colour_classes", "shape_classes"}
        assert all(0.0 <= probe[a] <= 1.0 for a in ("action", "colour", "shape"))
    assert "## What the features encode" in report
    assert "| tgm | 0.6 | ✓ | ✓ |" in report and "loss_curves.png" in report
    assert (root / "loss_curves.png").stat().st_size > 5000
    # A second call finds every phase done and only rewrites the report.
    before = (root / "runs" / "tube__mae_contrastive__s0" / "study_record.json").stat().st_mtime
    run_study(study, quick=True)
    assert (root / "runs" / "tube__mae_contrastive__s0" / "study_record.json").stat().st_mtime == before
    assert len(collect_records([root])) == 2


def test_study_refuses_a_synthetic_set_of_other_settings(tmp_path):
    from tgmae.config import ConfigError
    from tgmae.evaluate.study import StudyPaths, check_data_settings

    paths = StudyPaths(tmp_path)
    paths.data.mkdir()
    meta = {"num_videos": 360, "frames": 48, "height": 128}  # written before the difficulty knobs
    (paths.data / "meta.json").write_text(json.dumps(meta))
    check_data_settings(StudyConfig(distractors=2), paths)  # the original set: accepted
    with pytest.raises(ConfigError, match="study.distractors=0"):
        check_data_settings(StudyConfig(), paths)
    (paths.data / "meta.json").write_text(json.dumps(meta | {"distractors": 0, "distractor_speed": 1.0}))
    check_data_settings(StudyConfig(), paths)
    with pytest.raises(ConfigError, match="study.num_videos=40"):
        check_data_settings(StudyConfig(num_videos=40), paths)
