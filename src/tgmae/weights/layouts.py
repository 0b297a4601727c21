"""Checkpoint key layouts: official VideoMAE and transformers' VideoMAEForPreTraining <-> ours.

Our names are the official VideoMAE names (one to one after stripping wrapper prefixes); the HF
layout splits the fused qkv into query/key/value and renames every module. Pure functions on
state dicts; a layout that does not fit is a CheckpointError.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from typing import Any, Mapping, Optional

import torch

from tgmae.config import ConfigError
from tgmae.models.arch import IMAGENET_MEAN, IMAGENET_STD, VideoMAEArch
from tgmae.weights.files import CheckpointError

log = logging.getLogger("tgmae")

WRAPPER_PREFIXES = ("module.", "_orig_mod.")
ARCH_KEY = "tgmae_arch"  # our VideoMAEArch as JSON inside an exported HF config.json

# Head counts of the released VideoMAE / VideoMAEv2 models (not stored in the .pth): width -> heads
# (1408: VideoMAEv2's ViT-g/14; its distilled ViT-S / ViT-B are 384 / 768 wide like VideoMAE's).
OFFICIAL_ENCODER_HEADS = {384: 6, 768: 12, 1024: 16, 1280: 16, 1408: 16}
OFFICIAL_DECODER_HEADS = {192: 3, 384: 6, 512: 8, 640: 8}

# HF block sub-module -> ours (the q/k/v split is handled separately).
_HF_BLOCK = {
    "attention.output.dense": "attn.proj",
    "layernorm_before": "norm1",
    "layernorm_after": "norm2",
    "intermediate.dense": "mlp.fc1",
    "output.dense": "mlp.fc2",
}
_HF_TOP = {
    "videomae.embeddings.patch_embeddings.projection": "encoder.patch_embed.proj",
    "videomae.layernorm": "encoder.norm",
    "encoder_to_decoder": "encoder_to_decoder",
    "mask_token": "mask_token",
    "decoder.norm": "decoder.norm",
    "decoder.head": "decoder.head",
}
_HF_STACKS = (("videomae.encoder.layer.", "encoder.blocks."), ("decoder.decoder_layers.", "decoder.blocks."))
_QKV = "attention.attention."
# transformers 5 keeps query.bias / value.bias in memory but writes them to disk under the
# older names attention.attention.q_bias / v_bias (its conversion mapping renames on load/save).
_HF_DISK_BIAS = {"q_bias": "query.bias", "v_bias": "value.bias"}


def released_normalization(chans: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the input of released VideoMAE models and of HF's VideoMAE: ImageNet's for 3
    channels (`tgmae.models.arch.IMAGENET_MEAN` / `IMAGENET_STD`), none (0, 1) for any other count."""
    return (IMAGENET_MEAN, IMAGENET_STD) if chans == 3 else ((0.0,) * chans, (1.0,) * chans)


