"""Hardware-dependent choices made by a short measurement, cached per machine and torch version.

CPU flags do not predict the fastest kernel (docs/benchmarks.md), so `choose` times the candidates
once, alternating (CPU: process time; CUDA: synchronized wall time), and stores the fastest in
`autotune.json` in the user cache folder (`tgmae.user_cache`); delete it to measure again.
`TGMAE_AUTOTUNE=off` disables measuring (callers get their default). Choices are made at set-up,
never inside a forward pass; explicit config values bypass this module.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import time
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Optional

import torch

from tgmae.atomic import atomic_write_text
from tgmae.errors import env_switch
from tgmae.user_cache import cache_root

log = logging.getLogger(__name__)

SWITCH_ENV = "TGMAE_AUTOTUNE"
CACHE_FILE = "autotune.json"

_memo: dict[tuple[str, str], str] = {}  # (machine key, choice name) -> choice, this process


def cache_path() -> Optional[Path]:
    """autotune.json in the user cache folder; None with `TGMAE_CACHE_DIR=off` (memory only)."""
    root = cache_root()
    return None if root is None else root / CACHE_FILE


def enabled() -> bool:
    """False when $TGMAE_AUTOTUNE is off (0/false/no): no measurements, callers use their
    defaults. SettingsError for a value neither on nor off (`errors.env_switch`)."""
    return env_switch(SWITCH_ENV)


@lru_cache(maxsize=1)
def cpu_info() -> tuple[str, tuple[str, ...]]:
    """(CPU model name, sorted CPU flags) from /proc/cpuinfo; platform fallbacks elsewhere."""
    first: dict[str, str] = {}  # each key's value on the first CPU
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            first.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    flags = tuple(sorted((first.get("flags") or first.get("Features") or "").split()))  # x86 / ARM
    return first.get("model name") or platform.processor() or platform.machine(), flags


def machine_key(device: torch.device) -> str:
    """What a measured choice belongs to: the hardware and the torch version. CPU: model name,
    sha1(sorted flags)[:12] (one model name can hide other flags under a hypervisor) and torch's
    thread count; CUDA: the device name and capability."""
    device = torch.device(device)
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(idx)
        hw = f"cuda:{torch.cuda.get_device_name(idx)} sm{major}{minor}"
    else:
        model, flags = cpu_info()
        flag_hash = hashlib.sha1(" ".join(flags).encode()).hexdigest()[:12]
        hw = f"{device.type}:{model} flags:{flag_hash} threads:{torch.get_num_threads()}"
    return f"{hw} | torch {torch.__version__}"


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    """A broken or unwritable cache file is said once per process, not once per choice."""
    if message not in _warned:
        _warned.add(message)
        log.warning(message)


def _load() -> dict:
    path = cache_path()
    if path is None:
        return {}
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        _warn_once(f"autotune cache {path} unreadable ({e}): measuring again")
        return {}
    if not isinstance(data, dict):
        _warn_once(f"autotune cache {path} is not a JSON object: measuring again")
        return {}
    # a machine's entry that is not an object (hand-edited, another version) is dropped, not trusted
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def _store(key: str, name: str, entry: dict) -> None:
    """Merge one entry into the cache file (atomic replace; a failure only costs a re-measure)."""
    path = cache_path()
    if path is None:
        return
    try:
        data = _load()
        data.setdefault(key, {})[name] = entry
        atomic_write_text(path, json.dumps(data, indent=1, sort_keys=True))
    except OSError as e:
        _warn_once(f"autotune cache {path} not written ({e}): choices last this process only")


def time_candidates(candidates: dict[str, Callable[[], object]], rounds: int = 5,
                    sync: Callable[[], None] = lambda: None,
                    clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """{name: seconds on `clock`}: each candidate warmed up once, then timed `rounds` times,
    alternating (order reversed every round); the minimum per candidate (the undisturbed cost:
    on a shared machine other jobs only ever add time)."""
    for fn in candidates.values():
        fn()
    sync()
    times: dict[str, list[float]] = {k: [] for k in candidates}
    names = list(candidates)
    for r in range(rounds):
        for k in names if r % 2 == 0 else names[::-1]:
            t0 = clock()
            candidates[k]()
            sync()
            times[k].append(clock() - t0)
    return {k: min(v) for k, v in times.items()}


def choose(name: str, candidates: dict[str, Callable[[], object]], device: torch.device,
           default: str, rounds: int = 5, margin: float = 0.0) -> str:
    """The fastest of `candidates` for `name` on this machine, measured once and cached.

    Args:
        name: what is chosen, with every shape it depends on (e.g. "attention/bf16/d64/n2048").
        candidates: {choice: zero-argument callable doing the work once}.
        device: where the work runs (part of the cache key; CUDA work is synchronized).
        default: returned when autotuning is off, and preferred unless another candidate is
            faster by more than `margin` (a fraction).
        rounds: timed calls per candidate.
    Returns the chosen key of `candidates`.
    """
    known = lookup(name, device, candidates)
    if known is not None:
        return known
    if not enabled():
        return default
    key = machine_key(device)
    device = torch.device(device)
    t0 = time.perf_counter()
    if device.type == "cuda":
        times = time_candidates(candidates, rounds, torch.cuda.synchronize)
    else:  # this process's CPU time: other jobs on a shared machine barely move it (wall does)
        times = time_candidates(candidates, rounds, clock=time.process_time)
    best = min(times, key=times.get)
    if default in times and times[best] > times[default] * (1.0 - margin):
        best = default
    _memo[(key, name)] = best
    _store(key, name, dict(choice=best, seconds=times, rounds=rounds,
                           measured_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())))
    log.info("autotune %s: %s (measured in %.2f s: %s; %s)", name, best, time.perf_counter() - t0,
             ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in times.items()), key)
    return best


def lookup(name: str, device: torch.device, choices: Optional[Iterable[str]] = None) -> Optional[str]:
    """The choice made for `name` on this machine (memo, then the cache file unless autotuning is
    off) or None; never measures. A stored choice outside `choices` is ignored."""
    key = machine_key(device)
    memo = _memo.get((key, name))
    if memo is not None:
        return memo
    if not enabled():
        return None
    entry = _load().get(key, {}).get(name)
    choice = entry.get("choice") if isinstance(entry, dict) else None
    if choice is None or (choices is not None and choice not in choices):
        return None
    _memo[(key, name)] = choice
    log.info("autotune %s: %s (cached in %s)", name, choice, cache_path())
    return choice


def cached_choices(device: Optional[torch.device] = None) -> dict[str, str]:
    """{choice name: choice} known for this machine (process memo and cache file)."""
    key = machine_key(device or torch.device("cpu"))
    out = {n: e["choice"] for n, e in _load().get(key, {}).items() if isinstance(e, dict) and "choice" in e}
    out.update({n: c for (k, n), c in _memo.items() if k == key})
    return out


def forget() -> None:
    """Drop this process's memo and warnings (the cache file stays): the next `choose` reads the file."""
    _memo.clear()
    _warned.clear()
