"""Config: precedence, validation messages, YAML presets in configs/ all load."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from tgmae.config import ConfigError, RunConfig, load_config, load_config_and_keys, parse_override, save_config, to_dict

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
    "override, key",
    [
        ("masking.ratio=1.2", "masking.ratio=1.2"),
        ("masking.ratio=0", "masking.ratio=0.0"),
        ("data.num_frames=15", "data.num_frames=15"),
        ("data.image_size=100", "data.image_size=100"),
        ("optim.lrr=1", "optim.lrr"),
        ("nosection.x=1", "nosection"),
        ("train.batch_size=abc", "train.batch_size='abc'"),
        ("train.batch_size=2.5", "train.batch_size=2.5"),
        ("log.progress=maybe", "log.progress='maybe'"),
        ("train.precision=fp8", "train.precision='fp8'"),
        ("data.format=kinetics", "data.format='kinetics'"),
        ("optim.betas=[0.9]", "optim.betas=[0.9]"),
        ("contrastive.objective=mae+contrastive", "captions.file"),
        ("masking.name=tgm", "captions.file"),
        ("masking.name=tgm captions.file=c.jsonl", "masking.cache_dir"),
        ("contrastive.weight=-1", "contrastive.weight=-1.0"),
        ("contrastive.view_ratio=0", "contrastive.view_ratio=0.0"),
        ("captions.draw=all", "captions.draw='all'"),
        ("train.compile=true", "train.compile=true"),
        ("train.compile=everything", "train.compile='everything'"),
        ("contrastive.text_norm=true", "contrastive.text_norm"),  # pruned: it changed nothing
        ("masking.decoder_mask=random", "masking.decoder_ratio"),  # re-trial 16A: did nothing, silently
    ],
)
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, override.split())
    assert key in str(e.value)


@pytest.mark.parametrize("override", [
    "optim.min_lr=-1", "optim.warmup_lr=-1e-6", "optim.weight_decay=-0.05", "optim.betas=[0.9,1.5]",
    "model.decoder_depth=0", "model.decoder_depth=-1", "model.decoder_dim=0", "train.seed=-1",
    "data.max_load_retries=-1", "data.split=0", "masking.dense_size=-1", "eval.num_classes=0",
    "eval.head_dropout=1", "eval.head_dropout=-0.1", "eval.head_init_scale=-1",
])
def test_values_that_would_train_wrongly_or_fail_later_are_refused_naming_the_key(override):
    """Re-trial 24B S2 / T1 and a sweep of every numeric key at -1 and 0: a negative min_lr took the
    cosine below zero (gradient ascent, the loss rose 10x, no word), a negative weight decay grew
    the weights, decoder_depth=0 ended in VideoMAEArch's traceback, a negative seed in numpy's."""
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"^{re.escape(key)}=") as e:
        load_config(None, [override])
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("key", ["base_lr", "lr", "lr_floor", "min_lr", "warmup_lr", "warmup_epochs",
                                 "weight_decay", "clip_grad", "layer_decay"])
@pytest.mark.parametrize("value", ["nan", ".nan", "inf", ".inf", "-.inf"])
def test_optim_floats_refuse_nan_and_inf(key, value):
    """nan passed `base_lr <= 0` and reached AdamW's "Invalid learning rate: nan" traceback; inf
    trained into a non-finite loss. Every float optim key is refused at validation, naming it."""
    with pytest.raises(ConfigError, match=rf"^optim\.{key}=") as e:
        load_config(None, [f"optim.{key}={value}"])
    assert "finite" in str(e.value) and "\n" not in str(e.value)


def test_optim_betas_refuse_nan():
    with pytest.raises(ConfigError, match=r"^optim\.betas="):
        load_config(None, ["optim.betas=[.nan, 0.95]"])


def test_compile_takes_its_modes_and_yaml_off():
    """`off` is YAML 1.1's false, so false means off; `true` (once an alias of blocks) names no mode."""
    assert load_config(None, ["train.compile=off"]).train.compile == "off"
    assert load_config(None, ["train.compile=blocks"]).train.compile == "blocks"
    assert load_config(None, ["train.compile=model"]).train.compile == "model"
    with pytest.raises(ConfigError, match="off|blocks|model"):
        load_config(None, ["train.compile=true"])


def test_a_separate_text_model_needs_cached_tgm_maps():
    """Online TGM scores the samples' caption embeddings against CLIP patches: with captions.text_model
    those would be the text model's, so only the cached maps (found by the caption's text) are allowed."""
    base = ["masking.name=tgm", "captions.file=c.jsonl", "captions.text_model=words-dir"]
    with pytest.raises(ConfigError, match="captions.text_model='words-dir'.*masking.cache_dir"):
        load_config(None, base)
    assert load_config(None, base + ["masking.cache_dir=maps"]).captions.target_model == "words-dir"