def strip_wrappers(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove DDP `module.` and torch.compile `_orig_mod.` prefixes (anywhere they lead a name)."""
    out = {}
    for name, value in state.items():
        while name.startswith(WRAPPER_PREFIXES):
            name = name.partition(".")[2]
        out[name.replace("._orig_mod.", ".")] = value
    return out


def count_blocks(state: Mapping[str, Any], prefix: str = "blocks.") -> int:
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    ids = {int(m.group(1)) for k in state if (m := pat.match(k))}
    return max(ids) + 1 if ids else 0


def official_heads(width: int, given: Optional[int], table: Mapping[int, int], option: str) -> int:
    """Head count of an official .pth block stack: `given`, else the released model's of that width.

    A .pth does not store head counts, and a wrong one changes every output, so a width outside
    the released models without `given` is a ConfigError naming the option to pass."""
    if given:
        return int(given)
    if width in table:
        return table[width]
    raise ConfigError(
        f"the checkpoint's {width}-wide blocks are no released VideoMAE width ({sorted(table)}) and a .pth "
        f"does not store its head count: pass {option}")


def infer_encoder_arch(enc: Mapping[str, torch.Tensor], *, num_heads: Optional[int] = None,
                       layer_norm_eps: float = 1e-6, num_frames: int = 16, image_size: int = 224) -> VideoMAEArch:
    """Encoder architecture from its state dict's shapes (heads: `num_heads`, else the released
    VideoMAE count of that width; another width without `num_heads` is a ConfigError)."""
    w = enc["patch_embed.proj.weight"]  # [D, C, t, p, p]
    dim, chans, tub, patch = int(w.shape[0]), int(w.shape[1]), int(w.shape[2]), int(w.shape[3])
    hidden = int(enc["blocks.0.mlp.fc1.weight"].shape[0])
    heads = official_heads(dim, num_heads, OFFICIAL_ENCODER_HEADS, "model.num_heads (tgmae convert / export-hf: --num-heads)")
    return VideoMAEArch(
        embed_dim=dim, depth=count_blocks(enc), num_heads=heads, mlp_ratio=hidden / dim,
        patch_size=patch, tubelet_size=tub, num_frames=num_frames, image_size=image_size,
        in_chans=chans, layer_norm_eps=layer_norm_eps, encoder_norm="norm.weight" in enc,
        pixel_mean=released_normalization(chans)[0], pixel_std=released_normalization(chans)[1],
    )


def official_arch(state: Mapping[str, torch.Tensor], *, num_frames: int = 16, image_size: int = 224,
                  num_heads: Optional[int] = None, decoder_heads: Optional[int] = None,
                  norm_pix_loss: bool = True) -> VideoMAEArch:
    """The architecture of an official pretraining state dict (unwrapped): sizes from tensor
    shapes; head counts (default: the released models'), clip geometry and the loss flavour are
    not stored, so they come from the arguments."""
    encoder = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    arch = infer_encoder_arch(encoder, num_heads=num_heads, num_frames=num_frames, image_size=image_size)
    ddim = int(state["encoder_to_decoder.weight"].shape[0])
    return dataclasses.replace(
        arch, decoder_dim=ddim, decoder_depth=count_blocks(state, "decoder.blocks."), norm_pix_loss=norm_pix_loss,
        decoder_heads=official_heads(ddim, decoder_heads, OFFICIAL_DECODER_HEADS,
                                     "model.decoder_heads (tgmae convert / export-hf: --decoder-heads)"))


def _single(value: Any, what: str) -> int:
    if isinstance(value, (list, tuple)):
        if len(set(value)) != 1:
            raise CheckpointError(f"HF config {what}={value}: only square inputs are supported")
        value = value[0]
    return int(value)


def hf_arch(config: Mapping[str, Any]) -> VideoMAEArch:
    """HF `VideoMAEConfig` (config.json as a dict) -> VideoMAEArch with the same numerics.

    A config we exported carries our full arch under `tgmae_arch` (values HF has no field for:
    the decoder norm eps, the data mean/std); it is used when every HF field still agrees with
    it, so ours -> HF -> ours gives back the arch we started from.
    """
    stored = _stored_arch(config)
    if stored is not None:
        return stored
    if config.get("model_type", "videomae") != "videomae":
        raise CheckpointError(f"HF config model_type={config.get('model_type')!r}: expected 'videomae'")
    act = config.get("hidden_act", "gelu")
    if act != "gelu":
        raise CheckpointError(f"HF config hidden_act={act!r}: only 'gelu' (erf) is supported")
    dim, ddim = int(config.get("hidden_size", 768)), int(config.get("decoder_hidden_size", 384))
    ratio = int(config.get("intermediate_size", 3072)) / dim
    dhidden = int(config.get("decoder_intermediate_size", 1536))
    # One ratio shared by encoder and decoder (VideoMAE, VideoMAEv2), the decoder's width rounded
    # down as their Block does: int(dim * mlp_ratio). ViT-g's 48/11 gives 6144 and 512 -> 2234.
    if int(ddim * ratio) != dhidden:
        raise CheckpointError(f"HF config: decoder_intermediate_size={dhidden} but the encoder's MLP ratio "
                              f"{ratio} (intermediate_size / hidden_size) gives int({ddim} * ratio) = "
                              f"{int(ddim * ratio)}; one shared ratio is supported (as in VideoMAE)")
    chans = int(config.get("num_channels", 3))
    return VideoMAEArch(
        embed_dim=dim, depth=int(config.get("num_hidden_layers", 12)),
        num_heads=int(config.get("num_attention_heads", 12)), mlp_ratio=ratio,
        patch_size=_single(config.get("patch_size", 16), "patch_size"),
        tubelet_size=int(config.get("tubelet_size", 2)), num_frames=int(config.get("num_frames", 16)),
        image_size=_single(config.get("image_size", 224), "image_size"), in_chans=chans,
        decoder_dim=ddim, decoder_depth=int(config.get("decoder_num_hidden_layers", 4)),
        decoder_heads=int(config.get("decoder_num_attention_heads", 6)),
        norm_pix_loss=bool(config.get("norm_pix_loss", True)),
        layer_norm_eps=float(config.get("layer_norm_eps", 1e-12)),
        decoder_norm_eps=1e-5,  # HF's decoder.norm is a default nn.LayerNorm
        encoder_norm=not bool(config.get("use_mean_pooling", True)),
        # HF un-normalizes 3-channel input with ImageNet statistics and leaves others as they are
        pixel_mean=released_normalization(chans)[0], pixel_std=released_normalization(chans)[1],
    )


def _stored_arch(config: Mapping[str, Any]) -> Optional[VideoMAEArch]:
    """The `tgmae_arch` of an exported config, if present and consistent with the HF fields."""
    text = config.get(ARCH_KEY)
    if not isinstance(text, str):
        return None
    try:
        arch = VideoMAEArch.from_json(text)
    except (ValueError, TypeError):
        return None
    expected = hf_config(arch)
    keys = [k for k in expected if k != ARCH_KEY and k in config]
    return arch if all(config[k] == expected[k] for k in keys) else None


def hf_config(arch: VideoMAEArch) -> dict[str, Any]:
    """VideoMAEArch -> keyword arguments of `transformers.VideoMAEConfig` (plus `tgmae_arch`).

    Same numerics except HF's decoder.norm eps, fixed at 1e-5 there (`arch.head_norm_eps`
    otherwise): a difference far below float32 noise for unit-scale activations.
    """
    return dict(
        image_size=arch.image_size, patch_size=arch.patch_size, num_channels=arch.in_chans,
        num_frames=arch.num_frames, tubelet_size=arch.tubelet_size, hidden_size=arch.embed_dim,
        num_hidden_layers=arch.depth, num_attention_heads=arch.num_heads,
        intermediate_size=int(arch.embed_dim * arch.mlp_ratio), hidden_act="gelu",
        layer_norm_eps=arch.layer_norm_eps, qv_bias=True, use_mean_pooling=not arch.encoder_norm,
        decoder_num_attention_heads=arch.decoder_heads, decoder_hidden_size=arch.decoder_dim,
        decoder_num_hidden_layers=arch.decoder_depth,
        decoder_intermediate_size=int(arch.decoder_dim * arch.mlp_ratio),
        norm_pix_loss=arch.norm_pix_loss, **{ARCH_KEY: arch.to_json()},
    )


# The one name table, both ways: (top-level modules, block sub-modules, block stacks) HF -> ours,
# and its inverse ours -> HF.
_TO_OURS = (_HF_TOP, _HF_BLOCK, _HF_STACKS)
_TO_HF = ({v: k for k, v in _HF_TOP.items()}, {v: k for k, v in _HF_BLOCK.items()},
          tuple((ours, hf) for hf, ours in _HF_STACKS))


def _rename(name: str, table: tuple) -> tuple[Optional[str], Optional[tuple[str, str, str]]]:
    """Map one parameter name through `table` (`_TO_OURS` or `_TO_HF`).

    Returns (new name, None) for a name the table maps; (None, (block prefix in the target
    layout, sub-module, leaf)) for a block parameter outside the table (the attention's
    q/k/v, which the callers fuse or split); (None, None) for a name outside every stack.
    """
    top, block, stacks = table
    if name == "mask_token":
        return name, None
    module, _, leaf = name.rpartition(".")
    if module in top:
        return f"{top[module]}.{leaf}", None
    for src_prefix, dst_prefix in stacks:
        if name.startswith(src_prefix):
            idx, _, rest = name[len(src_prefix):].partition(".")
            sub, _, leaf = rest.rpartition(".")
            base = f"{dst_prefix}{idx}."
            if sub in block:
                return f"{base}{block[sub]}.{leaf}", None
            return None, (base, sub, leaf)
    return None, None


def hf_to_ours(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """HF state dict -> (our state dict, HF names that have no counterpart)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    unknown: list[str] = []
    for name, value in strip_wrappers(state).items():
        new, part = _rename(name, _TO_OURS)
        if new is not None:
            out[new] = value
        elif part is not None and (part[1].startswith(_QKV) or part[1] == _QKV[:-1]):
            base, sub, leaf = part
            qkv.setdefault(base, {})[_HF_DISK_BIAS.get(leaf) or f"{sub[len(_QKV):]}.{leaf}"] = value
        elif part is not None or not name.endswith("position_embeddings"):
            unknown.append(name)
    for base, parts in qkv.items():
        try:
            out[f"{base}attn.qkv.weight"] = torch.cat(
                [parts["query.weight"], parts["key.weight"], parts["value.weight"]], dim=0)
        except KeyError as e:
            raise CheckpointError(f"HF checkpoint: {base} lacks attention {e.args[0]}") from None
        dim = parts["query.weight"].shape[0]
        zeros = torch.zeros(dim, dtype=parts["query.weight"].dtype)
        out[f"{base}attn.q_bias"] = parts.get("query.bias", zeros)  # qv_bias=False: zero biases
        out[f"{base}attn.v_bias"] = parts.get("value.bias", zeros)
        # A key bias (transformers < 5.2x builds one, zero-filled for VideoMAE weights) adds q.b_k to
        # every score of a query: constant across keys, so softmax removes it exactly. Dropped.
    return out, unknown


