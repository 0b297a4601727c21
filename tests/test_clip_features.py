"""`tgmae.clip.features.load_clip`: the image normalization a saved CLIP was trained with, or a
one-line refusal naming its unreadable preprocessor_config.json (issue 28)."""

from __future__ import annotations

import json
import shutil

import pytest

from tgmae.clip.features import CLIP_MEAN, CLIP_STD, load_clip
from tgmae.hub import ModelUnavailableError

TINY = dict(image_size=32, patch_size=8, width=32, layers=1, heads=2, text_width=32, text_layers=1,
            text_heads=2, embed_dim=16, vocab_size=300)
TEXTS = ["a person waves a hand", "a dog runs on grass", "someone opens a door slowly"]
MEAN, STD = (0.5, 0.25, 0.125), (0.2, 0.3, 0.4)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A random tiny CLIP saved as `tgmae train-clip` saves one, its processor (processor_config.json's
    image_processor, as transformers 5 writes it) given a non-default mean/std."""
    from tgmae.study.clip.tokenizer import train_clip_tokenizer
    from tgmae.study.clip.train import ClipTrainConfig, build_clip_model, save_clip

    cfg = ClipTrainConfig(**TINY)
    tok = train_clip_tokenizer(TEXTS, cfg.vocab_size, cfg.context)
    model = build_clip_model(cfg, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    out = tmp_path_factory.mktemp("clip")
    save_clip(out, model, tok, cfg.image_size)
    for name in ("processor_config.json", "preprocessor_config.json"):
        cfg = json.loads((out / name).read_text())
        entry = cfg.get("image_processor", cfg)
        entry["image_mean"], entry["image_std"] = list(MEAN), list(STD)
        (out / name).write_text(json.dumps(cfg))
    return out


def copy_of(tiny_clip, tmp_path, layout="transformers 5"):
    """layout "hub": only preprocessor_config.json, as the public CLIPs on the hub."""
    out = tmp_path / "clip"
    shutil.copytree(tiny_clip, out)
    if layout == "hub":
        (out / "processor_config.json").unlink()
    return out


@pytest.mark.parametrize("layout", ["transformers 5", "hub"])
def test_the_saved_mean_and_std_are_used(tiny_clip, tmp_path, layout):
    clip = load_clip(str(copy_of(tiny_clip, tmp_path, layout)))
    assert clip.image_mean == pytest.approx(MEAN) and clip.image_std == pytest.approx(STD)


def test_a_folder_without_preprocessor_config_gets_clips_defaults(tiny_clip, tmp_path):
    out = copy_of(tiny_clip, tmp_path)
    (out / "preprocessor_config.json").unlink()
    (out / "processor_config.json").unlink()
    clip = load_clip(str(out))
    assert clip.image_mean == pytest.approx(CLIP_MEAN) and clip.image_std == pytest.approx(CLIP_STD)


@pytest.mark.parametrize("layout", ["transformers 5", "hub"])
@pytest.mark.parametrize("damage", ["truncated", "not json", "no mean", "no std", "two channels",
                                    "text", "zero std", "a list"])
def test_an_unreadable_preprocessor_config_is_one_error_naming_it(tiny_clip, tmp_path, damage, layout):
    """issue 28: a damaged preprocessor_config.json (or one without image_mean/image_std) fell
    back to CLIP's default mean/std without a word: the TGM similarities then used another
    normalization than the model was trained with."""
    out = copy_of(tiny_clip, tmp_path, layout)
    file = out / ("preprocessor_config.json" if layout == "hub" else "processor_config.json")
    text = file.read_text()
    cfg = json.loads(text)
    entry = cfg.get("image_processor", cfg)
    if damage == "truncated":
        file.write_text(text[: len(text) // 2])
    elif damage == "not json":
        file.write_text("garbage {")
    elif damage == "a list":
        file.write_text("[1, 2]")
    else:
        if damage == "no mean":
            del entry["image_mean"]
        elif damage == "no std":
            del entry["image_std"]
        elif damage == "two channels":
            entry["image_mean"] = [0.5, 0.5]
        elif damage == "text":
            entry["image_std"] = "wide"
        elif damage == "zero std":
            entry["image_std"] = [0.2, 0.0, 0.3]
        file.write_text(json.dumps(cfg))
    with pytest.raises(ModelUnavailableError, match="masking.clip_model") as e:
        load_clip(str(out), setting="masking.clip_model")
    assert str(file) in str(e.value) and len(str(e.value).splitlines()) == 1


def test_an_unreadable_preprocessor_config_is_exit_2_on_the_command_line(tiny_clip, tmp_path, capsys):
    from tgmae.cli import main
    from tgmae.data.synthetic import generate_synthetic_dataset

    data = tmp_path / "data"
    generate_synthetic_dataset(data, num_videos=2, frames=8, size=64, seed=1, val_fraction=0.5)
    out = copy_of(tiny_clip, tmp_path, "hub")
    (out / "preprocessor_config.json").write_text("{")
    capsys.readouterr()
    code = main(["masks", "--root", str(data), str(data / "annotations.csv"), "--format", "csv",
                 "--captions", str(data / "captions.jsonl"), "--clip", str(out), "--out", str(tmp_path / "c"),
                 "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "preprocessor_config.json" in err[0] and "--clip" in err[0], err
    assert not (tmp_path / "c" / "maps").exists()
