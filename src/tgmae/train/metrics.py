"""Run metrics: JSONL (always) and TensorBoard events in `<train.output_dir>/tensorboard/` (when
the package is installed: `pip install -e ".[tensorboard]"`)."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Optional

from tgmae.atomic import atomic_write_text, write_failure

log = logging.getLogger("tgmae")


_warned: list[bool] = []


def _warn_no_tensorboard(path: Path) -> None:
    """One warning per process: log.tensorboard=true but the package is missing."""
    if not _warned:
        _warned.append(True)
        log.warning("log.tensorboard=true but tensorboard is not installed: metrics go to %s only. "
                    "Install it from the repository folder with `pip install -e \".[tensorboard]\"` "
                    "(or set log.tensorboard=false)", path)


class MetricsLog:
    """Append-only JSONL of metric records; only rank 0 writes. On resume, records past the
    resumed step are dropped first, so the log reads like an uninterrupted run's."""

    def __init__(self, path: Path, enabled: bool = True, tensorboard: bool = False,
                 resume_step: Optional[int] = None):
        self.path = Path(path)
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            self._truncate_after(resume_step)
        else:
            self.path.unlink(missing_ok=True)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard not installed: JSONL only, said once per process
                _warn_no_tensorboard(self.path)
            else:
                self._tb = SummaryWriter(log_dir=str(self.path.parent / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # torn last line from a kill
            if rec.get("step", 0) <= step:
                kept.append(line)
        atomic_write_text(self.path, "".join(k + "\n" for k in kept))  # a kill now keeps the log

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        clean = {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in ("step", "epoch") else v)
                 for k, v in record.items()}
        try:
            with open(self.path, "a") as f:
                f.write(json.dumps(clean) + "\n")
        except OSError as e:  # a full disk: name the log (a write error names no file)
            raise (write_failure(e, self.path) or e) from e
        if self._tb is not None:
            step = int(record.get("step", 0))
            for k, v in clean.items():
                if k not in ("step", "epoch") and isinstance(v, float) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: Path) -> list[dict]:
    """All complete records of a metrics log (a torn last line is skipped)."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
