"""Vision-free class descriptions from any OpenAI-compatible chat endpoint (paper Table 6a,
`tgmae describe-classes`).

Each class name goes into the CuPL-style prompts (`sources.CUPL_PROMPTS`), each sent
`--per-prompt` times to `POST {base_url}/chat/completions` (urllib; transient failures retried
with exponential backoff). The output JSON (`{class: [descriptions], "_meta": {...}}`) is
rewritten atomically after every class and its classes are skipped on a rerun, so a killed run
resumes.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from tgmae.captions.sources import CUPL_PROMPTS, META_KEY, DescriptionsError, validate_descriptions
from tgmae.atomic import atomic_write_text
from tgmae.data.annotations import class_key, class_text, refuse_unnamed_classes
from tgmae.errors import UserError
from tgmae.textfile import read_text

RETRY_STATUS = {408, 409, 425, 429, 500, 502, 503, 504}
SYSTEM_PROMPT = "You describe what actions look like, in one or two plain sentences."


class ChatEndpointError(RuntimeError, UserError):
    """The endpoint refused or kept failing; the message has the URL, status and body excerpt."""


class ChatClient:
    """Minimal client for `/chat/completions` of an OpenAI-compatible server.

    base_url: e.g. `http://localhost:8000/v1` (one ending in `/chat/completions` is used as is).
    api_key: sent as a Bearer token if given. timeout: seconds per request. retries: extra
    attempts after a transient failure, waiting backoff * 2**k seconds (or the server's numeric
    Retry-After) before attempt k+1.
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
            except OSError as e:  # URLError, timeouts, refused connections
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
            text = " ".join(self._content(self._post(payload)).split()).strip("\"' ")
            if text:
                return text
        raise ChatEndpointError(f"{self.url}: only empty answers for prompt {prompt!r}")

    def _content(self, reply: Any) -> str:
        """The answer text of a reply: `choices[0].message.content` as a string, null (""), or a
        list of content parts whose `type: text` parts' `text` are joined with spaces (other part
        types, e.g. images, are skipped). Any other shape raises ChatEndpointError naming the URL;
        a refusal (`message.refusal`, a `type: refusal` part) too, quoting it."""
        bad_shape = ChatEndpointError(f"{self.url}: unexpected reply shape: {json.dumps(reply)[:300]}")
        try:
            message = reply["choices"][0]["message"]
            content = message["content"]
        except (KeyError, IndexError, TypeError):
            raise bad_shape from None
        parts = content if isinstance(content, list) and all(isinstance(p, dict) for p in content) else []
        refusals = [r for r in [message.get("refusal")] + [p.get("refusal") for p in parts if p.get("type") == "refusal"]
                    if isinstance(r, str) and r.strip()]
        if refusals:  # OpenAI's refusal field / part: the model declined, the server is fine (re-trial 27A M4)
            raise ChatEndpointError(f"{self.url}: the model refused: {refusals[0].strip()!r}; change --model or "
                                    "the prompt")
        if content is None or isinstance(content, str):
            return content or ""
        if parts or content == []:
            texts = [p.get("text") for p in parts if p.get("type") == "text"]
            if all(isinstance(t, str) for t in texts):
                return " ".join(texts)
        raise bad_shape


