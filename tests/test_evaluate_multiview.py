"""`tgmae evaluate` (`tgmae.evaluate.multiview`): the classifier's architecture comes from its weights
(re-trial 23B m1: `tgmae evaluate model.pretrained=EXPORT` asked for `model.preset` though the
export's config.json holds `tgmae_arch`, and a run folder its config.yaml)."""

from __future__ import annotations

import pytest
import torch

from tgmae.config import ConfigError, load_config, load_config_and_keys, save_config
from tgmae.evaluate.multiview import load_tested_classifier
from tgmae.models import VideoMAEArch
from tgmae.models.classifier import VideoClassifier
from tgmae.weights.classifier import save_classifier

# the micro preset's width, depth and heads, at patch 8 (not the config's default 16)
MICRO = VideoMAEArch(embed_dim=64, depth=2, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4, image_size=16)


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory):
    """A finetune run folder (classifier.safetensors + config.yaml) of a micro classifier."""
    run = tmp_path_factory.mktemp("ft")
    torch.manual_seed(0)
    save_classifier(VideoClassifier(MICRO, 3).eval(), run / "classifier.safetensors", ["a", "b", "c"])
    save_config(load_config(None, ["model.preset=micro", "model.patch_size=8", "data.num_frames=4",
                                   "data.image_size=16"]), run / "config.yaml")
    return run


@pytest.fixture(scope="module")
def exported(classifier_run, tmp_path_factory):
    from tgmae.weights.export_hf import export_hf

    out = tmp_path_factory.mktemp("hf") / "hf"
    export_hf(classifier_run, out, classifier=True)
    return out


def _tested(pretrained, *overrides: str):
    overrides = (f"model.pretrained={pretrained}", "train.device=cpu", *overrides)
    cfg, given = load_config_and_keys(None, list(overrides))
    return load_tested_classifier(cfg, given=given)


@pytest.mark.parametrize("source", ["export", "run"])
def test_the_architecture_comes_from_the_weights_unless_set(classifier_run, exported, source):
    pretrained = exported if source == "export" else classifier_run
    classifier, cfg = _tested(pretrained)
    assert (cfg.model.preset, cfg.model.patch_size, cfg.model.tubelet_size) == ("micro", 8, 2)
    assert (classifier.arch.embed_dim, classifier.arch.patch_size) == (64, 8)
    # set to the weights' own values: accepted
    assert _tested(pretrained, "model.preset=micro", "model.patch_size=8")[1].model.preset == "micro"


@pytest.mark.parametrize("key, value", [("model.preset", "tiny"), ("model.patch_size", "16"),
                                        ("model.num_heads", "4")])
def test_a_key_set_against_the_weights_is_refused_naming_it(exported, key, value):
    with pytest.raises(ConfigError) as e:
        _tested(exported, f"{key}={value}")
    assert str(e.value).startswith(f"{key}=") and "\n" not in str(e.value)


def test_a_refused_evaluate_leaves_no_new_output_folder(classifier_run, tmp_path, capsys):
    """Re-trial 26A L1: `tgmae evaluate` refused for any reason (here a model key set against the
    weights, and a pretraining checkpoint, not a classifier) left the new train.output_dir and its
    new parents as empty folders; the other commands leave nothing."""
    from tgmae.cli import main as cli_main
    from tgmae.models import VideoMAEPretrainer
    from tgmae.weights.pretraining import save_pretraining_model

    pretrained = save_pretraining_model(VideoMAEPretrainer(MICRO), tmp_path / "pt.safetensors")
    for refused in ([f"model.pretrained={classifier_run}", "model.patch_size=16"], [f"model.pretrained={pretrained}"]):
        assert cli_main(["evaluate", *refused, f"train.output_dir={tmp_path / 'new' / 'a' / 'b'}"]) == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
        assert not (tmp_path / "new").exists(), refused
