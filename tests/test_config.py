"""Config: precedence, validation messages, YAML presets in configs/ all load."""

from __future__ import annotations

from pathlib import Path

import pytest

from tgmae.config import ConfigError, RunConfig, load_config, parse_override, save_config, to_dict

CONFIGS = sorted((Path(__file__).parent.parent / "configs").glob("*.yaml"))


def test_defaults_and_token_grid():
    cfg = RunConfig()
    assert cfg.masking.ratio == 0.9 and cfg.optim.betas == (0.9, 0.95)
    assert cfg.token_grid == (8, 14, 14)


def test_precedence_defaults_yaml_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  base_lr: 3.0e-4\n  weight_decay: 0.1\nmasking:\n  ratio: 0.75\n")
    cfg = load_config(f, ["optim.base_lr=1e-3", "data.crop_scales=[1.0, 0.5]"])
    assert cfg.optim.base_lr == 1e-3  # override beats YAML
    assert cfg.optim.weight_decay == 0.1  # YAML beats default
    assert cfg.masking.ratio == 0.75
    assert cfg.optim.min_lr == 1e-5  # default kept
    assert cfg.data.crop_scales == (1.0, 0.5)


def test_roundtrip_through_yaml(tmp_path):
    cfg = load_config(None, ["masking.name=random", "train.max_steps=5"])
    save_config(cfg, tmp_path / "r.yaml")
    again = load_config(tmp_path / "r.yaml")
    assert to_dict(again) == to_dict(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("masking.ratio=1.2", "masking.ratio=1.2: must be strictly between 0 and 1"),
        ("masking.ratio=0", "masking.ratio=0.0: must be strictly between 0 and 1"),
        ("data.num_frames=15", "data.num_frames=15 is not divisible by model.tubelet_size=2"),
        ("data.image_size=100", "data.image_size=100 is not divisible by model.patch_size=16"),
        ("optim.lrr=1", "unknown config key optim.lrr"),
        ("nosection.x=1", "unknown config key nosection"),
        ("train.batch_size=abc", "train.batch_size='abc': expected an integer"),
        ("train.batch_size=2.5", "train.batch_size=2.5: expected an integer"),
        ("log.progress=maybe", "log.progress='maybe': expected true or false"),
        ("train.precision=fp8", "train.precision='fp8'"),
        ("data.format=kinetics", "data.format='kinetics'"),
        ("optim.betas=[0.9]", "optim.betas=[0.9]: expected 2 values"),
        ("contrastive.objective=mae+contrastive", "needs captions.file"),
        ("masking.name=tgm", "needs captions.file"),
    ],
)
def test_invalid_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_a_separate_text_model_needs_cached_tgm_maps():
    """Online TGM scores the samples' caption embeddings against CLIP patches: with captions.text_model
    those would be the text model's, so only the cached maps (found by the caption's text) are allowed."""
    base = ["masking.name=tgm", "captions.file=c.jsonl", "captions.text_model=words-dir"]
    with pytest.raises(ConfigError, match="captions.text_model='words-dir' with online TGM.*masking.cache_dir"):
        load_config(None, base)
    assert load_config(None, base + ["masking.cache_dir=maps"]).captions.target_model == "words-dir"


def test_bad_override_and_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="expected section.key=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_loads(path):
    if path.name.startswith("study_"):
        import yaml

        from tgmae.config import from_dict
        from tgmae.study.run import StudyConfig

        study = from_dict(StudyConfig, yaml.safe_load(path.read_text()), prefix="study")
        assert study.maskings and study.objectives
        return
    cfg = load_config(path)
    assert isinstance(cfg, RunConfig)


def test_overrides_do_not_leak_into_the_base_dict():
    """A recipe dict passed as `base` was written to by the overrides of one load (a nested section
    shared by reference), so the next run built from the same recipe silently inherited them."""
    recipe = {"model": {"drop_path": 0.1}}
    assert load_config(None, ["model.tubelet_size=4"], base=recipe).model.tubelet_size == 4
    assert recipe == {"model": {"drop_path": 0.1}}
    assert load_config(None, [], base=recipe).model.tubelet_size == 2
