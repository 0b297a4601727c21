"""Official VideoMAE / VideoMAEv2 .pth files: their state (wrappers stripped, options our model
lacks refused), the training settings their `args` state, and which clip geometry and head counts a
conversion must assume (`official_settings`), recorded in our file's metadata and warned of
(`warn_assumed`). Key layouts and architectures from shapes: `tgmae.weights.layouts`.
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Mapping, Sequence

import torch

from tgmae.models.pos_embed import sincos_position_table
from tgmae.weights.files import CheckpointError, key_names, read_torch, unwrap_state
from tgmae.weights.layouts import ARCH_KEY, strip_wrappers

log = logging.getLogger("tgmae")


# VideoMAEv2 options whose weights our blocks have no place for (models/modeling_finetune.py):
# key suffix -> the option that makes it.
_UNSUPPORTED_OFFICIAL = {
    ".attn.scale": "cos_attn (cosine attention with a learned per-head logit scale)",
    ".gamma_1": "init_values > 0 (layer scale)",
    ".gamma_2": "init_values > 0 (layer scale)",
    "pos_embed": "use_learnable_pos_emb (learned position embeddings; ours are fixed sin-cos)",
}


def official_state(state: Mapping[str, torch.Tensor], source: Any) -> dict[str, torch.Tensor]:
    """An official VideoMAE / VideoMAEv2 state dict (unwrapped) with wrapper prefixes stripped.
    VideoMAEv2 uses VideoMAE's names; a checkpoint trained with one of its options our model does
    not implement (`_UNSUPPORTED_OFFICIAL`) is a CheckpointError naming the keys and the option."""
    state = strip_wrappers(state)
    found: dict[str, list[str]] = {}
    fixed = position_tables(state)
    for key in (k for k in state if k not in fixed):
        for suffix, option in _UNSUPPORTED_OFFICIAL.items():
            if key == suffix or key.endswith("." + suffix.lstrip(".")):
                found.setdefault(option, []).append(key)
    if found:
        what = "; ".join(f"{option}: keys [{key_names(keys)}]" for option, keys in found.items())
        raise CheckpointError(f"{source}: a VideoMAE / VideoMAEv2 checkpoint trained with options tgmae's model "
                              f"does not implement: {what}")
    return state


def position_tables(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """{key: token count N} of the fixed sin-cos position tables a state stores (`pos_embed`,
    `*.pos_embed`: [1, N, D] or [N, D], equal to VideoMAE's get_sinusoid_encoding_table, as forks
    that register it as a buffer save it). Not weights (ours is rebuilt), but N proves the token
    count. A learned table (any other values) is not one (`official_state` refuses it)."""
    found = {}
    for key, value in state.items():
        if (key == "pos_embed" or key.endswith(".pos_embed")) and value.dim() in (2, 3) and (
                value.dim() == 2 or value.shape[0] == 1):
            table = value.reshape(value.shape[-2:]).float()
            if torch.allclose(table, sincos_position_table(*table.shape), atol=1e-4):
                found[key] = int(table.shape[0])
    return found


# What VideoMAE / VideoMAEv2's training scripts save as a .pth's `args` (their argparse Namespace;
# `normlize_target` is spelled so there): its name -> our VideoMAEArch field. Their tubelet_size and
# patch_size are checked against the weights (`read_official`), which fix them.
ARGS_FIELDS = {"num_frames": "num_frames", "input_size": "image_size", "normlize_target": "norm_pix_loss"}
_ARGS_READ = (*ARGS_FIELDS, "tubelet_size", "patch_size")


def official_args(obj: Any) -> dict[str, Any]:
    """The training settings a loaded .pth states in its `args` (an argparse Namespace, read as
    `files.PickledArgs`, or a dict), under their names there (`_ARGS_READ`): ints (a square
    patch_size tuple as one int), normlize_target a bool. {} when it stores none."""
    args = obj.get("args") if isinstance(obj, Mapping) else None
    values = dict(args) if isinstance(args, Mapping) else dict(getattr(args, "__dict__", None) or {})
    out: dict[str, Any] = {}
    for name in _ARGS_READ:
        value = values.get(name)
        if name == "patch_size" and isinstance(value, (list, tuple)) and len(set(value)) == 1:
            value = value[0]
        if isinstance(value, bool) == (name == "normlize_target") and isinstance(value, int):
            out[name] = value
    return out


def args_arch_fields(args: Mapping[str, Any]) -> dict[str, Any]:
    """`official_args` -> the VideoMAEArch fields they give (num_frames, image_size, norm_pix_loss)."""
    return {ARGS_FIELDS[k]: v for k, v in args.items() if k in ARGS_FIELDS}


def read_official(path: Any) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(`official_state`, `official_args`) of a VideoMAE / VideoMAEv2 .pth, read weights_only
    (`files.read_torch`). Args whose tubelet_size / patch_size differ from the weights' patch
    embedding are a CheckpointError naming both (the file contradicts itself)."""
    obj = read_torch(path)
    state, args = official_state(unwrap_state(obj, path), path), official_args(obj)
    embed = next((v for k, v in state.items() if k.endswith("patch_embed.proj.weight") and v.dim() == 5), None)
    if embed is not None:
        for name, got in (("tubelet_size", int(embed.shape[2])), ("patch_size", int(embed.shape[3]))):
            if name in args and args[name] != got:
                raise CheckpointError(f"{path}: its args state {name}={args[name]} but its weights' patch embedding "
                                      f"has {name.split('_')[0]} {got}; a file that contradicts itself is not read")
    return state, args


