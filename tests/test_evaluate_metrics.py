"""tgmae.evaluate.metrics, mixup and LARS: pure functions checked on hand-made inputs."""

from __future__ import annotations

import math

import pytest
import torch

from tgmae.evaluate.lars import LARS
from tgmae.evaluate.metrics import (
    mean_class_accuracy,
    per_class_accuracy,
    recall_at_k,
    relevance_from_ids,
    retrieval_ranks,
    topk_accuracy,
)
from tgmae.evaluate.mixup import cutmix_box, mix_batch, smooth_one_hot, soft_cross_entropy


# ---------------------------------------------------------------------------------- accuracy
def test_topk_accuracy_hand_made():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    labels = torch.tensor([1, 1, 0, 2])
    acc = topk_accuracy(scores, labels, (1, 2, 5))
    assert acc[1] == pytest.approx(1 / 4)  # only row 0
    assert acc[2] == pytest.approx(2 / 4)  # row 0, row 1 (second best)
    assert acc[5] == 1.0  # k capped at K = 3: every label is in the top 3


def test_topk_rejects_bad_labels():
    with pytest.raises(ValueError, match="labels must lie"):
        topk_accuracy(torch.zeros(2, 3), torch.tensor([0, 3]))


def test_per_class_accuracy_absent_class_is_nan():
    pred = torch.tensor([0, 0, 1, 1, 2])
    labels = torch.tensor([0, 1, 1, 1, 2])
    acc = per_class_accuracy(pred, labels, 4)
    assert acc[0] == 1.0 and acc[1] == pytest.approx(2 / 3) and acc[2] == 1.0
    assert math.isnan(float(acc[3]))
    assert mean_class_accuracy(pred, labels, 4) == pytest.approx((1 + 2 / 3 + 1) / 3)


# --------------------------------------------------------------------------------- retrieval
def test_recall_single_relevant_item():
    sim = torch.tensor([[0.9, 0.1, 0.3],
                        [0.8, 0.2, 0.7],   # relevant (col 1) is last of three
                        [0.1, 0.5, 0.6]])  # relevant (col 2) first
    rel = torch.eye(3, dtype=torch.bool)
    assert retrieval_ranks(sim, rel).tolist() == [1, 3, 1]
    r = recall_at_k(sim, rel, (1, 2, 3))
    assert r == {1: pytest.approx(2 / 3), 2: pytest.approx(2 / 3), 3: 1.0}


def test_recall_ties_count_against_the_query():
    sim = torch.full((2, 4), 0.5)  # a collapsed model: every similarity equal
    rel = torch.tensor([[True, False, False, False], [False, False, True, False]])
    assert retrieval_ranks(sim, rel).tolist() == [4, 4]
    assert recall_at_k(sim, rel, (1, 3, 4)) == {1: 0.0, 3: 0.0, 4: 1.0}
    # a tie with another *relevant* item does not push the query down
    rel2 = torch.tensor([[True, True, False, False], [False, False, True, False]])
    assert retrieval_ranks(sim, rel2).tolist() == [3, 4]


def test_recall_duplicates_several_relevant_items():
    # text -> video with two videos of the same class: the best-ranked relevant one counts
    sim = torch.tensor([[0.9, 0.2, 0.8, 0.1]])
    rel = relevance_from_ids([1], [0, 1, 2, 1])  # videos 1 and 3 are class 1
    assert rel.tolist() == [[False, True, False, True]]
    assert retrieval_ranks(sim, rel).tolist() == [3]  # best relevant 0.2 is behind 0.9 and 0.8
    # duplicate gallery rows (identical embeddings) tie exactly
    sim_dup = torch.tensor([[0.4, 0.4, 0.1]])
    assert retrieval_ranks(sim_dup, torch.tensor([[True, False, False]])).tolist() == [2]


def test_query_without_relevant_item_is_an_error():
    with pytest.raises(ValueError, match="no relevant"):
        recall_at_k(torch.zeros(2, 2), torch.tensor([[True, False], [False, False]]))


# ------------------------------------------------------------------------------------ mixup
def test_no_mixing_gives_smoothed_one_hot():
    video = torch.randn(4, 3, 2, 8, 8)
    labels = torch.tensor([0, 1, 2, 1])
    out = mix_batch(video, labels, 3, smoothing=0.3)
    assert out.mode == "none" and out.video is video
    assert torch.allclose(out.targets, smooth_one_hot(labels, 3, 0.3))
    assert out.targets[0].tolist() == pytest.approx([0.8, 0.1, 0.1])


def test_mixup_mixes_clips_and_targets_alike():
    g = torch.Generator().manual_seed(0)
    video = torch.randn(4, 3, 2, 8, 8)
    labels = torch.tensor([0, 1, 2, 3])
    out = mix_batch(video, labels, 4, mixup_alpha=0.8, generator=g)
    lam = out.lam
    assert out.mode == "mixup" and 0 <= lam <= 1
    assert torch.allclose(out.video, lam * video + (1 - lam) * video.flip(0), atol=1e-6)
    assert torch.allclose(out.targets[0], torch.tensor([lam, 0, 0, 1 - lam]), atol=1e-6)
    assert torch.allclose(out.targets.sum(1), torch.ones(4))


