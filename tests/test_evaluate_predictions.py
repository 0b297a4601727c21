"""test_predictions.csv: rows, top-k order, logits vs probabilities, atomic write, errors."""

import csv

import pytest
import torch

from tgmae.evaluate.predictions import as_probabilities, write_predictions


def read(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_writes_topk_names_and_scores(tmp_path):
    probs = torch.tensor([[0.1, 0.6, 0.3], [0.5, 0.25, 0.25]])
    out = write_predictions(tmp_path / "test_predictions.csv", ["v/a.mp4", "b,c"], torch.tensor([2, 0]), probs,
                            ["cat", "dog", "emu"], k=5)
    rows = read(out)
    assert rows[0] == ["video_id", "true_label", "pred_1", "score_1", "pred_2", "score_2", "pred_3", "score_3"]
    assert rows[1] == ["v/a.mp4", "emu", "dog", "0.600000", "emu", "0.300000", "cat", "0.100000"]
    # equal scores rank by class id; a comma in an id is quoted, not split
    assert rows[2] == ["b,c", "cat", "cat", "0.500000", "dog", "0.250000", "emu", "0.250000"]
    assert len(rows) == 3


def test_logits_become_softmax_and_ids_stand_in_for_names(tmp_path):
    logits = torch.tensor([[2.0, -1.0, 0.5, 0.0, 3.0, 1.0, -2.0]])
    rows = read(write_predictions(tmp_path / "p.csv", ["x"], torch.tensor([4]), logits))
    p = logits.double().softmax(1)[0]
    assert rows[0][-2:] == ["pred_5", "score_5"]
    assert rows[1][:4] == ["x", "4", "4", f"{float(p[4]):.6f}"]
    assert [rows[1][i] for i in range(2, 12, 2)] == ["4", "0", "5", "2", "3"]


def test_as_probabilities_keeps_distributions():
    probs = torch.tensor([[0.2, 0.8], [1.0, 0.0]])
    assert torch.equal(as_probabilities(probs), probs.double())
    assert torch.allclose(as_probabilities(torch.tensor([[0.2, 0.2]])).sum(1), torch.ones(1, dtype=torch.float64))


def test_write_is_atomic_and_replaces(tmp_path):
    path = tmp_path / "sub" / "test_predictions.csv"
    write_predictions(path, ["a"], torch.tensor([0]), torch.tensor([[0.9, 0.1]]))
    write_predictions(path, ["b"], torch.tensor([1]), torch.tensor([[0.3, 0.7]]))
    assert read(path)[1][0] == "b"
    assert [p.name for p in path.parent.iterdir()] == ["test_predictions.csv"]  # no temp file left


@pytest.mark.parametrize("ids, labels, names, match", [
    (["a"], torch.tensor([0, 1]), (), "video ids"),
    (["a", "b"], torch.tensor([0, 1]), ("x",), "class names"),
])
def test_rejects_mismatches(tmp_path, ids, labels, names, match):
    with pytest.raises(ValueError, match=match):
        write_predictions(tmp_path / "p.csv", ids, labels, torch.rand(2, 3), names)
    assert not (tmp_path / "p.csv").exists()
