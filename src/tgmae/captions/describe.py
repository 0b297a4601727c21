"""Vision-free class descriptions from any OpenAI-compatible chat endpoint (paper Table 6a).

Each class name is put into the three CuPL-style prompts (`sources.CUPL_PROMPTS`) and each
prompt is sent `--per-prompt` times to `POST {base_url}/chat/completions`; the answers become
the class's descriptions. The output JSON (`{class: [descriptions], "_meta": {...}}`) is
rewritten atomically after every class, and classes already in it are skipped, so a killed run
resumes. Only the standard library talks to the endpoint (urllib); transient failures (timeouts,
connection errors, HTTP 408/409/429/5xx) are retried with exponential backoff.

    tgmae describe-classes --classes classes.txt --out descriptions.json \
        --base-url https://api.openai.com/v1 --model gpt-3.5-turbo --per-prompt 10
The key comes from `--api-key`, else the variable named by `--api-key-env` (default
OPENAI_API_KEY); local servers may need none.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tgmae.captions.sources import (CUPL_PROMPTS, META_KEY, DescriptionsError, class_text,
                                    validate_descriptions)
from tgmae.atomic import atomic_write_text

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
SYSTEM_PROMPT = "You describe what actions look like, in one or two plain sentences."


class ChatEndpointError(RuntimeError):
    """The endpoint refused or kept failing; the message has the URL, status and body excerpt."""


class ChatClient:
    """Minimal client for `/chat/completions` of an OpenAI-compatible server.

    base_url: e.g. `https://api.openai.com/v1` or `http://localhost:8000/v1` (a URL already
      ending in `/chat/completions` is used as is). api_key: sent as a Bearer token if given.
    timeout: seconds per request. retries: extra attempts after a transient failure, waiting
      backoff * 2**k seconds (or the server's numeric Retry-After) before attempt k+1.
    """

    def __init__(self, base_url: str, model: str, api_key: str = "", timeout: float = 60.0,
                 retries: int = 5, backoff: float = 1.0, sleep: Callable[[float], None] = time.sleep):
        if not base_url:
            raise ChatEndpointError("no endpoint: pass --base-url or set OPENAI_BASE_URL")
        base = base_url.rstrip("/")
        self.url = base if base.endswith("/chat/completions") else base + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.timeout, self.retries, self.backoff, self._sleep = timeout, retries, backoff, sleep

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        last = ""
        for attempt in range(self.retries + 1):
            wait = self.backoff * (2 ** attempt)
            try:
                req = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    body = resp.read().decode("utf-8", errors="replace")
                try:
                    return json.loads(body)
                except json.JSONDecodeError:
                    last = f"response is not JSON: {body[:200]!r}"
            except urllib.error.HTTPError as e:
                body = e.read().decode("utf-8", errors="replace")[:300]
                last = f"HTTP {e.code}: {body}"
                if e.code not in RETRY_STATUS:
                    raise ChatEndpointError(f"{self.url}: {last}") from None
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.strip().replace(".", "", 1).isdigit():
                    wait = min(float(retry_after), 300.0)
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                reason = getattr(e, "reason", e)
                last = f"{type(reason).__name__}: {reason}"
            if attempt < self.retries:
                self._sleep(wait)
        raise ChatEndpointError(f"{self.url}: failed after {self.retries + 1} attempts ({last})")

    def complete(self, prompt: str, temperature: float = 0.99, max_tokens: int = 60) -> str:
        """One answer text for a user prompt (whitespace collapsed, surrounding quotes removed)."""
        payload = {
            "model": self.model,
            "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt}],
            "temperature": temperature,
            "max_tokens": max_tokens,
            "n": 1,
        }
        for _ in range(self.retries + 1):
            reply = self._post(payload)
            try:
                text = reply["choices"][0]["message"]["content"]
            except (KeyError, IndexError, TypeError):
                raise ChatEndpointError(f"{self.url}: unexpected reply shape: {json.dumps(reply)[:300]}") from None
            text = " ".join(str(text or "").split()).strip("\"' ")
            if text:
                return text
        raise ChatEndpointError(f"{self.url}: only empty answers for prompt {prompt!r}")


def read_class_list(path: str | Path) -> list[str]:
    """One class name per line; blank lines and `#` comments are ignored."""
    path = Path(path)
    if not path.is_file():
        raise DescriptionsError(f"classes file not found: {path}")
    names = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    names = [n for n in names if n and not n.startswith("#")]
    if not names:
        raise DescriptionsError(f"{path}: no class names")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise DescriptionsError(f"{path}: class {dup!r} is listed twice")
    return names


def describe_classes(class_names: Sequence[str], client: ChatClient, prompts: Sequence[str] = CUPL_PROMPTS,
                     per_prompt: int = 10, done: Optional[dict[str, list[str]]] = None,
                     on_class: Optional[Callable[[dict[str, list[str]]], None]] = None,
                     progress: bool = False, temperature: float = 0.99, max_tokens: int = 60) -> dict[str, list[str]]:
    """class -> len(prompts) * per_prompt descriptions. Classes in `done` are kept, not asked
    again; `on_class(result)` runs after each new class (used to save progress)."""
    from tqdm import tqdm

    result = dict(done or {})
    todo = [c for c in class_names if c not in result]
    for name in tqdm(todo, desc="describing classes", unit="class", disable=not progress):
        texts = []
        for p in prompts:
            prompt = p.replace("{}", class_text(name))
            texts.extend(client.complete(prompt, temperature, max_tokens) for _ in range(per_prompt))
        result[name] = texts
        if on_class is not None:
            on_class(result)
    return {c: result[c] for c in class_names}


def write_descriptions(path: str | Path, descriptions: dict[str, list[str]], meta: dict[str, Any]) -> None:
    obj = {META_KEY: meta, **descriptions}
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n", fsync=True)


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="tgmae describe-classes",
                                description="vision-free class descriptions from an OpenAI-compatible chat endpoint")
    p.add_argument("--classes", required=True, help="text file, one class name per line")
    p.add_argument("--out", required=True, help="descriptions JSON (resumed if it exists)")
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
    prompts = tuple(args.prompt or CUPL_PROMPTS)
    out = Path(args.out)
    try:
        names = read_class_list(args.classes)
        done: dict[str, list[str]] = {}
        if out.exists():
            try:
                loaded = json.loads(out.read_text(encoding="utf-8"))
            except json.JSONDecodeError as e:
                raise DescriptionsError(f"{out}:{e.lineno}: existing output is not valid JSON ({e.msg}); "
                                        "move it away to start over") from None
            done, _ = validate_descriptions(loaded, str(out))
            done = {c: d for c, d in done.items() if c in names}
        client = ChatClient(args.base_url, args.model, args.api_key or os.environ.get(args.api_key_env, ""),
                            timeout=args.timeout, retries=args.retries, backoff=args.backoff)
        meta = {"source": "vision-free", "model": args.model, "base_url": client.url.rsplit("/chat/", 1)[0],
                "prompts": list(prompts), "per_prompt": args.per_prompt, "temperature": args.temperature}
        result = describe_classes(names, client, prompts, args.per_prompt, done,
                                  on_class=lambda r: write_descriptions(out, r, meta),
                                  progress=not args.no_progress, temperature=args.temperature,
                                  max_tokens=args.max_tokens)
        write_descriptions(out, result, meta)
    except (DescriptionsError, ChatEndpointError) as e:
        print(f"tgmae describe-classes: {e}", file=sys.stderr)
        return 2
    print(f"{len(result)} classes x {len(prompts) * args.per_prompt} descriptions -> {out} "
          f"({len(done)} were already there)")
    return 0