def test_online_tgm_needs_captions_clip_model():
    """CLIP in the loop scores the caption's text embedding: without captions.clip_model the samples have
    none, which once surfaced as a traceback from a DataLoader worker; refused at validation instead."""
    base = ["masking.name=tgm", "captions.file=c.jsonl", "masking.clip_model=clip"]
    with pytest.raises(ConfigError, match=r"^captions\.clip_model .*captions\.clip_model=clip") as e:
        load_config(None, base)
    assert "\n" not in str(e.value)
    assert load_config(None, base + ["captions.clip_model=clip"]).captions.clip_model == "clip"
    assert load_config(None, base + ["masking.cache_dir=maps"]).masking.cache_dir == "maps"


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
    if path.name == "study_phases.yaml":  # the study's maskings and phase defaults (tests/test_study_run.py)
        from tgmae.study.cells import load_phases

        assert load_phases(path)["maskings"]
        return
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


@dataclass
class _Inner:
    a: int = 0
    b: int = 0


@dataclass
class _Middle:  # a section of sections, for the nested merge
    inner: _Inner = field(default_factory=_Inner)
    c: int = 0


@dataclass
class _Outer:
    middle: _Middle = field(default_factory=_Middle)


def test_a_section_override_sets_its_keys_and_keeps_the_sections_others(tmp_path):
    """Re-trial 26B S1: `optim={warmup_epochs: 1}` replaced the whole merged section, so the -c file's
    and the recipe's other optim keys fell back to the defaults, silently. A section's mapping sets
    each key in it as `section.key=value` would (deep, nested too); the keys are the user's (`given`)."""
    f = tmp_path / "c.yaml"
    f.write_text("model:\n  preset: micro\ndata:\n  root: /videos\n  num_frames: 8\noptim:\n  base_lr: 0.5\n")
    recipe = {"optim": {"base_lr": 0.1, "lr_floor": 1.0, "weight_decay": 0.0}, "model": {"drop_path": 0.2}}
    cfg, given = load_config_and_keys(f, ["optim={warmup_epochs: 1}", "model={drop_path: 0.1}",
                                          "data={num_frames: 4}"], base=recipe)
    assert (cfg.optim.warmup_epochs, cfg.model.drop_path, cfg.data.num_frames) == (1.0, 0.1, 4)
    # the file's keys over the recipe's, the recipe's where the file has none
    assert (cfg.optim.base_lr, cfg.optim.lr_floor, cfg.optim.weight_decay) == (0.5, 1.0, 0.0)
    assert (cfg.model.preset, cfg.data.root) == ("micro", "/videos")
    assert {"optim.warmup_epochs", "model.drop_path", "data.num_frames", "data.root"} <= given
    assert "optim.lr_floor" not in given  # the recipe's, not the user's
    assert load_config(None, ["optim={warmup_epochs: 1}"], base=recipe) == load_config(
        None, ["optim.warmup_epochs=1"], base=recipe)
    # a section given empty (a YAML `optim:` with its keys commented out, `optim={}`) sets no key
    f.write_text("optim:\n")
    assert load_config(f, ["model={}"], base=recipe) == load_config(None, [], base=recipe)

    cfg, given = load_config_and_keys(None, ["middle={inner: {a: 2}}"], cls=_Outer,
                                      base={"middle": {"inner": {"b": 3}, "c": 4}})
    assert cfg == _Outer(_Middle(_Inner(a=2, b=3), c=4)) and given == {"middle.inner.a"}


JOINT = ["contrastive.objective=mae+contrastive", "captions.file=c.jsonl", "data.num_frames=4",
         "data.image_size=48"]  # token grid (2, 3, 3): 18 tokens


