"""Sentence vectors from a text model's token states, as its sentence-transformers files say.

A sentence-transformers folder (or a hub id's cached snapshot) lists its stages in `modules.json`:
the transformer, a Pooling (`1_Pooling/config.json`: one or more of `POOLINGS`, concatenated in
that order), often Normalize. tgmae reproduces exactly the transformer (or a CLIP), the poolings of
`POOLINGS` and Normalize (a no-op here: embeddings are L2-normalised anyway). Any other module (the
`2_Dense` projection of LaBSE, distiluse or the multilingual CLIP text models), pooling mode or a
default prompt is refused naming it (SettingsError), since leaving it out gives vectors of another
width and space than the model's. A model with none of these files is mean-pooled.
Source: sentence_transformers/models/Pooling.py (`forward`), modules.json as SentenceTransformer saves it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import torch

from tgmae.errors import SettingsError
from tgmae.hub import looks_like_path

# sentence-transformers' concatenation order; the names are its `get_pooling_mode_str` parts
POOLINGS = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")
_MODE_KEYS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean",
              "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
              "pooling_mode_weightedmean_tokens": "weightedmean", "pooling_mode_lasttoken": "lasttoken"}
_APPLIED = ("Transformer", "CLIPModel", "Pooling", "Normalize")  # the modules tgmae reproduces


def _model_file(name_or_path: str, relative: str) -> Optional[Path]:
    """A file of a model folder, or of a hub id's cached snapshot (no download); None if absent."""
    if looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser() / relative
        return path if path.is_file() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(name_or_path, relative, local_files_only=True,
                            _raise_exceptions_for_missing_entries=False)
    except OSError:
        return None
    return Path(found) if found else None


def _json(path: Path, name_or_path: str, setting: str) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:  # ValueError: JSONDecodeError, UnicodeDecodeError
        by = f" ({setting})" if setting else ""
        raise SettingsError(f"{name_or_path!r}{by}: cannot read {path.name} ({e}); fix it or give "
                            f"{setting or 'it'} another text model") from None


def _refuse(name_or_path: str, setting: str, what: str) -> SettingsError:
    by = f" ({setting})" if setting else ""
    return SettingsError(f"{name_or_path!r}{by}: {what}, which tgmae does not reproduce (it applies the transformer, "
                         f"its pooling ({', '.join(POOLINGS)}) and Normalize only), so its vectors would not be "
                         f"the model's: give {setting or 'it'} another text model")


def _pooling_config(name_or_path: str, setting: str) -> Optional[Path]:
    """The Pooling module's config.json: from modules.json (refusing any module not in `_APPLIED`),
    else a `*Pooling/config.json` beside the model (older folders), else None."""
    listing = _model_file(name_or_path, "modules.json")
    if listing is None:
        if looks_like_path(name_or_path):
            found = sorted(Path(name_or_path).expanduser().glob("*Pooling/config.json"))
            return found[0] if found else None
        return _model_file(name_or_path, "1_Pooling/config.json")
    modules = _json(listing, name_or_path, setting)
    for m in modules:
        kind = str(m.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _APPLIED:
            raise _refuse(name_or_path, setting, f"modules.json has a {kind or 'typeless'} module "
                                                 f"({m.get('path') or m.get('name')})")
    pooling = [m for m in modules if str(m.get("type", "")).endswith("Pooling")]
    if not pooling:
        return None
    found = _model_file(name_or_path, f"{pooling[0].get('path', '')}/config.json")
    if found is None:
        raise _refuse(name_or_path, setting, f"its Pooling module's {pooling[0].get('path')}/config.json is missing")
    return found


def sentence_pooling(name_or_path: str, setting: str = "") -> str:
    """How a sentence-transformers model (folder or cached hub id) pools its token states: one of
    `POOLINGS`, or several joined by "+" in that order; "mean" for a model without a pooling config
    (a plain transformers model). SettingsError naming `setting`, the folder and the module, mode
    or prompt when the model does what tgmae does not reproduce (see the module docstring)."""
    st_config = _model_file(name_or_path, "config_sentence_transformers.json")
    prompt = _json(st_config, name_or_path, setting).get("default_prompt_name") if st_config else None
    if prompt:  # sentence-transformers puts it before every text
        raise _refuse(name_or_path, setting,
                      f"its config_sentence_transformers.json names a default prompt ({prompt!r})")
    config_file = _pooling_config(name_or_path, setting)
    if config_file is None:
        return "mean"
    config = _json(config_file, name_or_path, setting)
    if config.get("pooling_mode"):  # sentence-transformers' Pooling(pooling_mode=...) overrides the flags
        modes = {str(config["pooling_mode"]).lower()}
    else:
        modes = {_MODE_KEYS.get(k, k) for k, v in config.items() if k.startswith("pooling_mode_") and v}
    unknown = sorted(modes - set(POOLINGS))
    if unknown or not modes:
        what = f"pooling mode {unknown[0]}" if unknown else "no pooling mode"
        raise _refuse(name_or_path, setting, f"its {config_file.parent.name}/config.json names {what}")
    return "+".join(m for m in POOLINGS if m in modes)


def pool_tokens(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Sentence vectors [N, k*H] from token states [N, L, H] and attention_mask [N, L] (1 = token),
    as sentence-transformers' Pooling computes them: `mode` is one of `POOLINGS` or k of them joined
    by "+" (concatenated). The same numbers for right padding; for left padding, those it gives each
    text alone (its cls and weightedmean would count the padding's positions, batch by batch)."""
    return torch.cat([_pool(hidden, attention_mask, m) for m in mode.split("+")], dim=-1)


def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One pooling: [N, L, H], [N, L] -> [N, H]. "cls": the first token; "max" / "mean" over the
    real tokens; "mean_sqrt_len_tokens": their sum / sqrt(count); "weightedmean": token i of the
    text weighted i (1-based); "lasttoken": the last real token."""
    if mode not in POOLINGS:
        raise ValueError(f"unknown pooling {mode!r}; one of {POOLINGS}")
    rows = torch.arange(hidden.shape[0], device=hidden.device)
    if mode == "cls":  # sentence-transformers takes position 0: the same tokens for right padding
        return hidden[rows, attention_mask.to(torch.int64).argmax(dim=1)]
    if mode == "lasttoken":  # the last 1 of the mask: the first 1 of the flipped mask
        return hidden[rows, attention_mask.shape[1] - 1 - attention_mask.flip(1).to(torch.int64).argmax(dim=1)]
    real = attention_mask[..., None].to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(real == 0, float("-inf")).amax(dim=1)
    if mode == "weightedmean":  # sentence-transformers weights position p by p + 1, padding zeroed
        real = real * attention_mask.cumsum(dim=1)[..., None].to(hidden.dtype)
    total, count = (hidden * real).sum(dim=1), real.sum(dim=1).clamp(min=1e-9)
    return total / count.sqrt() if mode == "mean_sqrt_len_tokens" else total / count
