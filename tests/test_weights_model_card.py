"""The export's model card reads the run folder: a step checkpoint reports its own step."""

from __future__ import annotations

import json

from tgmae.config import RunConfig, save_config
from tgmae.weights.model_card import read_run


def test_step_checkpoint_reports_its_step_not_the_runs_end(tmp_path):
    run = tmp_path / "run"
    step = run / "checkpoints" / "step_00000004"
    step.mkdir(parents=True)
    save_config(RunConfig(), run / "config.yaml")
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 1.0 / s}) + "\n" for s in (2, 4, 6)))
    (run / "test_results.json").write_text(json.dumps({"top1": 0.5}))
    at_step = read_run(step / "model.safetensors")
    assert at_step.run_dir == run and at_step.steps == 4 and at_step.last_loss == 0.25 and at_step.results == {}
    final = read_run(run)
    assert final.steps == 6 and abs(final.last_loss - 1 / 6) < 1e-12 and final.results == {"test (multi-view): top1": 0.5}
    assert read_run(tmp_path / "elsewhere.safetensors").run_dir is None
    # issue 28: `RUN/checkpoints/latest` (as every loader takes it) found no run: the card and the
    # processor settings of `export-hf RUN/checkpoints/latest`, `visualize`'s masking, went without it
    (step / "model.safetensors").write_bytes(b"x")
    (step / "state.pt").write_bytes(b"x")
    (run / "checkpoints" / "latest").write_text("step_00000004\n")
    for named in (run / "checkpoints" / "latest", run / "checkpoints"):
        latest = read_run(named)
        assert latest.run_dir == run and latest.steps == 4 and latest.config is not None, named


def test_card_labels_results_names_changes_and_shows_no_local_paths(tmp_path):
    """Each result row says which file (test / finetune / probe) it comes from; a run continued
    under changed settings says so and names config_changes.jsonl; no absolute local path, no
    title from the file name."""
    from tgmae.config import load_config
    from tgmae.models.arch import VideoMAEArch
    from tgmae.weights.model_card import render_card

    run = tmp_path / "secret_home" / "ft"
    run.mkdir(parents=True)
    save_config(load_config(None, [f"data.root={tmp_path / 'secret_home' / 'data'}",
                                   f"model.pretrained={tmp_path / 'secret_home' / 'pt' / 'model.safetensors'}"]),
                run / "config.yaml")
    (run / "test_results.json").write_text(json.dumps({"top1": 0.625}))
    (run / "finetune_results.json").write_text(json.dumps({"top1": 0.75}))
    (run / "config_changes.jsonl").write_text(json.dumps({"step": 12, "changes": {"optim.lr": [0.001, 0.0005]}}) + "\n")
    info = read_run(run / "classifier.safetensors")
    assert info.results == {"test (multi-view): top1": 0.625, "finetune (validation): top1": 0.75}
    card = render_card(kind="classifier", hf_class="VideoMAEForVideoClassification", arch=VideoMAEArch(),
                       checkpoint=str(run / "classifier.safetensors"), run=info, mean=(0.5,) * 3, std=(0.2,) * 3,
                       frame_stride=2, class_names=["a", "b"], check="", version="0")
    assert "| test (multi-view): top1 | 0.6250 |" in card and "| finetune (validation): top1 | 0.7500 |" in card
    assert "at step 12: optim.lr 0.001 -> 0.0005" in card and "config_changes.jsonl" in card
    assert str(tmp_path) not in card and "# classifier" not in card
    assert "\n# VideoMAE video classifier (tgmae)\n" in card


def test_the_card_says_which_fields_were_assumed_and_how_to_state_them():
    from tgmae.models import VideoMAEArch
    from tgmae.weights.model_card import RunInfo, render_card

    kwargs = dict(kind="encoder", hf_class="VideoMAEModel", arch=VideoMAEArch(), checkpoint="a.safetensors",
                  run=RunInfo(), mean=(0.5,) * 3, std=(0.2,) * 3, frame_stride=1, class_names=[], check="",
                  version="0")
    card = render_card(**kwargs, assumed=["num_frames", "num_heads"])
    line = next(x for x in card.splitlines() if "Assumed, not known" in x)
    assert "`num_frames` = 16" in line and "`num_heads` = 4" in line and "`image_size`" not in line
    assert "`--num-frames`, `--num-heads`" in line and "tgmae_assumed" in line
    assert "ssumed" not in render_card(**kwargs)