@pytest.mark.parametrize("name", ["random", "tube"])
def test_view_ratio_is_checked_against_the_generators_mask(name):
    """contrastive.view_ratio is the masked fraction of the InfoNCE view: the config refuses exactly
    the values whose view masks more tokens than the MAE mask (which crashed at step 1 before),
    naming both keys, with the count of the mask the generator really makes."""
    import torch

    from tgmae.masking import MaskContext, build_mask_generator

    gen = build_mask_generator(load_config(None, JOINT + [f"masking.name={name}", "masking.ratio=0.75"]).masking)
    masked = int(gen(MaskContext(grid=(2, 3, 3)), torch.Generator().manual_seed(0)).sum())  # 14 of 18
    for view_ratio in (0.0, 0.5, 0.75, 0.8, 0.83, 0.9):
        overrides = JOINT + [f"masking.name={name}", "masking.ratio=0.75", f"contrastive.view_ratio={view_ratio}"]
        if round(view_ratio * 18) <= masked:
            assert load_config(None, overrides).contrastive.view_ratio == view_ratio
        else:
            with pytest.raises(ConfigError, match=r"contrastive.view_ratio=.*masking.ratio=0.75"):
                load_config(None, overrides)


def test_every_masking_name_has_a_generator_with_the_contracts_count():
    """The config's masking names are the contract's MASKED_COUNT keys; each generator's own
    `masked_count` is the contract's entry under its name, and the masks it makes have that count."""
    import torch

    from tgmae.config import MASKING_NAMES
    from tgmae.mask_contract import MASKED_COUNT, MaskContext
    from tgmae.masking import CachedTGMMask, MotionGuidedMask, OnlineTGMMask, RandomMask, TubeMask

    classes = {"random": [RandomMask], "tube": [TubeMask], "tgm": [CachedTGMMask, OnlineTGMMask],
               "mgm": [MotionGuidedMask]}
    assert set(MASKING_NAMES) == set(classes) == set(MASKED_COUNT)
    for name, kinds in classes.items():
        assert all(k.masked_count is MASKED_COUNT[name] for k in kinds), name
    grid, frames = (2, 3, 3), torch.rand(3, 4, 48, 48)
    for gen in (RandomMask(0.75), TubeMask(0.75), MotionGuidedMask(0.75, "framediff")):
        mask = gen(MaskContext(grid=grid, frames=frames), torch.Generator().manual_seed(0))
        assert int(mask.sum()) == gen.masked_count(grid, 0.75)


def test_view_ratio_needs_an_infonce():
    """objective=mae computes InfoNCE only as a monitor (monitor_nce with captions): there the view
    feeds the monitor; otherwise view_ratio would do nothing, so it is refused, naming the key."""
    mae = ["data.num_frames=4", "data.image_size=48"]
    with pytest.raises(ConfigError, match="contrastive.view_ratio=0.0 is unused"):
        load_config(None, mae + ["contrastive.view_ratio=0", "contrastive.monitor_nce=true"])  # no captions
    cfg = load_config(None, mae + ["contrastive.view_ratio=0", "contrastive.monitor_nce=true", "captions.file=c.jsonl"])
    assert cfg.contrastive.view_ratio == 0.0


def test_settings_that_would_do_nothing_are_refused_naming_the_key():
    """Re-trial 19B (M4): masking.decoder_ratio under a contrastive-only objective (no decoder) and
    masking.select=bottom for a masking that ranks no patch by a caption were accepted silently."""
    with pytest.raises(ConfigError, match=r"masking.decoder_ratio=0.5 is unused"):
        load_config(None, ["masking.decoder_ratio=0.5", "contrastive.objective=contrastive", "captions.file=c.jsonl"])
    with pytest.raises(ConfigError, match=r"masking.select=bottom applies to TGM only \(masking.name=tube\)"):
        load_config(None, ["masking.select=bottom"])
    assert load_config(None, ["masking.name=tgm", "masking.select=bottom", "masking.cache_dir=c",
                              "captions.file=c.jsonl"]).masking.select == "bottom"
    assert load_config(None, ["masking.decoder_ratio=0.5"]).masking.decoder_ratio == 0.5


