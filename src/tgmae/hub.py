"""Loading transformers models by hub id or local path, cache first, with a clear message offline.

Only a cache miss goes to the hub, and only when it is not switched off and answers a quick
connection (`hub_reachable`); otherwise `ModelUnavailableError` says how to provide the model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, TypeVar

from tgmae.errors import UserError

T = TypeVar("T")


class ModelUnavailableError(RuntimeError, UserError):
    """The weights/config/processor of a model cannot be found; the message says what to do."""


def hub_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


HUB_CONNECT_TIMEOUT = 3.0  # seconds to open a TCP connection to the hub before calling it unreachable


def hub_reachable(timeout: float = HUB_CONNECT_TIMEOUT) -> bool:
    """True when a TCP connection to the hub (HF_ENDPOINT, default https://huggingface.co) opens
    within `timeout` seconds (name lookup included)."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    host = url.hostname or "huggingface.co"
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def looks_like_path(name: str) -> bool:
    """A local directory rather than a hub id (`org/name` or `name`); `runs/clip` is a path when
    the folder `runs` exists here."""
    return (
        name.startswith(("/", "./", "../", "~"))
        or name.endswith("/")
        or name.count("/") > 1
        or "\\" in name
        or Path(name).expanduser().exists()
        or (name.count("/") == 1 and Path(name.split("/")[0]).expanduser().is_dir())
    )


def model_name(name: str) -> str:
    """One spelling per model, for records and comparisons: a local folder's resolved absolute path
    (`blip`, `./blip/` and /abs/blip are one model), a hub id (no such folder here) as written."""
    if not name:
        return name
    path = Path(name).expanduser()
    return str(path.resolve()) if path.is_dir() else name


def same_model(a: str, b: str, weights_a: Optional[str] = None, weights_b: Optional[str] = None) -> bool:
    """Whether `a` and `b` name one model (`model_name`), or, where their `weights_fingerprint`s
    are given, hold the same files under two names: a folder an older tgmae recorded as typed
    (relative to a working directory it no longer names from here: re-trial 29B M1), moved, or a
    hub id's files saved to a folder. The fingerprint covers every file that shapes the outputs."""
    return a == b or model_name(a) == model_name(b) or bool(weights_a) and weights_a == weights_b


def unavailable_message(name: str, what: str, cause: str = "") -> str:
    hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    lines = [
        f"cannot load {what} {name!r}: it is not a local model directory and its files are not in "
        f"the Hugging Face cache (HF_HOME={hf_home})"
        + (", and the hub is switched off (HF_HUB_OFFLINE=1)." if hub_offline() else
           ", and the hub could not be reached (no network?)."),
        "Provide it in one of these ways:",
        f"  1. pass a local directory written by save_pretrained (config.json, weights, "
        f"processor/tokenizer files) instead of {name!r};",
        "  2. point HF_HOME at a Hugging Face cache that already holds the model;",
        f"  3. on a machine with internet: `huggingface-cli download {name}` (or `hf download {name}`),"
        " then copy that machine's HF_HOME/hub folder here, or use `--local-dir DIR` and pass DIR.",
    ]
    if cause:
        lines.append(f"(last error: {cause.strip().splitlines()[0][:300]})")
    return "\n".join(lines)


# the small JSON files of a save_pretrained folder that transformers reads while loading a model,
# tokenizer or processor; each must be one JSON object (`unreadable_model_file`)
MODEL_JSON_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json", "preprocessor_config.json", "processor_config.json",
                    "generation_config.json", "chat_template.json", "vocab.json")


def unreadable_model_file(folder: Path) -> Optional[tuple[Path, str]]:
    """The first of `folder`'s MODEL_JSON_FILES that exists but is not UTF-8, not JSON or not a JSON
    object, with the reason in a few words (the parser's first line); None when all parse."""
    import json

    for name in MODEL_JSON_FILES:
        f = folder / name
        if not f.is_file():
            continue
        try:
            data = json.loads(f.read_bytes().decode("utf-8"))
        except UnicodeDecodeError as e:
            return f, f"not UTF-8 text: {e.reason} at byte {e.start}"
        except ValueError as e:
            return f, f"not valid JSON: {(str(e).splitlines() or ['?'])[0][:200]}"
        except OSError as e:
            return f, e.strerror or str(e)
        if not isinstance(data, dict):
            return f, f"a JSON {type(data).__name__}, not an object"
    return None


