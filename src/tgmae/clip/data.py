"""The synthetic set's splits as the CLIP tools read them (the mask quality check, the mask figures,
the study's CLIP training): one id per row of `<root>/<split>.csv`."""

from __future__ import annotations

import csv
from pathlib import Path

from tgmae.textfile import open_text


def read_split_ids(root: Path, split: str) -> list[str]:
    """Video ids of `root/<split>.csv` (`path,label,caption,video_id`; sets made before the
    video_id column: the file stem, which they used as the id)."""
    path = root / f"{split}.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {root} a synthetic set (`tgmae synth`)?")
    return list_ids(path)


def list_ids(path: Path) -> list[str]:
    """Video ids of a synthetic set's list file (`read_split_ids`' rule), in its order."""
    with open_text(path) as f:
        return [row.get("video_id") or Path(row["path"]).stem for row in csv.DictReader(f)]