def test_cutmix_same_box_every_frame_and_area_lambda():
    g = torch.Generator().manual_seed(3)
    video = torch.zeros(2, 1, 3, 16, 16)
    video[1] = 1.0
    out = mix_batch(video, torch.tensor([0, 1]), 2, cutmix_alpha=1.0, generator=g)
    assert out.mode == "cutmix"
    pasted = out.video[0, 0]  # [T, H, W]: ones where clip 1 was pasted into clip 0
    assert torch.equal(pasted[0], pasted[1]) and torch.equal(pasted[1], pasted[2])
    area = float(pasted[0].mean())
    assert out.lam == pytest.approx(1 - area)
    assert out.targets[0].tolist() == pytest.approx([out.lam, 1 - out.lam])
    y0, y1, x0, x1 = cutmix_box(16, 16, 0.75, torch.Generator().manual_seed(0))
    assert 0 <= y0 <= y1 <= 16 and 0 <= x0 <= x1 <= 16


def test_mixup_is_reproducible_and_lambda_is_beta_distributed():
    video, labels = torch.randn(2, 3, 2, 4, 4), torch.tensor([0, 1])
    a = mix_batch(video, labels, 2, mixup_alpha=0.8, cutmix_alpha=1.0, generator=torch.Generator().manual_seed(5))
    b = mix_batch(video, labels, 2, mixup_alpha=0.8, cutmix_alpha=1.0, generator=torch.Generator().manual_seed(5))
    assert a.mode == b.mode and a.lam == b.lam and torch.equal(a.video, b.video)
    g = torch.Generator().manual_seed(1)
    lams = torch.tensor([mix_batch(video, labels, 2, mixup_alpha=1.0, generator=g).lam for _ in range(400)])
    # Beta(1, 1) is uniform: mean 1/2, variance 1/12
    assert float(lams.mean()) == pytest.approx(0.5, abs=0.05)
    assert float(lams.var()) == pytest.approx(1 / 12, abs=0.02)


def test_soft_cross_entropy_equals_hard_for_one_hot():
    logits = torch.randn(5, 4)
    labels = torch.tensor([0, 3, 1, 2, 0])
    soft = soft_cross_entropy(logits, smooth_one_hot(labels, 4, 0.1))
    hard = torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1)
    assert float(soft) == pytest.approx(float(hard), rel=1e-6)


# ------------------------------------------------------------------------------------- LARS
def test_lars_step_matches_the_formula_and_skips_biases():
    w = torch.nn.Parameter(torch.tensor([[3.0, 4.0]]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([w, b], lr=0.5, weight_decay=0.1, momentum=0.9, trust_coefficient=0.001)
    w.grad = torch.tensor([[1.0, 0.0]])
    b.grad = torch.tensor([2.0])
    opt.step()
    dp = torch.tensor([[1.0, 0.0]]) + 0.1 * torch.tensor([[3.0, 4.0]])  # grad + wd * w
    q = 0.001 * 5.0 / float(dp.norm())
    assert torch.allclose(w.detach(), torch.tensor([[3.0, 4.0]]) - 0.5 * q * dp)
    assert torch.allclose(b.detach(), torch.tensor([1.0 - 0.5 * 2.0]))  # plain SGD, no decay
    w.grad = torch.tensor([[1.0, 0.0]])
    b.grad = torch.tensor([2.0])
    opt.step()  # momentum: mu = 0.9 * mu + update
    assert torch.allclose(b.detach(), torch.tensor([0.0 - 0.5 * (0.9 * 2.0 + 2.0)]))


def test_top5_is_reported_only_with_more_than_5_classes():
    from tgmae.evaluate.metrics import reported_ks, topk_text
    from tgmae.evaluate.multiview import classification_result

    g = torch.Generator().manual_seed(0)
    four = classification_result(torch.rand(12, 4, generator=g).softmax(1), torch.arange(12) % 4)
    assert four.top5 is None and "top5" not in four.summary()
    assert topk_text(four.top1, four.top5) == f"top-1 {four.top1:.4f}"
    seven = classification_result(torch.rand(14, 7, generator=g).softmax(1), torch.arange(14) % 7)
    assert seven.top5 is not None and 0 < seven.top5 < 1 and seven.summary()["top5"] == seven.top5
    assert reported_ks(5) == (1,) and reported_ks(6) == (1, 5)


def test_accuracies_are_the_exact_fractions_not_float32():
    """issue 29: top-5 2/5 was stored as 0.4000000059604645 (a float32 mean): each accuracy and
    recall is the Python float of correct / total, as JSON stores it."""
    scores = torch.eye(5)
    labels = torch.tensor([0, 1, 0, 0, 0])
    assert topk_accuracy(scores, labels, (1,))[1] == 2 / 5
    relevant = torch.eye(5, dtype=torch.bool)
    relevant[2:] = torch.eye(5, dtype=torch.bool).roll(1, dims=1)[2:]  # rows 2-4: an item below the best
    assert recall_at_k(torch.eye(5), relevant, (1,))[1] == 2 / 5
    per_class = per_class_accuracy(torch.tensor([0, 1, 1, 0, 0]), torch.tensor([0, 0, 0, 1, 1]), 2)
    assert float(per_class[0]) == 1 / 3
