"""CLIP patch features for text-guided masking: frames [F, 3, H, W] in [0, 1] and a patch grid
(gh, gw) -> L2-normalized embeddings [F, gh, gw, D] in CLIP's joint space, by
- faithful (paper section 3.3): each p x p patch resized to CLIP's input and embedded as an image;
- dense (MaskCLIP, Zhou et al. 2022): one forward per frame, patch features from the last block's
  value path (no query-key mixing), interpolated to the grid.
Their cosine with a caption embedding is the map TGM ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

MODES = ("faithful", "dense")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's input normalization (RGB in [0, 1])
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipBundle:
    """A loaded CLIP: model (eval mode), tokenizer and the image normalization it was trained with."""

    model: "torch.nn.Module"
    tokenizer: object
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    name: str

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def image_size(self) -> int:
        return int(self.model.config.vision_config.image_size)

    @property
    def clip_patch(self) -> int:
        return int(self.model.config.vision_config.patch_size)

    @property
    def embed_dim(self) -> int:
        return int(self.model.config.projection_dim)

    def fingerprint(self) -> str:
        """`tgmae.hub.weights_fingerprint` of the files it was loaded from (every weight, the text
        tower too, and the config / tokenizer / processor files beside them); the projections' hash only when those files are not local."""
        from tgmae.hub import projection_fingerprint, weights_fingerprint

        return weights_fingerprint(self.name) or projection_fingerprint(
            [self.model.visual_projection.weight, self.model.text_projection.weight])


def load_clip(name_or_path: str, device: str | torch.device = "cpu", setting: str = "") -> ClipBundle:
    """`CLIPModel` + tokenizer + image mean/std from a hub name or a local directory.
    setting: the key or flag that named the model (`--clip`, `masking.clip_model`), named in errors.
    ModelUnavailableError for a missing local path, a folder that is no saved model (empty, a run
    folder) or a hub id neither cached nor reachable; SettingsError for a model that is not a CLIP
    (a VideoMAE export, a BERT: CLIPModel would load it as random weights). Mean/std: see
    `image_normalization` (a damaged processor file is a ModelUnavailableError naming it)."""
    from transformers import AutoConfig, AutoTokenizer, CLIPModel

    from tgmae.errors import SettingsError
    from tgmae.hub import load_pretrained, model_name  # a missing local path fails at once, offline explained

    config = load_pretrained(AutoConfig.from_pretrained, name_or_path, what="CLIP model config", setting=setting)
    if config.model_type != "clip":
        by = f" ({setting})" if setting else ""
        raise SettingsError(f"{name_or_path!r}{by} is a {config.model_type} model, not a CLIP: give "
                            f"{setting or 'it'} a CLIP hub id or a folder holding a saved CLIPModel")
    mean, std = image_normalization(name_or_path, setting)  # before the weights: a bad file fails at once
    model = load_pretrained(CLIPModel.from_pretrained, name_or_path, what="CLIP model", setting=setting)
    model = model.to(device).eval()
    tokenizer = load_pretrained(AutoTokenizer.from_pretrained, name_or_path, what="CLIP tokenizer", setting=setting)
    return ClipBundle(model, tokenizer, mean, std, model_name(name_or_path))


PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")  # transformers' precedence


