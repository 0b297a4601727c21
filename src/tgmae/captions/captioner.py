"""Keyframes -> captions with any transformers image-to-text model (BLIP, BLIP-2, GIT, ...),
loaded by hub id or local directory (`tgmae.hub`). Decoding is greedy unless `num_beams` is set,
so captions are deterministic for a given model, device and dtype. A prompt (e.g. BLIP's "a
picture of") conditions generation and is removed from the caption when the model echoes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from tgmae.errors import SettingsError
from tgmae.hub import ModelUnavailableError, load_pretrained, quiet_transformers, weights_fingerprint

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def keyframe_indices(num_frames: int, n: int, start: Optional[int] = None, end: Optional[int] = None) -> list[int]:
    """`n` uniformly spaced frames of [start, end): the centres of `n` equal segments.

    n=1 gives the centre frame; frames repeat when the range is shorter than n.
    `start`/`end` follow `VideoRecord` (0-based, end exclusive, None = video start/end); a range
    past the last frame is a ValueError, never clipped (callers check it first with
    `data.frame_index.record_frame_range`, which names the video).
    """
    if n < 1:
        raise ValueError(f"keyframes must be >= 1, got {n}")
    s = 0 if start is None else max(0, int(start))
    e = num_frames if end is None else int(end)
    if e > num_frames:
        raise ValueError(f"frame range [{s}, {e}) beyond a {num_frames}-frame video")
    if e <= s:
        raise ValueError(f"empty frame range [{s}, {e}) of a {num_frames}-frame video")
    length = e - s
    return [s + min(length - 1, (2 * i + 1) * length // (2 * n)) for i in range(n)]


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """auto -> bf16 on CUDA with bf16 support, fp16 on other CUDA, fp32 on CPU. fp16 needs CUDA."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise SettingsError(f"--dtype {dtype!r}: expected auto, {', '.join(DTYPES)}")
    if dtype == "fp16" and device.type != "cuda":
        raise SettingsError("--dtype fp16 needs a CUDA device")
    return DTYPES[dtype]


@dataclass
class GenerationOptions:
    max_new_tokens: int = 30  # caption length limit in tokens
    prompt: str = ""  # conditioning text; "" = unconditional captioning
    num_beams: Optional[int] = None  # None = greedy (deterministic)


class ImageCaptioner:
    """A frozen image-to-text model: list of uint8 [H, W, 3] images -> one caption each.
    `weights`: fingerprint of its files (`tgmae.hub.weights_fingerprint`: weights, config, tokenizer,
    processor, generation config; "" = not known),
    which caption stores record."""

    def __init__(self, model: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                 options: Optional[GenerationOptions] = None):
        from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor
        from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

        self.name = model
        self.device = torch.device(device)
        self.dtype = dtype
        self.options = options or GenerationOptions()
        restore = quiet_transformers()
        try:
            config = load_pretrained(AutoConfig.from_pretrained, model, what="captioning model config")
            if config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
                raise ModelUnavailableError(
                    f"{model!r} ({config.model_type}) is not an image-to-text model that "
                    "AutoModelForImageTextToText can load; use a captioner such as BLIP, BLIP-2 or GIT"
                )
            self.processor = load_pretrained(AutoProcessor.from_pretrained, model, what="captioning processor")
            self.model = load_pretrained(AutoModelForImageTextToText.from_pretrained, model,
                                         what="captioning model", config=config, dtype=dtype)
        finally:
            restore()
        self.weights = weights_fingerprint(model) or ""  # the files are local once loaded
        self.model.eval().requires_grad_(False).to(self.device)

    @torch.no_grad()
    def __call__(self, images: Sequence[np.ndarray]) -> list[str]:
        """Captions (stripped, prompt removed; may be "" if the model emits only special tokens)."""
        if not images:
            return []
        prompt = self.options.prompt
        kwargs = {"images": list(images), "return_tensors": "pt"}
        if prompt:
            kwargs["text"] = [prompt] * len(images)
            kwargs["padding"] = True
        inputs = self.processor(**kwargs)
        inputs = {k: (v.to(self.device, self.dtype) if torch.is_floating_point(v) else v.to(self.device))
                  for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        gen = {"max_new_tokens": self.options.max_new_tokens, "do_sample": False}
        if self.options.num_beams:
            gen["num_beams"] = self.options.num_beams
        out = self.model.generate(**inputs, **gen)
        texts = self.processor.batch_decode(out, skip_special_tokens=True)
        return [strip_prompt(" ".join(t.split()), prompt) for t in texts]


def strip_prompt(text: str, prompt: str) -> str:
    """Remove an echoed prompt from the start of a caption (case-insensitive)."""
    p = " ".join(prompt.split())
    if p and text.lower().startswith(p.lower()):
        text = text[len(p):]
    return text.strip()