# The released models' clip geometry and target (VideoMAE's defaults): assumed for a .pth whose
# args do not state them and that is not given them (`official_settings`).
RELEASED_SETTINGS = {"num_frames": 16, "image_size": 224, "norm_pix_loss": True}


def official_settings(state: Mapping[str, torch.Tensor], args: Mapping[str, Any], given: Mapping[str, Any],
                      source: Any) -> tuple[dict[str, Any], list[str]]:
    """(`RELEASED_SETTINGS`' keys -> value for the model of an official .pth, the VideoMAEArch fields
    its weights do not prove and nothing states: assumed).

    state / args: `read_official`'s. Each value is `given`'s (options; None: not given), else its
    args' (`args_arch_fields`), else the one of num_frames / image_size that a stored position
    table's token count fixes when the other is known (`position_tables`), else the released
    models' (assumed). Head counts (num_heads; decoder_heads with a decoder) are assumed unless
    given: a .pth does not store them and its fused qkv does not show them; norm_pix_loss only
    counts with a decoder. Raises CheckpointError naming the key for a geometry the weights
    contradict: frames / side not a multiple of the patch embedding's tubelet / patch, or a token
    count other than a stored position table's.
    """
    args_fields = args_arch_fields(args)
    stated = {**args_fields, **{k: given[k] for k in RELEASED_SETTINGS if given.get(k) is not None}}
    embed = next((v for k, v in state.items() if k.endswith("patch_embed.proj.weight") and v.dim() == 5), None)
    tables = position_tables(state)
    tub, patch = (int(embed.shape[2]), int(embed.shape[3])) if embed is not None else (0, 0)
    proven = _fixed_by_tokens(stated, tables, tub, patch) if embed is not None else {}
    values = {**RELEASED_SETTINGS, **stated, **proven}
    if embed is not None:  # without one the loaders refuse the file for that
        origin = {k: ("given" if given.get(k) is not None else "its args" if k in args_fields else "its position "
                      "table" if k in proven else "assumed: the released models'") for k in RELEASED_SETTINGS}
        _check_geometry(values, origin, tables, tub, patch, source)
    keys = ("num_frames", "image_size", "num_heads") + (("decoder_heads", "norm_pix_loss")
                                                       if "encoder_to_decoder.weight" in state else ())
    return values, [k for k in keys if k not in stated and k not in proven and given.get(k) is None]


# What `tgmae convert` takes for each key a .pth may leave unsaid (norm_pix_loss: the model's target
# was raw pixels; normalized ones have no option, and stay assumed unless its args state them).
OFFICIAL_OPTIONS = {"num_frames": "--num-frames", "image_size": "--image-size", "num_heads": "--num-heads",
                    "decoder_heads": "--decoder-heads", "norm_pix_loss": "--no-norm-pix-loss"}
ASSUMED_META = "assumed"  # our files' metadata: JSON list of the VideoMAEArch fields a conversion assumed
ASSUMED_HF_KEY = "tgmae_assumed"  # the same list in an export-hf config.json, beside layouts.ARCH_KEY
# the config.json field that states each key (transformers' VideoMAEConfig names; `layouts.hf_config`)
_HF_FIELDS = {"num_frames": "num_frames", "image_size": "image_size", "num_heads": "num_attention_heads",
              "decoder_heads": "decoder_num_attention_heads", "norm_pix_loss": "norm_pix_loss"}