def image_normalization(name_or_path: str, setting: str = "") -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(image_mean, image_std), 3 floats each on [0, 1] RGB, of a CLIP hub id or local folder, read
    where transformers' AutoImageProcessor reads them: processor_config.json's "image_processor"
    (saved by a transformers 5 CLIPProcessor), else preprocessor_config.json. Neither file: CLIP's
    defaults (CLIP_MEAN, CLIP_STD). A file that exists but is no JSON object or lacks a 3-channel
    image_mean / positive image_std is a ModelUnavailableError naming it and `setting`: its
    defaults would silently give the patch similarities another normalization."""
    for file_name in PROCESSOR_FILES:
        file = _model_file(name_or_path, file_name, setting)
        if file is None:
            continue
        entry = _read_json(file, setting)
        if file_name == "processor_config.json":
            if "image_processor" not in entry:
                continue  # an older processor file: the image processor has its own file
            entry = entry["image_processor"]
        return _mean_std(entry, file, setting)
    return CLIP_MEAN, CLIP_STD


def _model_file(name_or_path: str, file_name: str, setting: str) -> Optional[Path]:
    """The local path of `file_name` in the model's folder (hub: downloaded or cached), None when
    the model has none. ModelUnavailableError when the hub cannot be asked."""
    from tgmae.hub import ModelUnavailableError, looks_like_path, unavailable_message

    if looks_like_path(name_or_path):
        file = Path(name_or_path).expanduser() / file_name
        return file if file.is_file() else None
    from transformers.utils import cached_file

    try:
        found = cached_file(name_or_path, file_name, _raise_exceptions_for_missing_entries=False)
    except OSError as e:
        raise ModelUnavailableError(unavailable_message(name_or_path, "CLIP image processor", str(e))) from None
    return Path(found) if found else None


def _unreadable(file: Path, setting: str, why: str):
    from tgmae.hub import ModelUnavailableError

    by = f" ({setting})" if setting else ""
    return ModelUnavailableError(
        f"cannot load the CLIP image normalization from {str(file)!r}{by}: {why}; fix or re-save it "
        "(save_pretrained), or give another model")


def _read_json(file: Path, setting: str) -> dict:
    import json

    try:
        entry = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise _unreadable(file, setting, f"not a readable JSON file ({cause})") from None
    if not isinstance(entry, dict):
        raise _unreadable(file, setting, "not a JSON object")
    return entry


def _mean_std(entry: object, file: Path, setting: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """image_mean / image_std of a processor entry, a number meaning all 3 channels (as transformers)."""
    if not isinstance(entry, dict):
        raise _unreadable(file, setting, "its image_processor is not a JSON object")
    out = []
    for key in ("image_mean", "image_std"):
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value] * 3
        ok = (isinstance(value, list) and len(value) == 3
              and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value))
        if not ok or (key == "image_std" and min(value) <= 0):
            what = "is missing" if key not in entry else f"is {value!r}"
            raise _unreadable(file, setting, f"its {key} {what}, expected 3 numbers"
                              + (" above 0" if key == "image_std" else ""))
        out.append(tuple(float(v) for v in value))
    return out[0], out[1]


def map_grid(height: int, width: int, image_size: int = 224, patch_size: int = 16) -> tuple[int, int]:
    """(gh, gw) model patches over a full source frame seen at short side `image_size`."""
    n = image_size / patch_size
    short = min(height, width)
    return max(1, round(height / short * n)), max(1, round(width / short * n))


@torch.no_grad()
def embed_texts(clip: ClipBundle, texts: Sequence[str]) -> torch.Tensor:
    """[C] caption strings -> [C, D] L2-normalized CLIP text embeddings (as `TextEmbedder`'s).
    ValueError for no or empty texts."""
    if not texts:
        raise ValueError("no caption text to embed")
    empty = [i for i, t in enumerate(texts) if not t or not t.strip()]
    if empty:
        raise ValueError(f"empty caption text at positions {empty}: a caption must have words")
    max_len = int(clip.model.config.text_config.max_position_embeddings)
    tok = clip.tokenizer(list(texts), padding=True, truncation=True, max_length=max_len, return_tensors="pt")
    tok = {k: v.to(clip.device) for k, v in tok.items() if k in ("input_ids", "attention_mask")}
    out = clip.model.get_text_features(**tok)
    emb = out.pooler_output if hasattr(out, "pooler_output") else out
    return F.normalize(emb.float(), dim=-1)


class ClipPatchScorer:
    """Per-patch CLIP image embeddings of frames, faithful or dense (module docstring).

    dense_size: dense input short side; None = grid short side x CLIP's patch (grids match).
    batch_size: CLIP images per forward (faithful crops; dense: batch_size // 16 frames).
    """

    def __init__(
        self, clip: ClipBundle, mode: str = "dense", dense_size: Optional[int] = None,
        batch_size: int = 256,
    ):
        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {MODES}")
        self.clip, self.mode, self.dense_size, self.batch_size = clip, mode, dense_size, batch_size
        self._mean = torch.tensor(clip.image_mean).view(1, 3, 1, 1)
        self._std = torch.tensor(clip.image_std).view(1, 3, 1, 1)

    def dense_size_for(self, grid_hw: tuple[int, int]) -> int:
        return int(self.dense_size or min(grid_hw) * self.clip.clip_patch)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self._mean.to(x.device)) / self._std.to(x.device)

    @torch.no_grad()
    def features(
        self, frames: torch.Tensor, grid_hw: tuple[int, int], patch_size: Optional[int] = None
    ) -> torch.Tensor:
        """frames [F, 3, H, W] in [0, 1] -> [F, gh, gw, D] normalized patch embeddings.
        patch_size (faithful): the patch side in pixels; None = H / gh of the given frames."""
        if self.mode == "faithful":
            return self.faithful_features(frames, grid_hw, patch_size)
        return self.dense_features(frames, grid_hw)

    @torch.no_grad()
    def faithful_features(
        self, frames: torch.Tensor, grid_hw: tuple[int, int], patch_size: Optional[int] = None
    ) -> torch.Tensor:
        """Each p x p patch of the frame (at gh*p x gw*p) resized to CLIP's input, CLS embedding."""
        gh, gw = grid_hw
        p = patch_size or max(1, round(frames.shape[-2] / gh))
        r = self.clip.image_size
        model = self.clip.model
        x = frames.to(self.clip.device, torch.float32)
        if tuple(x.shape[-2:]) != (gh * p, gw * p):
            x = F.interpolate(x, size=(gh * p, gw * p), mode="bilinear", align_corners=False, antialias=True)
        n = x.shape[0]
        crops = x.unfold(2, p, p).unfold(3, p, p)  # [F, 3, gh, gw, p, p]
        crops = crops.permute(0, 2, 3, 1, 4, 5).reshape(n * gh * gw, 3, p, p)
        out = []
        for chunk in crops.split(self.batch_size):
            chunk = F.interpolate(chunk, size=(r, r), mode="bicubic", align_corners=False).clamp_(0, 1)
            feats = model.get_image_features(pixel_values=self._normalize(chunk))
            out.append(feats.pooler_output if hasattr(feats, "pooler_output") else feats)
        emb = torch.cat(out).float().reshape(n, gh, gw, -1)
        return F.normalize(emb, dim=-1)

    @torch.no_grad()
    def dense_features(self, frames: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """MaskCLIP value-path features at `dense_size`, interpolated to (gh, gw)."""
        vision = self.clip.model.vision_model
        cp = self.clip.clip_patch
        x = frames.to(self.clip.device, torch.float32)
        h, w = x.shape[-2:]
        s = self.dense_size_for(grid_hw) / min(h, w)
        fh, fw = max(1, round(h * s / cp)), max(1, round(w * s / cp))
        x = F.interpolate(x, size=(fh * cp, fw * cp), mode="bicubic", align_corners=False).clamp_(0, 1)
        out = []
        for chunk in x.split(max(1, self.batch_size // 16)):
            out.append(self._maskclip_tokens(vision, self._normalize(chunk)))
        tokens = torch.cat(out)  # [F, fh*fw, D]
        fmap = tokens.reshape(x.shape[0], fh, fw, -1).permute(0, 3, 1, 2)
        if (fh, fw) != tuple(grid_hw):
            fmap = F.interpolate(fmap, size=tuple(grid_hw), mode="bilinear", align_corners=False)
        return F.normalize(fmap.permute(0, 2, 3, 1).float(), dim=-1)

    def _maskclip_tokens(self, vision: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalized -> [B, (H/cp)*(W/cp), D] projected value-path patch features."""
        hidden = vision.embeddings(pixels, interpolate_pos_encoding=True)
        hidden = vision.pre_layrnorm(hidden)
        layers = vision.encoder.layers
        for layer in layers[:-1]:
            hidden = layer(hidden, None)
            hidden = hidden[0] if isinstance(hidden, tuple) else hidden
        last = layers[-1]
        v = last.self_attn.out_proj(last.self_attn.v_proj(last.layer_norm1(hidden)))
        v = vision.post_layernorm(v[:, 1:])  # drop CLS
        return self.clip.model.visual_projection(v)


def cosine_maps(features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """features [F, gh, gw, D] normalized, text [C, D] normalized -> [C, F, gh, gw] cosine."""
    return torch.einsum("fhwd,cd->cfhw", features.float(), text.to(features.device).float())


def frames_to_unit(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Data-normalized clip [C, T, H, W] (or [B, C, T, H, W]) -> RGB frames in [0, 1],
    [T, 3, H, W] (or [B*T, 3, H, W])."""
    m = torch.tensor(mean, device=frames.device, dtype=torch.float32).view(-1, 1, 1, 1)
    s = torch.tensor(std, device=frames.device, dtype=torch.float32).view(-1, 1, 1, 1)
    x = (frames.float() * s + m).clamp(0, 1)
    if frames.dim() == 4:
        return x.permute(1, 0, 2, 3)
    return x.transpose(1, 2).flatten(0, 1)


def uint8_to_unit(frames: "object") -> torch.Tensor:
    """np.uint8 [T, H, W, 3] -> float [T, 3, H, W] in [0, 1]."""
    x = torch.as_tensor(frames)
    return x.permute(0, 3, 1, 2).float().div_(255.0)
