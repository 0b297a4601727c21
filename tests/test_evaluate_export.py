"""`tgmae export-hf`: transformers loads the exported directories offline and computes what our
models compute (tiny random configs; q/v biases, eps, pooling and input order all exercised)."""

from __future__ import annotations

import json

import pytest
import torch

from tgmae.evaluate.classifier import VideoClassifier, build_classifier, load_classifier, save_classifier
from tgmae.evaluate.export_hf import TOLERANCE, export_hf, main
from tgmae.evaluate.sources import load_encoder_source
from tgmae.models import VideoMAEArch, VideoMAEPretrainer, save_pretraining_model

ARCH = VideoMAEArch(embed_dim=32, depth=2, num_heads=2, patch_size=8, tubelet_size=2, num_frames=4,
                    image_size=16, decoder_dim=16, decoder_depth=1, decoder_heads=1)


def randomize_1d(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial biases, norm weights and q/v biases, so any mapping slip shows in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            if p.ndim == 1:
                p.add_(0.2 * torch.randn(p.shape, generator=g))


def clip(seed: int = 1, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 4, 16, 16, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    torch.manual_seed(0)
    model = VideoMAEPretrainer(ARCH)
    randomize_1d(model)
    return model.eval(), save_pretraining_model(model, tmp_path_factory.mktemp("pt") / "pt.safetensors")


def test_encoder_export_matches_our_features(pretrained, tmp_path):
    from transformers import VideoMAEModel

    model, path = pretrained
    res = export_hf(path, tmp_path / "hf")
    assert res.hf_class == "VideoMAEModel" and res.max_abs_diff <= TOLERANCE
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["use_mean_pooling"] is False and config["layer_norm_eps"] == 1e-6 and config["qv_bias"]
    hf = VideoMAEModel.from_pretrained(tmp_path / "hf").eval()
    video = clip()
    with torch.no_grad():
        ours = model.encoder(video)
        theirs = hf(pixel_values=video.permute(0, 2, 1, 3, 4)).last_hidden_state  # HF: [B, T, C, H, W]
    assert float((ours - theirs).abs().max()) <= TOLERANCE
    # and back: the HF directory is a source of the same encoder weights
    src = load_encoder_source(tmp_path / "hf")
    for k, v in model.encoder.state_dict().items():
        assert torch.allclose(src.encoder[k], v), k


def test_classifier_export_matches_our_logits_and_labels(pretrained, tmp_path):
    from transformers import VideoMAEForVideoClassification, VideoMAEModel

    _, path = pretrained
    torch.manual_seed(1)
    clf = build_classifier(path, 4, num_frames=4, image_size=16)
    with torch.no_grad():  # a trained-looking head: unit-scale weights, not the 0.001 init
        clf.head.weight.normal_()
    randomize_1d(clf, seed=2)
    names = ["push", "pull", "lift", "drop"]
    saved = save_classifier(clf.eval(), tmp_path / "classifier.safetensors", names)
    res = export_hf(saved, tmp_path / "hf_cls", classifier=True)
    assert res.hf_class == "VideoMAEForVideoClassification" and res.max_abs_diff <= TOLERANCE
    hf = VideoMAEForVideoClassification.from_pretrained(tmp_path / "hf_cls").eval()
    assert hf.config.id2label == {0: "push", 1: "pull", 2: "lift", 3: "drop"}
    assert hf.config.use_mean_pooling is True
    video = clip(3)
    with torch.no_grad():
        ours = clf(video)
        theirs = hf(pixel_values=video.permute(0, 2, 1, 3, 4)).logits
    assert float(ours.abs().max()) > 0.1  # the comparison is not between near-zero numbers
    assert float((ours - theirs).abs().max()) <= TOLERANCE
    # the exported classifier reloads as ours (HF classification directory as a source)
    back = load_classifier(tmp_path / "hf_cls")
    assert back.class_names == names
    with torch.no_grad():
        assert float((back(video) - ours).abs().max()) <= TOLERANCE
    # its encoder alone (no final norm: HF use_mean_pooling=True, layernorm None)
    export_hf(saved, tmp_path / "hf_enc")
    base = VideoMAEModel.from_pretrained(tmp_path / "hf_enc").eval()
    assert base.layernorm is None
    with torch.no_grad():
        diff = (base(pixel_values=video.permute(0, 2, 1, 3, 4)).last_hidden_state - clf.encoder(video)).abs().max()
    assert float(diff) <= TOLERANCE


def test_export_cli(pretrained, tmp_path, capsys):
    _, path = pretrained
    assert main([str(path), str(tmp_path / "out")]) == 0
    assert "VideoMAEModel" in capsys.readouterr().out
    assert (tmp_path / "out" / "config.json").is_file()
    with pytest.raises(SystemExit) as exit_info:  # a pretraining checkpoint has no classifier head
        main([str(path), str(tmp_path / "bad"), "--classifier"])
    assert exit_info.value.code == 2
    assert "not a finetuned classifier" in capsys.readouterr().err


def test_classifier_with_foreign_fc_norm_eps_is_refused():
    from tgmae.evaluate.export_hf import hf_model

    with pytest.raises(ValueError, match="eps"):
        hf_model(VideoClassifier(VideoMAEArch(**{**ARCH.__dict__, "encoder_norm": False}), 3, fc_norm_eps=1e-6))
