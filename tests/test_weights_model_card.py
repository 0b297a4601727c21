"""The export's model card reads the run folder: a step checkpoint reports its own step."""

from __future__ import annotations

import json

import pytest

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


def _pretraining_file(path, masking=None, data=None, run_id=None):
    from tgmae.models import VideoMAEArch, VideoMAEPretrainer
    from tgmae.weights.pretraining import save_pretraining_model

    arch = VideoMAEArch(embed_dim=32, depth=1, num_heads=4, patch_size=8, tubelet_size=2, num_frames=4,
                        image_size=32, decoder_dim=16, decoder_depth=1, decoder_heads=1)
    return save_pretraining_model(VideoMAEPretrainer(arch), path, data=data, masking=masking, run_id=run_id)


def test_weights_recording_other_settings_than_the_folders_run_are_not_that_runs(tmp_path):
    """Re-trial 32A S2: a file copied into another run's folder was read as that run's model (its masking
    drawn, its step and results claimed). `run_of` is the one rule: weights recording data or masking
    other than the folder's config.yaml are not its run's (said why); the run's own, weights recording
    nothing, and a step of before a mid-run change (config_changes.jsonl) are."""
    from tgmae.config import load_config
    from tgmae.weights.model_card import find_run_dir, known_settings, run_of, section_settings

    run = tmp_path / "run"
    cfg = load_config(None, ["masking.name=mgm", "masking.ratio=0.7"])
    save_config(cfg, run / "config.yaml")
    (run / "test_results.json").write_text(json.dumps({"top1": 0.5}))
    data = section_settings("data", cfg.data)
    own = _pretraining_file(run / "model.safetensors", section_settings("masking", cfg.masking), data)
    bare = _pretraining_file(run / "bare.safetensors")
    other = load_config(None, ["masking.name=random", "masking.ratio=0.5"]).masking
    copy = _pretraining_file(run / "copy.safetensors", section_settings("masking", other), data)
    assert find_run_dir(own) == run and find_run_dir(bare) == run
    found, why = run_of(copy)
    assert found is None and why.startswith(f"{copy} is not the model of the run in {run}") and \
        "masking.ratio 0.5 (the run's 0.7)" in why, why
    info = read_run(copy)
    assert info.config is None and info.results == {} and info.note == why
    assert known_settings(copy, "masking")[0]["name"] == "random"  # its own, for export-hf and convert too
    (run / "config_changes.jsonl").write_text(json.dumps(
        {"step": 4, "changes": {"masking.name": ["random", "mgm"], "masking.ratio": [0.5, 0.7]}}) + "\n")
    assert find_run_dir(copy) == run


def test_a_bad_setting_recorded_with_weights_names_the_file_and_its_key(tmp_path):
    """Re-trial 32A M2 (the readers beside `visualize`: probe, evaluate, export-hf, convert): a value
    recorded with the weights that its config refuses is one line naming the file and its key, not the
    user's `data.num_frames` of the same name."""
    import pytest

    from tgmae.evaluate.multiview import own_settings
    from tgmae.weights.model_card import RecordedSettingsError, known_settings

    bad = _pretraining_file(tmp_path / "pt.safetensors", {"name": "random", "ratio": 0.5}, {"num_frames": -2})
    with pytest.raises(RecordedSettingsError, match=rf"^{bad}: metadata data\.num_frames=-2: must be > 0 "):
        own_settings(bad)
    assert known_settings(bad, "masking")[0] == {"name": "random", "ratio": 0.5}


