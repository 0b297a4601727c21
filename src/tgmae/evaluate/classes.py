"""Where a trained head meets a data set: its classes matched to the data's by name.

`align_classes` returns the head's column order that puts the data's classes first, in the data's
order, then the head's others (predicting one is a wrong prediction, never dropped), or raises
`ClassMismatchError` naming the data's classes the head lacks. Names without meaning (`0..K-1`,
`LABEL_i`, `class_i`, empty) match by id, and the data may have fewer classes, never more.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import torch

from tgmae.errors import UserError

log = logging.getLogger("tgmae")

_PLACEHOLDER = re.compile(r"^(?:label_|class_)?(\d+)$", re.IGNORECASE)


class ClassMismatchError(ValueError, UserError):
    """A head's classes cannot score a data set's labels (classes it does not know, or too few)."""


def named(names: Sequence[str]) -> bool:
    """True when `names` are real class names (not empty, not the placeholders `i`, `LABEL_i`,
    `class_i` in id order)."""
    if not names:
        return False
    return not all((m := _PLACEHOLDER.match(str(n).strip())) and int(m.group(1)) == i for i, n in enumerate(names))


@dataclass(frozen=True)
class ClassAlignment:
    """`order` [K_head]: head columns in scoring order (data classes first, in the data's order);
    `names`: the class name of each scored column; `num_data` = K_data."""

    order: Optional[torch.Tensor]  # None: the identity (nothing to reorder)
    names: list[str]
    num_data: int

    def apply(self, scores: torch.Tensor) -> torch.Tensor:
        """scores [N, K_head] (logits or probabilities) -> [N, K_head] in scoring order."""
        return scores if self.order is None else scores[:, self.order.to(scores.device)]


def _preview(names: Sequence[str], n: int = 8) -> str:
    return ", ".join(map(str, names[:n])) + (f" ... ({len(names)} in all)" if len(names) > n else "")


def align_classes(head_names: Sequence[str], num_head: int, data_names: Sequence[str], num_data: int,
                  head: str = "the classifier", data: str = "the data set", say: bool = True) -> ClassAlignment:
    """Match a head of `num_head` classes (`head_names`, may be empty) to a data set of `num_data`
    classes (`data_names`, may be empty). head / data: how messages name the two (paths); say:
    warn of a nameless head's assumed order (False for a check made again later).

    Both named: the data's classes looked up by name in the head's (ClassMismatchError naming those
    missing). Otherwise by id: ClassMismatchError when the data has more classes than the head.
    """
    head_names, data_names = [str(n) for n in head_names], [str(n) for n in data_names]
    if named(head_names) and named(data_names) and len(head_names) == num_head:
        index = {n: i for i, n in enumerate(head_names)}
        missing = [n for n in data_names if n not in index]
        if missing:
            raise ClassMismatchError(
                f"{head} does not know {len(missing)} of the {len(data_names)} classes of {data}: "
                f"{_preview(missing)} (its classes: {_preview(head_names)})")
        first = [index[n] for n in data_names]
        rest = [i for i in range(num_head) if i not in set(first)]
        order = first + rest
        if order == list(range(num_head)):
            return ClassAlignment(None, head_names, len(data_names))
        return ClassAlignment(torch.tensor(order), [head_names[i] for i in order], len(data_names))
    if num_data > num_head:
        raise ClassMismatchError(f"{head} has {num_head} classes but {data} has {num_data}; "
                                 "test a classifier trained on these classes")
    names = data_names + [f"class_{i}" for i in range(len(data_names), num_head)]
    if named(head_names) and len(head_names) == num_head:
        names = head_names
    elif named(data_names) and say:  # nothing to match by: the scores hold only if its head kept this order
        log.warning("%s carries no class names: its outputs are taken as %s's classes in their order (%s); "
                    "a head trained with another order is scored wrong", head, data, _preview(data_names))
    return ClassAlignment(None, names if len(names) == num_head else [str(i) for i in range(num_head)], num_data)


def data_class_count(dataset, labels: Optional[torch.Tensor] = None) -> int:
    """K of a data set: its class names, else 1 + its largest label (records or `labels`)."""
    names = getattr(dataset, "class_names", None)
    if names:
        return len(names)
    records = getattr(dataset, "records", None)
    if records:
        return max(int(r.label) for r in records) + 1
    if labels is not None and labels.numel():
        return int(labels.max()) + 1
    return 0


def resolve_num_classes(num_classes: Optional[int], names: Sequence[str], top_label: int,
                        key: str = "eval.num_classes") -> int:
    """The class count of a new head: `num_classes` (the config's `key`) when set, else the data's
    names, else top_label + 1. ConfigError (naming `key`) for a count below the data's classes, or
    other than the count of the data's real class names (a head of 10 on 4 named classes would
    be exported as class_0..class_9)."""
    from tgmae.config import ConfigError

    have = len(names) if names else top_label + 1
    if num_classes is None:
        if have <= 0:
            raise ConfigError(f"cannot tell the number of classes: set {key}")
        return have
    if num_classes < max(have, top_label + 1):
        raise ConfigError(f"{key}={num_classes}: the data set has {max(have, top_label + 1)} classes"
                          + (f" ({_preview(list(names))})" if named(names) else "")
                          + f"; leave {key} empty to use the data's")
    if named(names) and num_classes != len(names):
        raise ConfigError(f"{key}={num_classes}: the data set names {len(names)} classes ({_preview(list(names))}); "
                          f"leave {key} empty to use them")
    return num_classes


def check_head_classes(train_data, tests: Sequence[tuple[object, str]], num_classes: Optional[int] = None,
                       configured: Optional[int] = None, key: str = "eval.num_classes",
                       head: str = "the training set (data.train_annotations)",
                       train_where: str = "data.train_annotations") -> int:
    """The set-up check of a head trained on `train_data` (finetune and the probes share it, so they
    refuse before extracting or training): its class count (`num_classes`, else `configured` =
    the config's `key` checked by `resolve_num_classes`, else the data's) and every test set of
    `tests` ((dataset or None, how messages name it)) matched by name or id (`align_classes`).
    Returns the count; ConfigError / ClassMismatchError naming the key or the test set. Classes of
    the head that no training record has are one warning naming them (`warn_unseen_classes`; a
    training video without a label was refused before: `data.dataset.refuse_unlabelled`)."""
    names = [str(n) for n in (getattr(train_data, "class_names", None) or [])]
    if num_classes is None:
        records = getattr(train_data, "records", None)
        top = max((int(r.label) for r in records), default=-1) if records else data_class_count(train_data) - 1
        num_classes = resolve_num_classes(configured, names, top, key)
    for ds, where in tests:
        if ds is not None:
            align_classes(names, num_classes, getattr(ds, "class_names", None) or [], data_class_count(ds),
                          head, where)
    records = getattr(train_data, "records", None)
    if records:
        warn_unseen_classes(names, (int(r.label) for r in records), num_classes, train_where)
    return num_classes


def warn_unseen_classes(names: Sequence[str], labels: Iterable[int], num_classes: int,
                        where: str = "data.train_annotations") -> list[int]:
    """Log one warning naming the classes (of `num_classes`; `names` name them, else their ids)
    that none of the training `labels` is: a head trained on these data never learns them and
    scores them by chance, silently. Returns their ids."""
    seen = set(labels)
    unseen = [c for c in range(num_classes) if c not in seen]
    if unseen:
        label = [str(names[c]) if c < len(names) else str(c) for c in unseen]
        log.warning("%d of %d classes have no training video in %s: %s (a head trained on it never learns them)",
                    len(unseen), num_classes, where, _preview(label))
    return unseen
