"""Loading transformers models by hub id or local path, with a clear message when offline.

A cached or local model loads without touching the network (`local_files_only=True` first);
only a miss goes to the hub, and only when `HF_HUB_OFFLINE` is not set. When nothing works,
`ModelUnavailableError` names the model and the ways to provide it, instead of a stack trace.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, TypeVar

from tgmae.errors import UserError

T = TypeVar("T")


class ModelUnavailableError(RuntimeError, UserError):
    """The weights/config/processor of a model cannot be found; the message says what to do."""


def hub_offline() -> bool:
    return any(os.environ.get(k, "").lower() in ("1", "true", "yes", "on")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def looks_like_path(name: str) -> bool:
    """A local directory rather than a hub id (`org/name` or `name`). `runs/clip` is a path when
    the folder `runs` exists here (a missing model folder inside it is then reported at once,
    not tried on the hub)."""
    return (
        name.startswith(("/", "./", "../", "~"))
        or name.endswith("/")
        or name.count("/") > 1
        or "\\" in name
        or Path(name).expanduser().exists()
        or (name.count("/") == 1 and Path(name.split("/")[0]).expanduser().is_dir())
    )


def unavailable_message(name: str, what: str, cause: str = "") -> str:
    hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
    lines = [
        f"cannot load {what} {name!r}: it is not a local model directory and its files are not in "
        f"the Hugging Face cache (HF_HOME={hf_home})"
        + (", and the hub is switched off (HF_HUB_OFFLINE=1)." if hub_offline() else
           ", and the hub could not be reached."),
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


def load_pretrained(loader: Callable[..., T], name: str, what: str = "model", **kwargs: Any) -> T:
    """`loader(name, **kwargs)` (e.g. `AutoProcessor.from_pretrained`) cache-first, explained on failure."""
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise ModelUnavailableError(
                f"cannot load {what} {name!r}: no such file or directory. Pass an existing folder "
                "written by save_pretrained, or a hub id such as 'org/model'."
            )
        try:
            return loader(str(path), **kwargs)
        except OSError as e:
            raise ModelUnavailableError(
                f"cannot load {what} from {str(path)!r}: the folder is not a complete saved "
                f"transformers model ({str(e).strip().splitlines()[0][:300]})"
            ) from None
    try:
        return loader(name, local_files_only=True, **kwargs)
    except OSError as e:
        first_error = str(e)
    if hub_offline():
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