def _local_failure(path: Path, what: str, setting: str, e: BaseException) -> Optional[ModelUnavailableError]:
    """The ModelUnavailableError for a failed load of the local folder `path`: naming the file that
    cannot be read when one of its JSON files does not parse, else the folder (an OSError or
    ValueError of transformers: not a saved model), else the tokenizer.json that the tokenizers
    library rejected (its bare Exception). None: an error of ours, raised as it is."""
    by = f" ({setting})" if setting else ""
    bad = unreadable_model_file(path)
    if bad is None and type(e) is Exception and (path / "tokenizer.json").is_file():
        # tokenizers' (Rust) parse errors are plain Exceptions, and tokenizer.json is the one file
        # of the folder it reads: a damaged or hand-edited one, not a bug of ours
        bad = path / "tokenizer.json", (str(e).strip().splitlines() or ["unreadable"])[0][:300]
    if bad is not None:
        return ModelUnavailableError(
            f"cannot load {what} from {str(path)!r}{by}: its file {str(bad[0])!r} cannot be read ({bad[1]}); "
            "fix or re-save it (save_pretrained), or give another folder")
    if isinstance(e, (OSError, ValueError)):
        cause = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(":. ")[:300]
        return ModelUnavailableError(
            f"cannot load {what} from {str(path)!r}{by}: the folder is not a complete saved "
            f"transformers model ({cause}); give {setting or 'it'} a folder written by save_pretrained "
            "or a hub id")
    return None


def load_pretrained(loader: Callable[..., T], name: str, what: str = "model", setting: str = "",
                    **kwargs: Any) -> T:
    """`loader(name, **kwargs)` (e.g. `AutoProcessor.from_pretrained`) cache-first, explained on failure.

    setting: the key or flag that named the model (`--clip`, `captions.clip_model`), named in the
    errors. A local folder whose load fails is a ModelUnavailableError naming the file that cannot
    be read when one of its JSON files (MODEL_JSON_FILES) is not UTF-8 / JSON / an object, or whose
    tokenizer.json the tokenizers library rejects (its bare Exception); else naming the folder
    when it is not such a model (empty, a run folder, a video model without a tokenizer:
    transformers' OSError or ValueError)."""
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelUnavailableError(
                f"cannot load {what} {name!r}: no such file or directory. Pass {setting or 'it'} an existing "
                "folder written by save_pretrained, or a hub id such as 'org/model'."
            )
        try:
            return loader(str(path), **kwargs)
        except Exception as e:  # noqa: BLE001 - sorted by _local_failure; ours are raised as they are
            failure = _local_failure(path, what, setting, e)
            if failure is None:
                raise
            raise failure from None
    try:
        return loader(name, local_files_only=True, **kwargs)
    except OSError as e:
        first_error = str(e)
    if hub_offline() or not hub_reachable():  # fail now, not after the hub client's retries
        raise ModelUnavailableError(unavailable_message(name, what, first_error))
    try:
        return loader(name, **kwargs)
    except OSError as e:  # huggingface_hub's HTTP/connection errors are OSErrors too
        raise ModelUnavailableError(unavailable_message(name, what, str(e))) from None


def quiet_transformers() -> Callable[[], None]:
    """Silence transformers' load reports (unused vision weights etc.); returns the restorer."""
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    return lambda: hf_logging.set_verbosity(level)


_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# The small files besides the weights that shape a model's outputs (architecture, tokenizer,
# image/video processor, generation defaults, a sentence-transformers pooling); a README or a
# training summary in the same folder does not.
_SHAPING_FILES = ("config.json", "generation_config.json", "preprocessor_config.json", "processor_config.json",
                  "video_preprocessor_config.json", "tokenizer.json", "tokenizer_config.json",
                  "special_tokens_map.json", "added_tokens.json", "chat_template.json", "chat_template.jinja",
                  "merges.txt", "spiece.model", "tokenizer.model", "sentencepiece.bpe.model", "modules.json",
                  "sentence_bert_config.json", "config_sentence_transformers.json")
