"""`eval.probe=attentive`: V-JEPA's attentive probe as a task of the shared loop, on cached token
grids: the same training as the recipe written out (`test_evaluate_attentive.fit_reference`), multi-view testing, predictions, exact
resume after a kill, and a folder that refuses other settings."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from test_evaluate_probe import ARCH, Broken, Clips, checkpoint, encoder_of, probe_cfg, synth  # noqa: F401 (fixtures)
from test_evaluate_attentive import fit_reference
from tgmae.evaluate.attentive import TokenDataset
from tgmae.evaluate.attentive_probe import loop_config
from tgmae.evaluate.probes import run_probe
from tgmae.weights import checkpoint as ckpt

ATTENTIVE = ["eval.probe=attentive", "eval.attentive_epochs=4", "eval.attentive_lr=3e-3", "eval.attentive_heads=2"]


def data(views: int = 2) -> dict:
    return dict(train_data=Clips(24), val_data=Clips(12, seed=1, views=views), num_classes=3)


def tokens_of(enc, d) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([enc(d[i]["video"].view(-1, 3, 4, 16, 16)) for i in range(len(d))])  # [M, V, L, D]



class Killed(Exception):
    """A kill at a step, as a training hook raises it."""


def kill_at(step: int):
    """A training hook that raises Killed once the run reaches `step`."""
    def kill(state):
        if state.position.step == step:
            raise Killed()
    return kill


def test_loop_task_trains_as_the_recipe_and_tests_every_view(checkpoint, tmp_path):
    """Full-batch steps (batch order cannot matter): the loop's task ends where V-JEPA's recipe in
    `fit_reference` ends, from the same init; the val probabilities are the softmax averaged
    over each video's views; probe_results.json and test_predictions.csv say so."""
    cfg = probe_cfg(tmp_path, checkpoint, *ATTENTIVE, "eval.attentive_batch_size=24", "eval.attentive_final_lr=1e-4",
                    "eval.attentive_weight_decay=0.05")
    d = data()
    result = run_probe(cfg, **d)
    enc = encoder_of(checkpoint)
    train_tokens = tokens_of(enc, d["train_data"])[:, 0]  # [24, L, D]
    ref, _ = fit_reference(TokenDataset(train_tokens, d["train_data"].labels), 3, train_tokens.shape[-1], epochs=4,
                           batch_size=24, lr=3e-3, final_lr=1e-4, weight_decay=0.05, num_heads=2, seed=cfg.train.seed)
    for (name, a), b in zip(result.model.state_dict().items(), ref.state_dict().values()):
        assert torch.allclose(a, b, atol=2e-5), name
    val_tokens = tokens_of(enc, d["val_data"])  # [12, 2, L, D]
    with torch.no_grad():
        probs = result.model(val_tokens.flatten(0, 1)).softmax(-1).view(12, 2, 3).mean(1)
    saved = json.loads((tmp_path / "probe" / "probe_results.json").read_text())
    top1 = float((probs.argmax(1) == d["val_data"].labels).float().mean())
    assert saved["top1"] == pytest.approx(top1) and result.top1 == pytest.approx(top1)
    assert (saved["probe"], saved["optimizer"], saved["views"], saved["heads"]) == ("attentive", "adamw", 2, 2)
    assert saved["feature_dim"] == train_tokens.shape[-1] and saved["num_val"] == 12
    rows = list(csv.DictReader((tmp_path / "probe" / "test_predictions.csv").open()))
    assert [float(r["score_1"]) for r in rows] == pytest.approx(probs.max(1).values.tolist(), abs=2e-6)
    assert [r["pred_1"] for r in rows] == [str(i) for i in probs.argmax(1).tolist()]


