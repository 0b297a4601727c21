"""The export's model card reads the run folder: a step checkpoint reports its own step."""

from __future__ import annotations

import json

from tgmae.config import RunConfig, save_config
from tgmae.evaluate.model_card import read_run


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
    assert final.steps == 6 and abs(final.last_loss - 1 / 6) < 1e-12 and final.results == {"top1": 0.5}
    assert read_run(tmp_path / "elsewhere.safetensors").run_dir is None