def test_a_file_of_another_run_with_the_same_settings_is_not_that_runs(tmp_path):
    """Re-trial 33B S1: another run's model of the same masking and clip settings, copied into a run's
    folder, was taken as that run's (titled `final`, carded with its data, steps and loss). Every run
    folder has an id (`own_run_id`) its weights record: a file recording another id is not the run's,
    the run's own model and step checkpoints are, and a file recording none (made before ids were
    recorded) is compared by settings as before."""
    import torch

    from tgmae.config import load_config
    from tgmae.evaluate.visualize import checkpoint_label
    from tgmae.models.arch import VideoMAEArch
    from tgmae.weights import checkpoint as ckpt
    from tgmae.weights.convert import convert
    from tgmae.weights.model_card import (folder_run_id, own_run_id, recorded_run_id, render_card, run_of,
                                          section_settings)

    cfg = load_config(None, ["masking.name=tube", "masking.ratio=0.75"])
    settings = dict(masking=section_settings("masking", cfg.masking), data=section_settings("data", cfg.data))
    runs = {}
    for name in ("a", "b"):
        run = tmp_path / name
        save_config(cfg, run / "config.yaml")
        runs[name] = (run, own_run_id(run))
        (run / "metrics.jsonl").write_text(json.dumps({"step": 8, "loss": 0.25}) + "\n")
    (a, a_id), (b, b_id) = runs["a"], runs["b"]
    assert a_id != b_id and own_run_id(a) == a_id == folder_run_id(a)  # written once, kept
    own = _pretraining_file(b / "model.safetensors", **settings, run_id=b_id)
    theirs = _pretraining_file(a / "model.safetensors", **settings, run_id=a_id)
    copy = b / "pt0_copy.safetensors"
    copy.write_bytes(theirs.read_bytes())
    found, why = run_of(copy)
    assert found is None and why.startswith(f"{copy} is not the model of the run in {b}") and a_id in why, why
    info = read_run(copy)
    assert info.config is None and info.steps is None and info.last_loss is None and info.note == why
    assert checkpoint_label(copy) == "pt0_copy.safetensors"
    card = render_card(kind="pretraining", hf_class="VideoMAEForPreTraining", arch=VideoMAEArch(), checkpoint=str(copy),
                       run=info, mean=(0.5,) * 3, std=(0.2,) * 3, frame_stride=1, class_names=[], check="", version="0")
    assert "another run's id" in card and "not that run's model" in card and "| run folder |" not in card
    assert "last logged training loss" not in card
    # the run's own model and step checkpoints: the run's
    assert run_of(own) == (b, "") and checkpoint_label(own) == "final" and checkpoint_label(a / "model.safetensors") == "final"
    lin = torch.nn.Linear(2, 2)
    step = ckpt.save_checkpoint(b / "checkpoints", lin, torch.optim.SGD(lin.parameters(), lr=0.1),
                                None, ckpt.TrainPosition(4, 0, 0), {}, run_id=b_id)
    assert recorded_run_id(step / "model.safetensors")[0] == b_id
    assert run_of(step / "model.safetensors") == (b, "") and checkpoint_label(step / "model.safetensors") == "step 4"
    # a copy made by convert stays the run's it was made from, wherever it lands
    convert(theirs, tmp_path / "converted.safetensors")
    assert recorded_run_id(tmp_path / "converted.safetensors")[0] == a_id
    # a file recording no id (made before ids were recorded): compared by settings, as before
    old = _pretraining_file(b / "old.safetensors", **settings)
    assert recorded_run_id(old) == (None, "") and run_of(old) == (b, "") and checkpoint_label(old) == "final"
    other = _pretraining_file(b / "old_other.safetensors", {"name": "random", "ratio": 0.5}, settings["data"])
    assert run_of(other)[0] is None and "masking.name 'random'" in run_of(other)[1]
    # a file recording an id in a folder of a run that has none (started before ids): another run's
    (b / "run_id").unlink()
    assert run_of(own)[0] is None and "folder records none" in run_of(own)[1]


