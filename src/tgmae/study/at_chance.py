"""Which of a study report's figures a random guesser reaches often ("at chance").

Every FT / LP top-1 and retrieval recall gets the 95% band of a guesser on the same queries
(`tgmae.evaluate.chance`): top-1 over `num_val` videos and `num_classes` classes; a recall over the
band `evaluate_retrieval` stored (older records: one relevant class prompt per video). A mean over
s seeds is compared with the band of s x n queries. Figures inside are marked "(at chance)".
"""

from __future__ import annotations

from typing import Optional, Sequence

from tgmae.evaluate.chance import ChanceBand, accuracy_band, band, recall_chance

TOP1 = {"FT top-1": "finetune_top1", "LP top-1": "linear_probe_top1"}
RECALL = {"V->T": "video_to_text", "T->V": "text_to_video"}


def _recall_key(header: str) -> Optional[tuple[str, int]]:
    """"V->T R@5" -> ("video_to_text", 5); None for a top-1 column."""
    direction, _, k = header.partition(" R@")
    return (RECALL[direction], int(k)) if direction in RECALL and k.isdigit() else None


def record_band(record: dict, header: str, num_val: Optional[int] = None) -> Optional[ChanceBand]:
    """The guesser's band for one record's figure under `header` (a report column); None when the
    record does not say over how many queries it was measured. `num_val`: the study's validation
    size for records that do not carry their own (the supervised reference has no probe)."""
    if header in TOP1:
        n, classes = record.get("num_val") or num_val, record.get("num_classes")
        return accuracy_band(int(n), int(classes)) if n and classes else None
    key = _recall_key(header)
    retrieval = record.get("retrieval") or {}
    if key is None or not retrieval:
        return None
    direction, k = key
    stored = ((retrieval.get("chance") or {}).get(direction) or {}).get(f"R@{k}")
    if stored:
        return ChanceBand.from_dict(stored)
    if retrieval.get("mode") != "classes":  # a caption gallery's relevance was not recorded
        return None
    videos, texts = int(retrieval["num_videos"]), int(retrieval["num_texts"])
    if direction == "video_to_text":  # ranked among every text (a record without the gallery size: num_texts)
        return band([recall_chance(int(retrieval.get("num_gallery_texts") or texts), 1, k)] * videos)
    return band([recall_chance(videos, round(videos / texts), k)] * texts)


def pooled_band(runs: Sequence[dict], header: str, num_val: Optional[int] = None) -> Optional[ChanceBand]:
    """The band of a mean over `runs` (seeds): the guesser's score over all their queries
    (binomial at the runs' mean hit probability); None when a run's band is unknown."""
    bands = [record_band(r, header, num_val) for r in runs]
    if not bands or any(b is None for b in bands):
        return None
    if len(bands) == 1:
        return bands[0]
    n = sum(b.n for b in bands)
    return band([sum(b.p * b.n for b in bands) / n] * n)


def band_text(b: ChanceBand) -> str:
    """'8.3-11.8% over 1152 queries' (a coarse band says its step: 'in steps of 10.0 points')."""
    step = f", in steps of {100 / b.n:.1f} points" if b.n < 100 else ""
    return f"{100 * b.lo:.1f}-{100 * b.hi:.1f}% over {b.n} queries{step}"


def at_chance_lines(rows: Sequence[dict], name) -> list[str]:
    """One finding per row whose figures lie in their bands: "<cell>: V->T R@1 10.6, ... at chance
    (95% band of a random guesser: V->T R@1 8.3-11.8% over 1152 queries; ...)". `rows`: the report's
    aggregated rows with "chance" ({header: band}); `name(row)`: the cell's name."""
    lines = []
    for row in rows:
        hits = [(h, row[h][0], b) for h, b in row.get("chance", {}).items()
                if b is not None and row.get(h) is not None and b.contains(row[h][0]) and b.lo < 1.0]
        if hits:
            figures = ", ".join(f"{h} {100 * v:.1f}" for h, v, _ in hits)
            bands = "; ".join(f"{h} {band_text(b)}" for h, _, b in hits)
            lines.append(f"{name(row)}: {figures} at chance (95% band of a random guesser: {bands})")
    return lines


def certain_lines(rows: Sequence[dict]) -> list[str]:
    """Figures that every guess reaches (band [100, 100]%: R@10 against 10 class prompts): they
    measure nothing, and the findings say so once per column."""
    seen = sorted({h for row in rows for h, b in row.get("chance", {}).items() if b is not None and b.lo >= 1.0})
    return [f"{h}: every ranking reaches 100% (as many texts as k or fewer), so it measures nothing" for h in seen]