def test_attentive_probe_resumes_exactly_after_a_kill_and_refuses_other_settings(checkpoint, tmp_path):
    kill = kill_at(5)
    overrides = [*ATTENTIVE, "eval.attentive_batch_size=8", "checkpoint.every_steps=1", "checkpoint.resume=auto"]
    whole = run_probe(probe_cfg(tmp_path / "a", checkpoint, *overrides), **data())
    cfg = probe_cfg(tmp_path / "b", checkpoint, *overrides)
    with pytest.raises(Killed):
        run_probe(cfg, hooks=[kill], **data())
    assert ckpt.find_latest(tmp_path / "b" / "probe" / "checkpoints") is not None
    resumed = run_probe(cfg, **data())
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.top1 == whole.top1 and resumed.best_epoch == whole.best_epoch
    assert loop_config(cfg).train.epochs == 4 and loop_config(cfg).optim.lr == 3e-3

    other = probe_cfg(tmp_path / "b", checkpoint, *overrides, "eval.attentive_lr=1e-2")
    with pytest.raises(ckpt.CheckpointError, match="eval.attentive_lr: 0.003 -> 0.01") as refused:
        run_probe(other, **data())
    # issue 29: the loop's optim.lr, a copy of eval.attentive_lr (`loop_config`), is not listed as a second key
    assert "1 key differs" in str(refused.value) and "optim.lr" not in str(refused.value)
    ignore = probe_cfg(tmp_path / "b", checkpoint, *overrides, "eval.attentive_lr=1e-2", "checkpoint.resume=ignore_config")
    with pytest.raises(ckpt.CheckpointError, match="has finished .*raise eval.attentive_epochs to"):
        run_probe(ignore, **data())  # the probe's length is eval.attentive_epochs, not train.epochs
    with pytest.raises(ckpt.CheckpointError):  # the linear probe in the attentive probe's folder
        run_probe(probe_cfg(tmp_path / "b", checkpoint, "checkpoint.resume=auto"), **data())
    with pytest.raises(ckpt.CheckpointError, match="inputs differ"):  # other token grids
        run_probe(cfg, **dict(data(), train_data=Clips(24, seed=7)))


def test_attentive_settings_are_checked_against_the_data(checkpoint, tmp_path):
    from tgmae.config import ConfigError

    with pytest.raises(ConfigError, match="eval.attentive_batch_size=32: more than the 24 training videos"):
        run_probe(probe_cfg(tmp_path, checkpoint, *ATTENTIVE, "eval.attentive_batch_size=32"), **data())
    with pytest.raises(ConfigError, match="eval.attentive_heads=3: does not divide the token width 32"):
        run_probe(probe_cfg(tmp_path, checkpoint, *ATTENTIVE, "eval.attentive_heads=3"), **data())


def test_a_final_lr_above_the_attentive_lr_is_refused_by_its_own_keys_before_extracting(checkpoint, tmp_path):
    """Re-trial 26A M1: eval.attentive_final_lr above eval.attentive_lr was refused as "optim.min_lr=1e-05
    ... above the peak (optim.lr=5e-06)", keys the user never set, advising optim.min_lr=5e-08 (which the
    probe does not read: the same refusal again), and only once the token grids were extracted into the
    new folder. The probe's own keys are named, before anything is read, and the advice runs."""
    import re

    from tgmae.config import ConfigError

    lrs = ["eval.attentive_lr=5e-6", "eval.attentive_final_lr=1e-5"]
    train, val, cache = Clips(24), Clips(12, seed=1, views=2), tmp_path / "cache"
    for extra in ([], ["optim.min_lr=5e-8"]):
        with pytest.raises(ConfigError) as e:
            run_probe(probe_cfg(tmp_path, checkpoint, *ATTENTIVE, *lrs, *extra), train_data=train, val_data=val,
                      num_classes=3, cache_dir=cache)
        said = str(e.value)
        assert said.startswith("eval.attentive_final_lr=1e-05 is above the peak 5e-06 (eval.attentive_lr=5e-06)"), said
        assert "optim." not in said, said
    assert train.loads == val.loads == 0 and not cache.exists() and not (tmp_path / "probe").exists()
    advice = re.search(r"e\.g\. (eval\.attentive_final_lr=\S+)$", said).group(1)
    run_probe(probe_cfg(tmp_path, checkpoint, *ATTENTIVE, *lrs, advice, "eval.attentive_epochs=1"), **data())


def test_attentive_batch_above_the_readable_videos_is_refused_before_extracting_val(checkpoint, tmp_path):
    """A batch within the listed training videos but above the readable ones (known only after
    their extraction) is refused before the val grids are extracted: the cache folder is not made."""
    from tgmae.config import ConfigError

    val, cache = Clips(6, seed=1, views=2), tmp_path / "cache"
    cfg = probe_cfg(tmp_path, checkpoint, *ATTENTIVE, "eval.attentive_batch_size=6")
    with pytest.raises(ConfigError, match="eval.attentive_batch_size=6: more than the 4 training videos"):
        run_probe(cfg, train_data=Broken(6, {0, 5}), val_data=val, num_classes=3, cache_dir=cache)
    assert val.loads == 0 and not cache.exists() and not (tmp_path / "probe").exists()


