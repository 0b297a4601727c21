"""eval.probe and the k-NN / attentive-probe keys (tgmae.evaluate.knn / attentive): defaults,
overrides, and errors that name the key."""

import pytest

from tgmae.config import ConfigError, RunConfig, load_config, to_dict


def test_defaults_are_dino_and_vjepa_values():
    e = RunConfig().eval
    assert e.probe == "linear"
    assert e.knn_k == (10, 20, 100, 200) and e.knn_temperature == 0.07
    assert (e.attentive_lr, e.attentive_final_lr, e.attentive_weight_decay, e.attentive_epochs) == (1e-3, 0.0, 0.01, 20)
    assert e.attentive_queries == 1 and e.attentive_heads is None and e.attentive_batch_size is None


def test_overrides_parse_and_round_trip(tmp_path):
    cfg = load_config(None, ["eval.probe=knn", "eval.knn_k=[5, 50]", "eval.knn_temperature=0.1",
                             "eval.attentive_batch_size=32", "eval.attentive_heads=4"])
    assert cfg.eval.probe == "knn" and cfg.eval.knn_k == (5, 50) and cfg.eval.knn_temperature == 0.1
    assert cfg.eval.attentive_batch_size == 32 and cfg.eval.attentive_heads == 4
    again = load_config(None, [f"eval.knn_k={list(to_dict(cfg)['eval']['knn_k'])}"])
    assert again.eval.knn_k == (5, 50)


@pytest.mark.parametrize("override, key", [
    ("eval.probe=mlp", "eval.probe"),
    ("eval.knn_k=[]", "eval.knn_k"),
    ("eval.knn_k=[0, 10]", "eval.knn_k"),
    ("eval.knn_k=[10, 10]", "eval.knn_k"),
    ("eval.knn_temperature=0", "eval.knn_temperature"),
    ("eval.attentive_lr=-1", "eval.attentive_lr"),
    ("eval.attentive_weight_decay=-0.1", "eval.attentive_weight_decay"),
    ("eval.attentive_epochs=0", "eval.attentive_epochs"),
    ("eval.attentive_queries=0", "eval.attentive_queries"),
    ("eval.attentive_batch_size=0", "eval.attentive_batch_size"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])