def test_yaml_with_a_key_twice_is_refused_naming_key_file_and_lines(tmp_path):
    # issue 28: two `data:` blocks kept the second one silently
    f = tmp_path / "twice.yaml"
    f.write_text("data:\n  num_frames: 8\noptim:\n  base_lr: 1.0e-3\ndata:\n  num_frames: 16\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert "'data'" in msg and str(f) in msg and "line 5" in msg and "line 1" in msg
    nested = tmp_path / "nested.yaml"
    nested.write_text("optim:\n  base_lr: 1.0e-3\n  base_lr: 2.0e-3\n")
    with pytest.raises(ConfigError, match=r"'optim.base_lr'.*line 2 and line 3"):
        load_config(nested)


def test_a_retired_key_at_its_inert_value_still_loads():
    """Checkpoints from before contrastive.text_norm was removed hold `text_norm: false`: they
    load; `true` described a model this version cannot build and is refused naming the key."""
    from tgmae.config import RunConfig, from_dict, to_dict

    old = to_dict(RunConfig())
    old["contrastive"]["text_norm"] = False
    assert from_dict(RunConfig, old) == RunConfig()
    old["contrastive"]["text_norm"] = True
    with pytest.raises(ConfigError, match="contrastive.text_norm=True"):
        from_dict(RunConfig, old)


def test_an_empty_train_output_dir_is_refused(tmp_path, monkeypatch, capsys):
    """Issue 28: `train.output_dir=` (an unset $OUT) ran in the current folder and replaced the
    user's config.yaml there; the sanity harness's explicit "." stays a valid folder."""
    from tgmae.cli import main as cli_main

    for value in ("", " "):
        with pytest.raises(ConfigError, match="train.output_dir"):
            load_config(None, [f"train.output_dir={value}"])
    assert load_config(None, ["train.output_dir=."]).train.output_dir == "."
    monkeypatch.chdir(tmp_path)
    mine = "# my settings\ntrain:\n  epochs: 2  # two passes\n"
    (tmp_path / "config.yaml").write_text(mine)
    assert cli_main(["pretrain", "-c", "config.yaml", "train.output_dir="]) == 2
    assert "train.output_dir" in capsys.readouterr().err
    assert (tmp_path / "config.yaml").read_text() == mine


def test_only_what_save_config_writes_is_a_saved_config(tmp_path):
    """Issue 28: a user's config.yaml without comments, in the layout yaml.safe_dump writes, passed
    for a run's saved config (guessed by YAML shape) and was replaced; save_config marks its file."""
    from tgmae.config import is_saved_config

    cfg = load_config(None, ["masking.name=random"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert is_saved_config(tmp_path / "saved.yaml")
    assert to_dict(load_config(tmp_path / "saved.yaml")) == to_dict(cfg)
    (tmp_path / "mine.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))  # a dump, no marker
    (tmp_path / "small.yaml").write_text("train:\n  epochs: 2\n")
    assert not is_saved_config(tmp_path / "mine.yaml") and not is_saved_config(tmp_path / "small.yaml")
    assert not is_saved_config(tmp_path / "missing.yaml")


@pytest.mark.parametrize("text, where, problem", [
    ("data:\n\tnum_frames: 4\n", "line 2, column 1", "cannot start any token"),  # tab-indented
    ("data: [1,2\n", "line 2, column 1", "expected ',' or ']'"),  # unclosed list
    ("data:\n  num_frames: 4\n---\ndata:\n  num_frames: 8\n", "line 3, column 1", "but found another document"),
])
def test_invalid_yaml_is_one_line_naming_the_file_line_and_column(tmp_path, text, where, problem):
    """Issue 28 (re-trial 11, M2): PyYAML's multi-line message (context, problem, a quoted line and
    a caret) followed "not valid YAML (": the CLI's one line was several. Now one line: the file,
    line and column (1-based) and PyYAML's problem."""
    path = tmp_path / "y.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and where in msg and problem in msg


def test_a_config_file_that_is_not_utf8_is_one_line_naming_its_line(tmp_path):
    """Re-trial 24A T2: every user's text file says file:line and the byte (as
    `tgmae.textfile` words it), a YAML config too (it gave a byte offset only). A BOM is fine."""
    from tgmae.errors import UserError

    path = tmp_path / "y.yaml"
    path.write_bytes(b"data:\n  num_frames: 4\n# caf\xe9 run\n")
    with pytest.raises(UserError) as e:
        load_config(path)
    assert str(e.value) == f"{path}:3: not UTF-8 (byte 0xe9 at column 6); save it as UTF-8"
    path.write_bytes(b"\xef\xbb\xbfdata:\n  num_frames: 4\n# caf\xc3\xa9 run\n")
    assert load_config(path).data.num_frames == 4


def test_an_override_that_is_not_valid_yaml_is_one_line_naming_it():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["data.crop_scales=[1.0,"])
    msg = str(e.value)
    assert "\n" not in msg and "data.crop_scales=[1.0," in msg and "column" in msg


def test_mixing_that_would_do_nothing_is_refused_naming_the_keys():
    """Re-trial 20B (S1, S2): a negative mixup / cutmix alpha turned mixing off though the config
    said 0.8; a batch of one video per process mixed each clip with itself (mix_lambda logged)."""
    for override, key in (("eval.mixup=-1", "eval.mixup=-1"), ("eval.cutmix=-2", "eval.cutmix=-2")):
        with pytest.raises(ConfigError, match=key):
            load_config(None, [override])
    with pytest.raises(ConfigError, match=r"eval.mixup=0.8 .*train.batch_size=1"):
        load_config(None, ["eval.mixup=0.8", "train.batch_size=1"])
    assert load_config(None, ["eval.mixup=0.8", "eval.cutmix=1.0", "train.batch_size=2"]).eval.cutmix == 1.0
    assert load_config(None, ["train.batch_size=1"]).train.batch_size == 1  # no mixing: any batch


@pytest.mark.parametrize("text", ["0123", "2024_12", "0x10", "1:30", "1.50", "123", ".inf"])
def test_an_override_of_a_string_key_keeps_the_number_text_as_typed(text):
    """Re-trial 31A S2: YAML 1.1 read `train.output_dir=0123` as the octal 83 and the run went into
    `83/`; a string key (plain or Optional) keeps the text as typed, quoted or not, nested or not."""
    cfg = load_config(None, [f"train.output_dir={text}", f"data.cache_dir='{text}'",
                             f"captions={{file: {text}}}"])
    assert (cfg.train.output_dir, cfg.data.cache_dir, cfg.captions.file) == (text, text, text)
    assert cfg.optim.lr is None and load_config(None, ["optim.lr=null"]).optim.lr is None  # null stays null
    typed = load_config(None, ["train.epochs=0x10", "optim.lr=1e-4", "data.val_annotations="])
    assert (typed.train.epochs, typed.optim.lr, typed.data.val_annotations) == (16, 1e-4, "")
    assert type(typed.train.epochs) is int and type(typed.optim.lr) is float  # plain values, dumpable
    yaml.safe_dump(to_dict(typed))


@pytest.mark.parametrize("text, number", [("0123", "83"), ("2024_12", "202412"), ("0x10", "16"), ("1.50", "1.5")])
def test_a_number_in_a_file_that_changes_a_string_keys_text_is_refused_naming_key_and_line(tmp_path, text, number):
    """Re-trial 31A S2: in a -c file the text is what was meant; a number whose `str` is not its text
    is refused naming the key, file and line, saying to quote it. A number that reads back as its
    own text (`123`) loads; numbers for number keys are unchanged."""
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  epochs: 0x2\n  output_dir: {text}\n")
    with pytest.raises(ConfigError, match=rf"^train\.output_dir: {re.escape(str(path))}, line 3: YAML reads "
                                          rf"{re.escape(text)} as the number {re.escape(number)}.*write it in quotes"):
        load_config(path)
    path.write_text(f"train:\n  epochs: 0x2\n  output_dir: '{text}'\ndata:\n  cache_dir: 123\n")
    cfg = load_config(path)
    assert (cfg.train.epochs, cfg.train.output_dir, cfg.data.cache_dir) == (2, text, "123")
    path.write_text("train:\n  output_dir: 0123\n")  # an override of the key replaces the file's text
    assert load_config(path, ["train.output_dir=runs/a"]).train.output_dir == "runs/a"


def test_a_yaml_bool_for_a_string_key_is_refused_saying_to_quote_it():
    with pytest.raises(ConfigError, match=r"train\.output_dir=True: expected a string .*write it in quotes"):
        load_config(None, ["train.output_dir=yes"])


def test_an_overrides_number_is_written_by_yaml_as_the_number_it_is():
    """The numbers `parse_override` / `read_yaml` return keep their text for string keys
    (re-trial 31A S2); one that reaches a YAML writer without a typed key (a study's phase
    overrides, as `tgmae report`'s cells compare them) is written as its number, not refused."""
    import yaml

    from tgmae.config import parse_override

    values = {k: parse_override(f"x={k}")[1] for k in ("0.75", "3", "0123")}
    assert yaml.safe_load(yaml.safe_dump(values)) == {"0.75": 0.75, "3": 3, "0123": 83}


def test_a_date_typed_for_a_text_key_is_the_text_written(tmp_path):
    """Re-trial 33A M1: YAML reads `2024-01-05` as a date, and `train.output_dir=2024-01-05` was
    refused as "datetime.date(2024, 1, 5): expected a string". No setting is a date: a timestamp is
    the text written, in an override and in a -c file; a key of another type still names it."""
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("train:\n  output_dir: 2024-01-05 10:00:00\n")
    assert load_config(None, ["train.output_dir=2024-01-05"]).train.output_dir == "2024-01-05"
    assert load_config(cfg_file, []).train.output_dir == "2024-01-05 10:00:00"
    with pytest.raises(ConfigError, match=r"train.epochs='2024-01-05': expected an integer"):
        load_config(None, ["train.epochs=2024-01-05"])
