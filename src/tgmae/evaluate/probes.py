"""Which frozen-backbone probe a run is (`eval.probe`): `tgmae probe` and the study call
`run_probe`, above the three probe modules."""

from __future__ import annotations

from typing import Any

from tgmae.config import RunConfig


def run_probe(cfg: RunConfig, hooks=None, **kwargs: Any) -> Any:
    """The probe `eval.probe` names: `tgmae.evaluate.probe.linear_probe` (linear),
    `tgmae.evaluate.knn_probe.knn_probe` (knn; nothing trains, so `hooks` go unused) or
    `tgmae.evaluate.attentive_probe.attentive_probe` (attentive); kwargs (train_data, val_data,
    num_classes, cache_dir, given: the dotted keys the user set, the model keys among the others
    then the weights', `tgmae.evaluate.probe.probe_features`) go through. Returns that probe's result."""
    if cfg.eval.probe == "knn":
        from tgmae.evaluate.knn_probe import knn_probe

        return knn_probe(cfg, **kwargs)
    if cfg.eval.probe == "attentive":
        from tgmae.evaluate.attentive_probe import attentive_probe

        return attentive_probe(cfg, hooks, **kwargs)
    from tgmae.evaluate.probe import linear_probe

    return linear_probe(cfg, hooks, **kwargs)