_DECODER_FIELDS = ("decoder_heads", "norm_pix_loss")
_warned: set[tuple[str, str]] = set()


def assumed_note(keys: Sequence[str]) -> dict[str, str]:
    """The metadata our file records for `keys` assumed (`ASSUMED_META`); {} for none."""
    return {ASSUMED_META: json.dumps(list(keys))} if keys else {}


def encoder_assumed(keys: Sequence[str]) -> list[str]:
    """The assumed keys that concern an encoder alone: `keys` without the decoder's (a pretraining
    model's record, read or written as its encoder)."""
    return [k for k in keys if k not in _DECODER_FIELDS]


def hf_assumed_meta(config: Mapping[str, Any]) -> dict[str, str]:
    """The assumed record of an export-hf config.json (`ASSUMED_HF_KEY`) as our files' metadata
    (`ASSUMED_META`, and `arch` for the values `warn_assumed` names); {} without one. A key whose
    config.json field no longer holds the value `ARCH_KEY` recorded was edited, so stated: left out."""
    keys = config.get(ASSUMED_HF_KEY)
    if not isinstance(keys, list):
        return {}
    try:
        recorded = json.loads(config.get(ARCH_KEY) or "null")
    except ValueError:
        recorded = None
    values = {k: config.get(_HF_FIELDS[k]) for k in keys if k in _HF_FIELDS}
    if isinstance(recorded, dict):
        values = {k: v for k, v in values.items() if recorded.get(k) == v}
    return {**assumed_note(list(values)), "arch": json.dumps(values)} if values else {}


def warn_assumed(path: Any, meta: Mapping[str, str]) -> list[str]:
    """The VideoMAEArch fields our file's metadata records as assumed at conversion (`ASSUMED_META`),
    said in one warning per file and process (finetune, evaluate and visualize read a checkpoint
    more than once) with their values and the options to state them; [] when none."""
    keys = json.loads(meta.get(ASSUMED_META) or "[]")
    if keys and (str(path), meta[ASSUMED_META]) not in _warned:
        _warned.add((str(path), meta[ASSUMED_META]))
        arch = json.loads(meta.get("arch") or "{}")
        log.warning("%s: %s were assumed when it was converted (its source .pth does not state them), not read from "
                    "its weights; if they are not the model's, convert the source again with %s", path,
                    ", ".join(f"{k}={arch.get(k)}" for k in keys), ", ".join(OFFICIAL_OPTIONS[k] for k in keys))
    return keys


def _fixed_by_tokens(stated: Mapping[str, Any], tables: Mapping[str, int], tub: int, patch: int) -> dict[str, int]:
    """The one of num_frames / image_size a stored position table's token count N fixes, the other
    stated: N = (num_frames / tub) * (image_size / patch)^2. {} without a table, or when N does not
    divide (`_check_geometry` then refuses)."""
    if not tables or ("num_frames" in stated) == ("image_size" in stated):
        return {}
    n = next(iter(tables.values()))
    if "image_size" in stated:
        per_frame = (stated["image_size"] // patch) ** 2
        return {"num_frames": n // per_frame * tub} if per_frame and n % per_frame == 0 else {}
    steps = stated["num_frames"] // tub
    side = math.isqrt(n // steps) if steps else 0
    return {"image_size": side * patch} if side and steps * side * side == n else {}


def _check_geometry(values: Mapping[str, Any], origin: Mapping[str, str], tables: Mapping[str, int], tub: int,
                    patch: int, source: Any) -> None:
    """CheckpointError naming the key of a clip geometry the weights contradict (`official_settings`)."""
    for key, part, what in (("num_frames", tub, "tubelet"), ("image_size", patch, "patch")):
        if values[key] <= 0 or values[key] % part:
            raise CheckpointError(f"{source}: {key}={values[key]} ({origin[key]}) is not a multiple of the {what} "
                                  f"size {part} of its weights' patch_embed.proj.weight; set {key} to the model's")
    tokens = (values["num_frames"] // tub) * (values["image_size"] // patch) ** 2
    for key, n in tables.items():
        if n != tokens:
            raise CheckpointError(
                f"{source}: its position table {key} holds {n} tokens, but num_frames={values['num_frames']} "
                f"({origin['num_frames']}) and image_size={values['image_size']} ({origin['image_size']}) give "
                f"{tokens}; set num_frames / image_size to the model's")