_SHAPING_GLOBS = ("vocab*", "*Pooling/config.json")
_SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
FINGERPRINT_CACHE = "weights_fingerprints"  # folder in the user cache: one small file per weight file seen
_file_digests: dict[tuple, str] = {}  # file key -> sha256 of its bytes, this process


def projection_fingerprint(tensors: Sequence[Any]) -> str:
    """16 hex digits of sha256 over the tensors' float32 bytes, in order."""
    import hashlib

    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _local_weight_files(root: Path) -> list[Path]:
    """Every weight file transformers may load from a saved folder: single files and shards."""
    found = {root / f for f in _WEIGHT_FILES if (root / f).is_file()}
    found |= {*root.glob("model-*-of-*.safetensors"), *root.glob("pytorch_model-*-of-*.bin")}
    return sorted(found)


def _weight_files(name_or_path: str) -> list[Path]:
    if looks_like_path(name_or_path):
        return _local_weight_files(Path(name_or_path).expanduser())
    import json

    from transformers.utils import cached_file

    def cached(name: str) -> Optional[str]:
        try:
            return cached_file(name_or_path, name, local_files_only=True,
                               _raise_exceptions_for_missing_entries=False)
        except OSError:
            return None

    for name in _WEIGHT_FILES:
        if path := cached(name):
            return [Path(path)]
    for index in _SHARD_INDEXES:  # a sharded hub model: the shards its index names
        if path := cached(index):
            shards = sorted(set(json.loads(Path(path).read_text()).get("weight_map", {}).values()))
            files = [cached(s) for s in shards]
            return [Path(f) for f in files] if files and all(files) else []
    return []


def _shaping_files(root: Path) -> list[Path]:
    """The `_SHAPING_FILES` / `_SHAPING_GLOBS` present in a model folder (a hub id's cached
    snapshot: only the files downloaded, the ones a local_files_only load reads)."""
    found = {root / f for f in _SHAPING_FILES if (root / f).is_file()}
    found |= {p for g in _SHAPING_GLOBS for p in root.glob(g) if p.is_file()}
    return sorted(found)


def _hash_file(path: Path) -> str:
    """sha256 hex of a file's bytes, read in 4 MiB blocks (~0.5 s per 500 MB here)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _file_digest(path: Path) -> str:
    """`_hash_file`, remembered (this process, and the user cache: `user_cache.remember`) by the
    file's real path, size, mtime, inode and ctime: a file rewritten or replaced changes one of them
    and is read again."""
    from tgmae.user_cache import remember, remembered

    real = os.path.realpath(path)
    st = os.stat(real)
    key = (real, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)
    if key in _file_digests:
        return _file_digests[key]
    digest = remembered(FINGERPRINT_CACHE, list(key))
    if not isinstance(digest, str):
        digest = _hash_file(Path(real))
        remember(FINGERPRINT_CACHE, list(key), digest)
    _file_digests[key] = digest
    return digest


def weights_fingerprint(name_or_path: str) -> Optional[str]:
    """16 hex digits of sha256 over a saved model's files that shape its outputs: every weight file
    (sha256 of its bytes, remembered by its identity (`_file_digest`), so only new or rewritten
    files are read) and the small files beside them, hashed by content each time: config.json,
    the tokenizer's and processor's files, generation_config.json, a sentence pooling config
    (`_SHAPING_FILES`). Relative name and digest, in name order; None when no weight file is local.
    Any tensor saved anew into the same folder (a retrained text tower too) or a tokenizer edited
    in place (a new model_max_length) changes it; caches of model outputs are keyed by it."""
    import hashlib

    files = _weight_files(name_or_path)
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.name}\0{_file_digest(f)}\n".encode())
    root = files[0].parent  # the folder, or a hub id's snapshot folder
    for f in _shaping_files(root):
        h.update(f"{f.relative_to(root).as_posix()}\0{hashlib.sha256(f.read_bytes()).hexdigest()}\n".encode())
    return h.hexdigest()[:16]