def test_a_copied_or_moved_run_folder_gets_its_own_id_and_keeps_the_old_as_its_ancestry(tmp_path):
    """Re-trial 34A S2: `cp -a runs/a runs/b` copied a's `run_id`, so b's further-trained model recorded
    a's id and, put beside a, was carded as a's run. The file names the folder it was made for: a run
    in another folder (a copy or a move) gets a new id and keeps the old ones as its ancestry, whose
    files stay its own (a copy's checkpoints of a, a moved run's own steps); b's new id is not a's."""
    import shutil

    import torch

    from tgmae.train.resume import refuse_other_runs_step
    from tgmae.weights import checkpoint as ckpt
    from tgmae.weights.model_card import folder_run_id, own_run_id, run_ids, run_of

    cfg = RunConfig()
    a = tmp_path / "a"
    save_config(cfg, a / "config.yaml")
    a_id = own_run_id(a)
    assert own_run_id(a) == a_id and run_ids(a) == [a_id] and str(a.resolve()) in (a / "run_id").read_text()
    lin = torch.nn.Linear(2, 2)
    a_step = ckpt.save_checkpoint(a / "checkpoints", lin, torch.optim.SGD(lin.parameters(), lr=0.1),
                                  None, ckpt.TrainPosition(4, 0, 0), {}, run_id=a_id)
    shutil.copytree(a, tmp_path / "b", symlinks=True)  # cp -a
    b = tmp_path / "b"
    assert folder_run_id(b) == a_id  # read as before until a run starts there
    b_id = own_run_id(b)
    assert b_id != a_id and run_ids(b) == [b_id, a_id] and own_run_id(b) == b_id and own_run_id(a) == a_id
    b_step = b / "checkpoints" / a_step.name
    assert run_of(b_step / "model.safetensors") == (b, "")  # the copy holds a's checkpoints legitimately
    refuse_other_runs_step(b, b_step)
    a_model = _pretraining_file(a / "model.safetensors", run_id=a_id)  # a's final weights, into the copy:
    (b / "a_final.safetensors").write_bytes(a_model.read_bytes())  # no step says when: not b's (35A S1)
    assert run_of(b / "a_final.safetensors")[0] is None
    assert f"copied from run: {a_id} at step 4" in (b / "run_id").read_text()  # a's steps up to the copy
    # re-trial 34B S1: a step a made after the copy, moved into b, is not b's: refused, drawn as foreign
    later = ckpt.save_checkpoint(a / "checkpoints", lin, torch.optim.SGD(lin.parameters(), lr=0.1),
                                 None, ckpt.TrainPosition(12, 0, 0), {}, run_id=a_id)
    shutil.copytree(later, b / "checkpoints" / later.name)
    with pytest.raises(ckpt.CheckpointError, match=f"records run id {a_id}"):
        refuse_other_runs_step(b, b / "checkpoints" / later.name)
    assert run_of(b / "checkpoints" / later.name / "model.safetensors")[0] is None
    shutil.rmtree(b / "checkpoints" / later.name)
    shutil.rmtree(later)
    b_model = _pretraining_file(b / "model.safetensors", run_id=b_id)
    (a / "cont.safetensors").write_bytes(b_model.read_bytes())
    found, why = run_of(a / "cont.safetensors")
    assert found is None and b_id in why and f"the run's is {a_id}" in why, why
    # a move: the run in its new folder resumes its own steps, under a new id of its own
    c = tmp_path / "c"
    a.rename(c)
    c_id = own_run_id(c)
    assert c_id not in (a_id, b_id) and run_ids(c) == [c_id, a_id]
    refuse_other_runs_step(c, c / "checkpoints" / a_step.name)
    # a file written before folders were recorded (the id alone): this folder's, now naming it
    (c / "run_id").write_text(f"{a_id}\n")
    assert own_run_id(c) == a_id and run_ids(c) == [a_id] and str(c.resolve()) in (c / "run_id").read_text()


def test_a_resume_refuses_a_step_folder_of_another_run_naming_both_ids(tmp_path):
    """Re-trial 34A S1: the checkpoint a run resumes inside its own folder must record one of its ids
    (`run_ids`); one recording none (saved before ids were recorded) resumes as before, and one outside
    the folder (checkpoint.resume=PATH) starts the run from it."""
    import pytest
    import torch

    from tgmae.train.resume import refuse_other_runs_step
    from tgmae.weights import checkpoint as ckpt
    from tgmae.weights.model_card import own_run_id

    r1, r4 = tmp_path / "r1", tmp_path / "r4"
    ids = {r: own_run_id(r) for r in (r1, r4)}
    lin = torch.nn.Linear(2, 2)

    def step(run, n, run_id):
        return ckpt.save_checkpoint(run / "checkpoints", lin, torch.optim.SGD(lin.parameters(), lr=0.1),
                                    None, ckpt.TrainPosition(n, 0, 0), {}, run_id=run_id)
    theirs = step(r4, 4, ids[r1])
    with pytest.raises(ckpt.CheckpointError) as e:
        refuse_other_runs_step(r4, theirs)
    said = str(e.value)
    assert said.startswith(f"{theirs}: records run id {ids[r1]}, but the run in {r4} is {ids[r4]}") and "\n" not in said
    refuse_other_runs_step(r4, step(r4, 6, ids[r4]))
    refuse_other_runs_step(r4, step(r4, 8, None))  # an older checkpoint
    refuse_other_runs_step(r4, step(r1, 2, ids[r1]))  # outside: a new start from it