def test_attentive_probe_refuses_a_folder_holding_a_knn_probe(checkpoint, tmp_path):
    """An attentive probe into a finished k-NN probe's folder (no checkpoints there) would replace
    its probe_results.json: refused naming eval.probe; ignore_config replaces."""
    from tgmae.weights.files import CheckpointError

    knn = ["eval.probe=knn", "eval.knn_k=[1,3]"]
    run_probe(probe_cfg(tmp_path, checkpoint, *knn), **data(views=1))
    out = tmp_path / "probe"
    kept = (out / "probe_results.json").read_bytes()
    attentive = [*ATTENTIVE, "eval.attentive_batch_size=8"]
    with pytest.raises(CheckpointError, match=r"eval\.probe: 'knn' -> 'attentive'"):
        run_probe(probe_cfg(tmp_path, checkpoint, *attentive), **data())
    assert (out / "probe_results.json").read_bytes() == kept


def test_an_ensemble_probe_trains_k_members_and_scores_their_mean(checkpoint, tmp_path):
    """eval.attentive_ensemble=2: two members from one init stream, the first initialised as the
    single probe; the val figure is the members' softmax averaged over members and views."""
    d = data()
    cfg = probe_cfg(tmp_path, checkpoint, *ATTENTIVE, "eval.attentive_ensemble=2")
    result = run_probe(cfg, **d)
    members = result.model.members
    assert len(members) == 2 and not torch.equal(members[0].head.weight, members[1].head.weight)
    val_tokens = tokens_of(encoder_of(checkpoint), d["val_data"])  # [12, 2, L, D]
    with torch.no_grad():
        probs = torch.stack([m(val_tokens.flatten(0, 1)).softmax(-1) for m in members]).mean(0).view(12, 2, 3).mean(1)
    saved = json.loads((tmp_path / "probe" / "probe_results.json").read_text())
    assert saved["ensemble"] == 2
    assert saved["top1"] == pytest.approx(float((probs.argmax(1) == d["val_data"].labels).float().mean()))
    single = probe_cfg(tmp_path / "one", checkpoint, *ATTENTIVE, "train.epochs=1", "eval.attentive_epochs=1")
    from tgmae.evaluate.attentive_probe import AttentiveTask

    task = lambda c: AttentiveTask(loop_config(c), TokenDataset(val_tokens[:, 0], d["val_data"].labels), None, 3, 2)  # noqa: E731
    one, two = task(single).build_model(), task(cfg).build_model()
    assert all(torch.equal(a, b) for a, b in zip(one.state_dict().values(), two.members[0].state_dict().values()))
    # issue 29: the optimised loss is the members' sum (each member's gradient its own), the logged
    # one their mean (~ln 3 at the start, as a single probe's), not the sum (~2 ln 3)
    batch = {"tokens": val_tokens[:, 0], "label": d["val_data"].labels}
    with torch.no_grad():
        out = task(cfg).step(two, batch)
        each = [torch.nn.functional.cross_entropy(m(val_tokens[:, 0]), batch["label"]) for m in two.members]
    assert float(out.loss) == pytest.approx(float(each[0] + each[1]), rel=1e-5)
    assert float(out.metrics["loss"]) == pytest.approx(float(each[0] + each[1]) / 2, rel=1e-5)
    first = next(r for r in result.history if "loss" in r)
    assert first["loss"] < 1.5 * math.log(3)