def read_class_list(path: str | Path) -> list[str]:
    """One class name per line; blank lines and `#` comments are ignored. A name twice, or two
    that differ only in case, spaces or underscores (`class_key`: their descriptions would be
    looked up as one class's), is refused naming both lines; numbers only ("0", "1", ...: a
    model asked to describe "0") as classes without names are everywhere
    (`tgmae.data.annotations.refuse_unnamed_classes`; re-trial 30B S2)."""
    path = Path(path)
    if not path.is_file():
        raise DescriptionsError(f"classes file not found: {path}")
    lines = [(i, t.strip()) for i, t in enumerate(read_text(path).splitlines(), 1)]
    named = [(i, n) for i, n in lines if n and not n.startswith("#")]
    if not named:
        raise DescriptionsError(f"{path}: no class names")
    seen: dict[str, tuple[int, str]] = {}
    for i, n in named:
        j, m = seen.setdefault(class_key(n), (i, n))
        if m == n and j != i:
            raise DescriptionsError(f"{path}: class {n!r} is listed twice (lines {j} and {i})")
        if m != n:
            raise DescriptionsError(f"{path}: classes {m!r} and {n!r} (lines {j} and {i}) differ only in case, "
                                    "spaces or underscores, and would be looked up as one class; keep one")
    refuse_unnamed_classes([n for _, n in named], str(path), "tgmae describe-classes asks for each class's "
                           "descriptions by its name", "give the classes' names there")
    return [n for _, n in named]


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
        result[name] = [client.complete(p.replace("{}", class_text(name)), temperature, max_tokens)
                        for p in prompts for _ in range(per_prompt)]
        if on_class is not None:
            on_class(result)
    return {c: result[c] for c in class_names}


# What a descriptions file records of its run (`_meta`) and a resumed run must share: every setting
# that shapes the texts (the class name is each entry's key), with the flag that sets it; the key
# and the transport's timeout/retries do not change a text and are not recorded
SETTINGS = {"source": None, "base_url": "--base-url", "model": "--model", "prompts": "--prompt",
            "per_prompt": "--per-prompt", "temperature": "--temperature", "max_tokens": "--max-tokens",
            "system_prompt": None}
SOURCE = "vision-free"


def run_meta(client: ChatClient, prompts: Sequence[str], per_prompt: int, temperature: float,
             max_tokens: int) -> dict[str, Any]:
    """The `_meta` of descriptions asked of `client` with these settings (every SETTINGS key)."""
    return {"source": SOURCE, "model": client.model, "base_url": client.url.rsplit("/chat/", 1)[0],
            "prompts": list(prompts), "per_prompt": per_prompt, "temperature": temperature,
            "max_tokens": max_tokens, "system_prompt": SYSTEM_PROMPT}


def _difference(key: str, old: dict[str, Any], meta: dict[str, Any]) -> str:
    flag = f"{SETTINGS[key]}: " if SETTINGS[key] else ""
    if key not in old:
        return f"{flag}{key} unrecorded (a file written before it was recorded) (this run: {meta[key]!r})"
    return f"{flag}{key} {old[key]!r} (this run: {meta[key]!r})"


def read_existing(out: str | Path, meta: dict[str, Any], rebuild: bool = False) -> dict[str, list[str]]:
    """Every class's descriptions already in `out` ({} when it does not exist, or with `rebuild`).
    Raises DescriptionsError when it is not a descriptions file, or was made with other SETTINGS
    than `meta` (`run_meta`), naming each differing key and its flag; a key the file does not
    record counts as differing (its texts' setting is unknown), and a file of another source
    (no `_meta`, a synthetic data set's) is named by its source alone. `--rebuild` starts over."""
    out = Path(out)
    if rebuild or not out.exists():
        return {}
    try:
        loaded = json.loads(read_text(out))
    except json.JSONDecodeError as e:
        raise DescriptionsError(f"{out}:{e.lineno}: existing output is not valid JSON ({e.msg}); "
                                "move it away to start over") from None
    done, old = validate_descriptions(loaded, str(out))
    diff = [k for k in SETTINGS if k not in old or old[k] != meta[k]]
    if "source" in diff:  # not made by describe-classes: its other keys say nothing about its texts
        diff = ["source"]
    if diff:
        what = ", ".join(_difference(k, old, meta) for k in diff)
        raise DescriptionsError(f"{out} holds descriptions made otherwise: {what}; give this run another --out, "
                                "or pass --rebuild to replace the file")
    return done


def write_descriptions(path: str | Path, descriptions: dict[str, list[str]], meta: dict[str, Any]) -> None:
    obj = {META_KEY: meta, **descriptions}
    atomic_write_text(path, json.dumps(obj, indent=1, ensure_ascii=False) + "\n", fsync=True)