def ours_to_hf(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our state dict -> HF `VideoMAEForPreTraining.state_dict()` names (in-memory, qv_bias=True)."""
    out: dict[str, torch.Tensor] = {}
    for name, value in state.items():
        new, part = _rename(name, _TO_HF)
        if new is not None:
            out[new] = value
            continue
        base, sub, leaf = part or ("", "", "")
        if (sub, leaf) == ("attn.qkv", "weight"):
            q, k, v = value.chunk(3, dim=0)
            out[f"{base}{_QKV}query.weight"] = q
            out[f"{base}{_QKV}key.weight"] = k
            out[f"{base}{_QKV}value.weight"] = v
        elif (sub, leaf) in (("attn", "q_bias"), ("attn", "v_bias")):
            out[f"{base}{_QKV}{'query' if leaf == 'q_bias' else 'value'}.bias"] = value
        else:
            raise ValueError(f"no HF counterpart for parameter {name!r}")
    return out




def fill_key_biases(state: dict[str, torch.Tensor], target: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`state` (HF names, from `ours_to_hf`) plus a zero key bias for every `...key.bias` that the
    HF model `target` (its state dict) holds and `state` lacks. transformers 5.0-5.17 build
    VideoMAE's key projection with a bias (zero for VideoMAE weights); later versions without.
    A zero key bias is exact: VideoMAE has none."""
    out = dict(state)
    for name, value in target.items():
        if name.endswith(f"{_QKV}key.bias") and name not in out:
            out[name] = torch.zeros_like(value)
    return out