@pytest.mark.parametrize("bad", [["eval.attentive_heads=3"], ["eval.attentive_batch_size=999"]], ids=["heads", "batch"])
def test_a_refused_attentive_probe_leaves_no_folder(synth, tmp_path, capsys, bad):  # noqa: F811
    """`tgmae probe eval.probe=attentive eval.attentive_heads=3` exited 2 only after extracting the
    token grids, leaving train.output_dir/features/ behind: the settings are checked against the
    encoder's width and the listed videos first, and a refused run leaves no folder."""
    from tgmae.cli import main
    from tgmae.models import VideoMAEArch, VideoMAEPretrainer
    from tgmae.weights.pretraining import save_pretraining_model

    torch.manual_seed(0)
    pt = save_pretraining_model(VideoMAEPretrainer(VideoMAEArch(**{**ARCH.__dict__, "image_size": 32})),
                                tmp_path / "pt.safetensors")
    out = tmp_path / "z1"
    args = ["probe", "data.format=csv", f"data.root={synth}", "data.train_annotations=train.csv",
            "data.val_annotations=val.csv", "data.num_frames=4", "data.frame_stride=2", "data.image_size=32",
            "data.num_workers=0", "model.patch_size=8", "train.batch_size=3", "train.precision=fp32",
            "log.progress=false", "log.tensorboard=false", f"model.pretrained={pt}", f"train.output_dir={out}",
            "eval.probe=attentive", "eval.attentive_epochs=1", *bad]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert bad[0].split("=")[0] in err and "\n" not in err
    assert not out.exists()


def test_attentive_folder_compares_only_its_keys_and_continues_on_more_epochs(checkpoint, tmp_path):
    """An attentive folder refused eval.knn_k changes (a key it never reads) and eval.attentive_epochs
    6 -> 8 (its train.epochs, which a linear probe may raise to continue): other probes' keys may
    change, raising the epochs continues the finished probe (the schedule of the new length from
    there on, as train.epochs), and the attentive knobs it reads are still refused."""
    base = [*ATTENTIVE, "eval.attentive_batch_size=8", "checkpoint.resume=auto"]
    run_probe(probe_cfg(tmp_path / "a", checkpoint, *base), **data())
    again = run_probe(probe_cfg(tmp_path / "a", checkpoint, *base, "eval.knn_k=[1,3]", "eval.probe_l2=[0.5]"), **data())
    assert len([r for r in again.history if "val_top1" in r]) == 4
    more = [*base, "eval.attentive_epochs=6"]
    longer = run_probe(probe_cfg(tmp_path / "a", checkpoint, *more), **data())
    assert [r["epoch"] for r in longer.history if "val_top1" in r][-2:] == [4, 5]  # two more epochs
    assert not torch.equal(longer.model.pooler.query_tokens, again.model.pooler.query_tokens)
    with pytest.raises(ckpt.CheckpointError, match="eval.attentive_queries: 1 -> 2"):
        run_probe(probe_cfg(tmp_path / "a", checkpoint, *more, "eval.attentive_queries=2"), **data())


def test_fewer_attentive_epochs_than_the_probe_trained_are_refused(checkpoint, tmp_path):
    """issue 28: eval.attentive_epochs 4 -> 2 into a finished attentive probe's folder returned the
    4-epoch probe's results with exit 0; refused naming eval.attentive_epochs."""
    base = [*ATTENTIVE, "eval.attentive_batch_size=8", "checkpoint.resume=auto"]
    run_probe(probe_cfg(tmp_path / "a", checkpoint, *base), **data())
    with pytest.raises(ckpt.CheckpointError, match="eval.attentive_epochs"):
        run_probe(probe_cfg(tmp_path / "a", checkpoint, *base, "eval.attentive_epochs=2"), **data())


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "unfinished"])
@pytest.mark.parametrize("probe", [["eval.probe=knn", "eval.knn_k=[1,3]"], ["eval.probe=linear"]], ids=["knn", "linear"])
def test_other_probes_into_an_attentive_folder_get_one_message(checkpoint, tmp_path, finished, probe):
    """eval.probe=knn into an attentive folder said "holds an attentive_probe run ..., not a probe run",
    eval.probe=linear "probe made with other settings (eval.probe: 'attentive' -> 'linear')": one
    message, naming eval.probe, for both, finished or not."""
    kill = kill_at(2)
    attentive = [*ATTENTIVE, "eval.attentive_batch_size=8", "checkpoint.every_steps=1", "checkpoint.resume=auto"]
    if finished:
        run_probe(probe_cfg(tmp_path, checkpoint, *attentive), **data())
    else:
        with pytest.raises(Killed):
            run_probe(probe_cfg(tmp_path, checkpoint, *attentive), hooks=[kill], **data())
    with pytest.raises(ckpt.CheckpointError, match=r"other settings \(eval\.probe: 'attentive' -> '"
                                                   + probe[0].split("=")[1] + "'"):
        run_probe(probe_cfg(tmp_path, checkpoint, *probe, "checkpoint.resume=auto"), **data(views=1))
