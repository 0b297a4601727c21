"""VideoMAE architecture description: one typed dataclass, a preset table, and the config bridge.

`VideoMAEArch` fully determines a `VideoMAEPretrainer` (it is stored next to the weights), so a
model rebuilds from a checkpoint alone. Presets give the size; geometry (frames, image side,
patch, tubelet) always comes from the run configuration.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Collection, Optional

from tgmae.config import IMAGENET_MEAN, IMAGENET_STD, ConfigError


@dataclass(frozen=True)
class VideoMAEArch:
    """Everything that fixes the shapes and the numerics of the pretraining model.

    Args:
        embed_dim: encoder token width D.
        depth: encoder blocks.
        num_heads: encoder attention heads.
        mlp_ratio: MLP hidden width / token width (encoder and decoder, as VideoMAE).
        patch_size: spatial patch side p.
        tubelet_size: frames per token t.
        num_frames: clip length T (T % t == 0).
        image_size: square input side (image_size % p == 0).
        in_chans: input channels C.
        decoder_dim: decoder token width.
        decoder_depth: decoder blocks.
        decoder_heads: decoder attention heads.
        drop_path: stochastic depth rate of the last block (linear from 0), encoder and decoder.
        norm_pix_loss: target = per-patch, per-channel normalized pixels (VideoMAE default).
        layer_norm_eps: LayerNorm eps of blocks and the encoder norm (official 1e-6, HF 1e-12).
        decoder_norm_eps: eps of the decoder's final norm; None = layer_norm_eps (HF uses 1e-5).
        encoder_norm: final LayerNorm after the encoder blocks (HF `use_mean_pooling` = False).
        pixel_mean, pixel_std: the normalization of the input video; the target un-normalizes
            with them first, exactly as VideoMAE does with the ImageNet statistics.
    """

    # grouped encoder / input / decoder / numerics (to_json sorts the keys: the order is free)
    embed_dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_ratio: float = 4.0
    encoder_norm: bool = True
    patch_size: int = 16
    tubelet_size: int = 2
    num_frames: int = 16
    image_size: int = 224
    in_chans: int = 3
    pixel_mean: tuple[float, ...] = IMAGENET_MEAN
    pixel_std: tuple[float, ...] = IMAGENET_STD
    decoder_dim: int = 64
    decoder_depth: int = 2
    decoder_heads: int = 2
    decoder_norm_eps: Optional[float] = None
    drop_path: float = 0.0
    norm_pix_loss: bool = True
    layer_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))
        for name in ("embed_dim", "depth", "num_heads", "patch_size", "tubelet_size", "num_frames",
                     "image_size", "in_chans", "decoder_dim", "decoder_depth", "decoder_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"VideoMAEArch.{name}={getattr(self, name)}: must be > 0")
        for whole, part in (("embed_dim", "num_heads"), ("decoder_dim", "decoder_heads"),
                            ("num_frames", "tubelet_size"), ("image_size", "patch_size")):
            if getattr(self, whole) % getattr(self, part):
                raise ValueError(f"{whole}={getattr(self, whole)} is not divisible by {part}={getattr(self, part)}")
        if not 0.0 <= self.drop_path < 1.0:
            raise ValueError(f"drop_path={self.drop_path}: must be in [0, 1)")
        if len(self.pixel_mean) != self.in_chans or len(self.pixel_std) != self.in_chans:
            raise ValueError(
                f"pixel_mean/pixel_std need {self.in_chans} values (in_chans), got "
                f"{len(self.pixel_mean)} and {len(self.pixel_std)}"
            )
        if any(s <= 0 for s in self.pixel_std):
            raise ValueError(f"pixel_std={self.pixel_std}: must be positive")

    @property
    def grid(self) -> tuple[int, int, int]:
        """(T', H', W') token grid."""
        n = self.image_size // self.patch_size
        return (self.num_frames // self.tubelet_size, n, n)

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid
        return t * h * w

    @property
    def patch_dim(self) -> int:
        """Values per token: t * p * p * C (decoder output width)."""
        return self.tubelet_size * self.patch_size**2 * self.in_chans

    @property
    def head_norm_eps(self) -> float:
        return self.layer_norm_eps if self.decoder_norm_eps is None else self.decoder_norm_eps

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "VideoMAEArch":
        values: dict[str, Any] = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown VideoMAEArch fields {unknown} (known: {sorted(names)})")
        return cls(**values)


# name -> size arguments. Sources: micro, tiny: ours (CPU studies and tests); small / base / large /
# huge: MCG-NJU/VideoMAE modeling_pretrain.py pretrain_videomae_*_patch16_224, decoder depth 4
# (run_mae_pretraining.py default; huge: 12, from its K400 ViT-H pretrain.sh); giant: VideoMAEv2
# ViT-g/14, OpenGVLab/VideoMAEv2 models/modeling_pretrain.py pretrain_videomae_giant_patch14_224
# (mlp_ratio 48/11 = MLP 6144) with decoder depth 4 from scripts/pretrain/vit_g_hybrid_pt.sh.
# Geometry is not a size (patch size: tgmae.config.PRESET_PATCH_SIZE).
PRESETS: dict[str, dict[str, Any]] = {
    # micro: the study's and the sanity checks' CPU model (learns the synthetic actions in ~1 CPU-minute)
    "micro": dict(embed_dim=64, depth=2, num_heads=2, decoder_dim=32, decoder_depth=1, decoder_heads=1),
    "tiny": dict(embed_dim=128, depth=4, num_heads=4, decoder_dim=64, decoder_depth=2, decoder_heads=2),
    "small": dict(embed_dim=384, depth=12, num_heads=6, decoder_dim=192, decoder_depth=4, decoder_heads=3),
    "base": dict(embed_dim=768, depth=12, num_heads=12, decoder_dim=384, decoder_depth=4, decoder_heads=6),
    "large": dict(embed_dim=1024, depth=24, num_heads=16, decoder_dim=512, decoder_depth=4, decoder_heads=8),
    "huge": dict(embed_dim=1280, depth=32, num_heads=16, decoder_dim=640, decoder_depth=12, decoder_heads=8),
    "giant": dict(embed_dim=1408, depth=40, num_heads=16, mlp_ratio=48 / 11, decoder_dim=512, decoder_depth=4,
                  decoder_heads=8),
}


def _size_from_config(model_cfg: Any) -> dict[str, Any]:
    """The preset's size arguments with the config's head / decoder overrides applied.

    A `decoder_dim` override keeps the preset's decoder head width. Raises ConfigError naming
    model.num_heads / model.decoder_dim / model.decoder_heads when they do not divide the width."""
    size = dict(PRESETS[model_cfg.preset])
    heads = model_cfg.num_heads
    if heads is not None:
        if size["embed_dim"] % heads:
            raise ConfigError(f"model.num_heads={heads}: must divide the preset's width {size['embed_dim']} "
                              f"(model.preset={model_cfg.preset!r})")
        size["num_heads"] = heads
    if model_cfg.decoder_depth is not None:
        size["decoder_depth"] = model_cfg.decoder_depth
    if model_cfg.decoder_dim is not None:
        head_dim = size["decoder_dim"] // size["decoder_heads"]
        if model_cfg.decoder_dim % head_dim:
            raise ConfigError(
                f"model.decoder_dim={model_cfg.decoder_dim}: must be a multiple of the preset's "
                f"decoder head width {head_dim}"
            )
        size["decoder_dim"] = model_cfg.decoder_dim
        size["decoder_heads"] = model_cfg.decoder_dim // head_dim
    decoder_heads = model_cfg.decoder_heads
    if decoder_heads is not None:
        if size["decoder_dim"] % decoder_heads:
            raise ConfigError(f"model.decoder_heads={decoder_heads}: must divide the decoder width {size['decoder_dim']}")
        size["decoder_heads"] = decoder_heads
    return size


def arch_from_config(model_cfg: Any, num_frames: int, image_size: int, pixel_mean: Optional[tuple[float, ...]] = None,
                     pixel_std: Optional[tuple[float, ...]] = None) -> VideoMAEArch:
    """`ModelConfig` + clip geometry (+ the data's mean/std; None = ImageNet) -> `VideoMAEArch`."""
    extra = {k: tuple(v) for k, v in (("pixel_mean", pixel_mean), ("pixel_std", pixel_std)) if v is not None}
    return VideoMAEArch(
        **_size_from_config(model_cfg),
        patch_size=model_cfg.patch_size,
        tubelet_size=model_cfg.tubelet_size,
        num_frames=num_frames,
        image_size=image_size,
        drop_path=model_cfg.drop_path,
        norm_pix_loss=model_cfg.norm_pix_loss,
        **extra,
    )


def check_checkpoint_geometry(model_cfg: Any, arch: VideoMAEArch, source: str, decoder: bool = False) -> None:
    """ConfigError naming the key and both values when `model.pretrained`'s geometry is not the
    config's: patch and tubelet size, head count, the preset when the checkpoint's size is a
    preset's, and with `decoder` the decoder's width and depth. Clip length and image side may
    differ (sin-cos positions)."""
    checks = [("model.patch_size", model_cfg.patch_size, arch.patch_size),
              ("model.tubelet_size", model_cfg.tubelet_size, arch.tubelet_size)]
    named = [n for n, p in PRESETS.items() if (p["embed_dim"], p["depth"]) == (arch.embed_dim, arch.depth)]
    if named and model_cfg.preset not in named:
        checks.append(("model.preset", model_cfg.preset, named[0]))
    heads = model_cfg.num_heads
    if heads is None and model_cfg.preset in named:  # the preset implies its head count
        heads = PRESETS[model_cfg.preset]["num_heads"]
    if heads is not None:
        checks.append(("model.num_heads", heads, arch.num_heads))
    if decoder:
        size = PRESETS[model_cfg.preset]
        checks.append(("model.decoder_dim", model_cfg.decoder_dim or size["decoder_dim"], arch.decoder_dim))
        checks.append(("model.decoder_depth", model_cfg.decoder_depth or size["decoder_depth"], arch.decoder_depth))
    for key, mine, theirs in checks:
        if mine != theirs:
            raise ConfigError(f"{key}={mine!r} but the checkpoint {source} has {theirs!r}: set {key}={theirs} "
                              "(its weights fix it)" + (", or leave model.pretrained empty" if decoder else ""))


def checkpoint_model_keys(arch: VideoMAEArch) -> dict[str, Any]:
    """{model.* key: value} that describe `arch`'s encoder: patch_size, tubelet_size, and when its
    width and depth are a preset's, preset (with num_heads only when not that preset's). What
    `check_checkpoint_geometry` compares, as a command that draws or tests given weights takes them."""
    keys: dict[str, Any] = {"patch_size": arch.patch_size, "tubelet_size": arch.tubelet_size}
    named = [n for n, p in PRESETS.items() if (p["embed_dim"], p["depth"]) == (arch.embed_dim, arch.depth)]
    if named:
        keys["preset"] = named[0]
        if PRESETS[named[0]]["num_heads"] != arch.num_heads:
            keys["num_heads"] = arch.num_heads
    return keys


def with_checkpoint_model(model_cfg: Any, arch: VideoMAEArch, given: Optional[Collection[str]]
                          ) -> tuple[Any, Optional[str]]:
    """(`model_cfg` with `checkpoint_model_keys(arch)` for each key the user did not set; a line for
    the log naming the keys taken where they differed, None when none was). given: the dotted keys
    of -c and the overrides (None: all set, nothing is taken). A key set to another value is kept,
    so `check_checkpoint_geometry` refuses it naming the key: the weights fix the architecture, a
    config can only agree with them. Used by the commands that test or read given weights
    (evaluate, probe, extract, retrieve); finetune builds the model its config names."""
    if given is None:
        return model_cfg, None
    taken = {k: v for k, v in checkpoint_model_keys(arch).items()
             if f"model.{k}" not in given and getattr(model_cfg, k) != v}
    if not taken:
        return model_cfg, None
    return (dataclasses.replace(model_cfg, **taken),
            ", ".join(f"model.{k}={v}" for k, v in taken.items()) + ", as its weights are")


def size_from_checkpoint(model_cfg: Any, arch: VideoMAEArch) -> Optional[str]:
    """A line for the log when a checkpoint's encoder size is no preset (it then runs as stored);
    sets `model_cfg.num_heads` to the checkpoint's, so config.yaml records it."""
    if any((p["embed_dim"], p["depth"]) == (arch.embed_dim, arch.depth) for p in PRESETS.values()):
        return None
    model_cfg.num_heads = arch.num_heads
    return (f"encoder size from the checkpoint (width {arch.embed_dim}, depth {arch.depth}, {arch.num_heads} heads; "
            f"no preset has it, model.preset={model_cfg.preset!r} is not used; config.yaml records "
            f"model.num_heads={arch.num_heads}, width and depth are model.pretrained's)")