"""`tgmae describe-classes --classes classes.txt --out descriptions.json --base-url URL`: vision-free
class descriptions from an OpenAI-compatible chat endpoint (`tgmae.captions.describe`; resumable)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

from tgmae.captions.describe import (CUPL_PROMPTS, ChatClient, describe_classes, read_class_list, read_existing,
                                     run_meta, write_descriptions)
from tgmae.errors import SettingsError
from tgmae.locks import hold, refuse_inside_run
from tgmae.commands.args import Parser, say


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = Parser(prog="tgmae describe-classes",
               description="Vision-free class descriptions from an OpenAI-compatible chat endpoint.")
    p.add_argument("--classes", required=True, help="text file, one class name per line")
    p.add_argument("--out", required=True, help="descriptions JSON (resumed if it exists)")
    p.add_argument("--rebuild", action="store_true",
                   help="replace an existing --out made with other settings (endpoint, model, prompts, per-prompt, "
                   "temperature, max-tokens) or by another tool")
    p.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", ""),
                   help="endpoint base, e.g. https://api.openai.com/v1 (default: $OPENAI_BASE_URL)")
    p.add_argument("--model", default=os.environ.get("TGMAE_CHAT_MODEL", "gpt-3.5-turbo"), help="chat model name")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the key")
    p.add_argument("--api-key", default="", help="the key itself (prefer --api-key-env: argv is visible to others)")
    p.add_argument("--per-prompt", type=int, default=10, help="answers per prompt and class")
    p.add_argument("--prompt", action="append", default=None,
                   help="prompt template with {} for the class (repeatable; default: the 3 of Table 6a)")
    p.add_argument("--temperature", type=float, default=0.99)
    p.add_argument("--max-tokens", type=int, default=60)
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--retries", type=int, default=5)
    p.add_argument("--backoff", type=float, default=1.0, help="first retry wait in seconds (doubles)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(list(argv))
    if args.per_prompt < 1:
        p.error("--per-prompt must be >= 1")
    if args.prompt and any("{}" not in t for t in args.prompt):
        p.error("each --prompt needs {} where the class name goes")
    return args


def main(argv: Sequence[str]) -> int:
    args = _parse(argv)
    refuse_inside_run(args.out, "--out")  # before any request: a run's files are not replaced or mixed with
    if Path(args.out).resolve() == Path(args.classes).resolve():
        raise SettingsError(f"{args.out} (--out): is the class list --classes, which the descriptions would "
                            "replace; give them another file")
    with hold(args.out, "--out", folder=False):
        return _describe(args)


def _describe(args: argparse.Namespace) -> int:
    prompts = tuple(args.prompt or CUPL_PROMPTS)
    out = Path(args.out)
    names = read_class_list(args.classes)
    client = ChatClient(args.base_url, args.model, args.api_key or os.environ.get(args.api_key_env, ""),
                        timeout=args.timeout, retries=args.retries, backoff=args.backoff)
    meta = run_meta(client, prompts, args.per_prompt, args.temperature, args.max_tokens)  # never the key
    existing = read_existing(out, meta, rebuild=args.rebuild)  # classes of other runs are kept, in place
    done = {c: d for c, d in existing.items() if c in names}
    result = describe_classes(names, client, prompts, args.per_prompt, done,
                              on_class=lambda r: write_descriptions(out, {**existing, **r}, meta),
                              progress=not args.no_progress, temperature=args.temperature,
                              max_tokens=args.max_tokens)
    write_descriptions(out, {**existing, **result}, meta)
    others = sorted(c for c in existing if c not in result)  # an earlier run's: eval.class_descriptions skips them
    kept = (f"; it also keeps {len(others)} class(es) of earlier runs not in --classes: {', '.join(others[:5])}"
            + (" ..." if len(others) > 5 else "")) if others else ""
    say(f"{len(result)} classes x {len(prompts) * args.per_prompt} descriptions -> {out} "
          f"({len(done)} were already there{kept})")
    return 0
