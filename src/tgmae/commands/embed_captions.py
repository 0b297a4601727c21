"""`tgmae embed-captions --captions captions.jsonl --clip NAME_OR_PATH [--out cache.safetensors]`:
embed every distinct caption with a CLIP text tower into a cache (`tgmae.captions.embed`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Sequence

from tgmae.captions import embed
from tgmae.captions.embed import default_cache_path, embed_texts
from tgmae.captions.store import read_store
from tgmae.distributed import resolve_device
from tgmae.errors import SettingsError
from tgmae.locks import check_kind, refuse_in_checkpoints
from tgmae.commands.args import Parser, say


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = Parser(prog="tgmae embed-captions", description=embed.__doc__)
    p.add_argument("--captions", required=True, help="caption store (JSONL)")
    p.add_argument("--clip", required=True, help="CLIP hub id or local directory, e.g. openai/clip-vit-base-patch16")
    p.add_argument("--out", default="", help="cache file (default: next to the captions file)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--rebuild", action="store_true", help="replace a cache built with another model")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(list(argv))


def main(argv: Sequence[str]) -> int:
    args = _parse(argv)
    device = resolve_device(args.device, key="--device")  # ConfigError (exit 2) for a device this machine lacks
    out = Path(args.out) if args.out else default_cache_path(args.captions, args.clip)
    check_kind(out, "--out" if args.out else "the default cache file", folder=False)  # a folder: refused, not "delete it"
    refuse_in_checkpoints(out, "--out" if args.out else "the default cache file")  # a run's resume reads them
    if out.resolve() == Path(args.captions).resolve():
        raise SettingsError(f"{out} (--out): is the caption store --captions, which the cache would replace; "
                            "give the cache another file")
    records = read_store(args.captions).records
    texts = list(dict.fromkeys(c for r in records for c in r.captions))
    emb = embed_texts(texts, args.clip, out, batch_size=args.batch_size, device=device,
                      rebuild=args.rebuild, progress=not args.no_progress, setting="--clip")
    say(f"{len(texts)} distinct captions of {len(records)} videos -> {out} ({tuple(emb.shape)}, L2-normalised)")
    return 0
