"""A trained head meets a data set: classes matched by name (or refused), class counts checked
at set-up (issue 28: a 4-class classifier on a 2-class set scored 0.0 with rc 0; the same
classes in another order scored 0.33 instead of 0.67)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from tgmae.config import ConfigError
from tgmae.errors import UserError
from tgmae.evaluate.classes import ClassMismatchError, align_classes, named, resolve_num_classes
from tgmae.evaluate.multiview import evaluate_classifier


class Brightness(Dataset):
    """Clips whose mean brightness is the index of their class name in `known`; labels in `names` order."""

    def __init__(self, names: list[str], known: list[str], per_class: int = 3):
        self.class_names = names
        self.items = [(names.index(n), known.index(n)) for n in names for _ in range(per_class)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        label, brightness = self.items[i]
        return {"video": torch.full((3, 2, 4, 4), float(brightness)), "label": label, "index": i,
                "load_failures": 0}


class Oracle(nn.Module):
    """Predicts the class whose index is the clip's brightness (a perfect head over `names`)."""

    def __init__(self, names: list[str]):
        super().__init__()
        self.class_names = names
        self.num_classes = len(names)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        idx = video.mean(dim=(1, 2, 3, 4)).round().long()
        return 10.0 * nn.functional.one_hot(idx, self.num_classes).float() + 0 * self.dummy


HEAD = ["archery", "biking", "diving", "golf"]


def test_four_class_head_on_two_class_set_is_remapped_by_name():
    data = Brightness(["diving", "biking"], HEAD)
    res = evaluate_classifier(Oracle(HEAD), data)
    assert res.top1 == 1.0 and res.class_names[:2] == ["diving", "biking"]
    assert res.summary()["per_class"]["diving"] == 1.0 and set(res.class_names) == set(HEAD)


def test_same_classes_in_another_order_score_alike():
    order = ["golf", "archery", "diving", "biking"]
    assert evaluate_classifier(Oracle(HEAD), Brightness(order, HEAD)).top1 == 1.0
    assert evaluate_classifier(Oracle(HEAD), Brightness(HEAD, HEAD)).top1 == 1.0


def test_classes_the_head_does_not_know_are_refused_by_name():
    data = Brightness(["diving", "surfing", "yoga"], HEAD + ["surfing", "yoga"])
    with pytest.raises(ClassMismatchError, match=r"clf\.safetensors does not know 2 of the 3 classes of val\.csv: "
                                                 r"surfing, yoga") as e:
        evaluate_classifier(Oracle(HEAD), data, head="clf.safetensors", data="val.csv")
    assert isinstance(e.value, UserError)


def test_nameless_classes_match_by_id_and_refuse_more_data_classes():
    assert not named(["0", "1", "2"]) and not named(["LABEL_0", "LABEL_1"]) and named(["0", "cat"])
    assert align_classes([], 4, ["0", "1"], 2).order is None
    assert align_classes(["LABEL_0", "LABEL_1", "LABEL_2"], 3, ["a", "b"], 2).names[:2] == ["a", "b"]
    with pytest.raises(ClassMismatchError, match="has 2 classes but the data set has 3"):
        align_classes([], 2, [], 3)


def test_num_classes_below_or_beside_the_data_classes_is_refused_naming_the_key():
    assert resolve_num_classes(None, ["a", "b", "c", "d"], 3) == 4
    assert resolve_num_classes(10, ["0", "1", "2"], 2) == 10  # ids only: room for more classes
    with pytest.raises(ConfigError, match=r"eval.num_classes=2: the data set has 4 classes \(a, b, c, d\)"):
        resolve_num_classes(2, ["a", "b", "c", "d"], 3)
    with pytest.raises(ConfigError, match=r"eval.num_classes=10: the data set names 4 classes"):
        resolve_num_classes(10, ["a", "b", "c", "d"], 3)
    with pytest.raises(ConfigError, match=r"eval.num_classes=2: the data set has 5 classes"):
        resolve_num_classes(2, [], 4)


def test_a_listed_class_without_training_videos_is_one_warning_naming_it(caplog):
    """Issue #28.3: a class listed (classes.txt) with no training video trained a head silently
    badly; the set-up check (finetune and the probes) now logs one line naming the classes."""
    import logging
    from types import SimpleNamespace

    from tgmae.evaluate.classes import check_head_classes

    train = SimpleNamespace(class_names=["cat", "dog", "eel", "fox"],
                            records=[SimpleNamespace(label=i) for i in (0, 2, 0, 2)])
    with caplog.at_level(logging.WARNING, logger="tgmae"):
        assert check_head_classes(train, [], train_where="data.train_annotations=train.csv") == 4
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and "dog" in lines[0] and "fox" in lines[0] and "cat" not in lines[0]
    assert "2 of 4 classes" in lines[0] and "data.train_annotations=train.csv" in lines[0]
    caplog.clear()
    every = SimpleNamespace(class_names=["cat", "dog"], records=[SimpleNamespace(label=i) for i in (0, 1)])
    with caplog.at_level(logging.WARNING, logger="tgmae"):
        check_head_classes(every, [])
    assert not caplog.records


def test_a_head_without_names_on_a_named_set_says_the_order_is_assumed(caplog):
    """Re-trial 22A (F1): a classifier converted from an official .pth (no class names) was scored
    against the data set's classes in index order without a word."""
    with caplog.at_level("WARNING", logger="tgmae"):
        aligned = align_classes([], 3, ["Walking", "Diving", "Biking"], 3, head="f2.safetensors")
    assert aligned.order is None and aligned.names == ["Walking", "Diving", "Biking"]
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "f2.safetensors carries no class names" in said[0] and "Walking" in said[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="tgmae"):
        align_classes(["Walking", "Diving", "Biking"], 3, ["Walking", "Diving", "Biking"], 3)
        align_classes([], 4, ["0", "1"], 2)  # neither side named: nothing to say
    assert caplog.records == []


def test_a_nameless_heads_assumed_order_is_said_once_by_a_test(caplog):
    """Re-trial 23A: the warning above came twice per `tgmae evaluate` (the set-up check and the scoring)."""
    head = Oracle(HEAD)
    head.class_names = []
    with caplog.at_level("WARNING", logger="tgmae"):
        res = evaluate_classifier(head, Brightness(HEAD, HEAD))
    assert res.top1 == 1.0
    assert sum("carries no class names" in r.getMessage() for r in caplog.records) == 1
