"""DINO weighted k-NN: against a plain loop reference, several k in one pass, chunking, a sanity level."""

import math

import pytest
import torch

from tgmae.evaluate.knn import knn_classify


def reference_knn(train, train_labels, test, test_labels, k, temperature, num_classes, shift=False):
    """Plain loops: cosine similarity, k most similar training rows, votes exp(sim / T) per
    class, classes ranked by votes (lower id first on equal votes); a class without votes is no
    prediction; a class with a neighbour among the k is voted whatever its weight (a weight that
    underflows to 0 still votes), and equal votes (0 included) rank the lower id first. shift:
    votes exp((sim - the query's top sim) / T) in float64 (the same ranking in exact arithmetic;
    finite for a tiny T)."""
    top1 = top5 = 0
    for i in range(test.shape[0]):
        q = test[i].double()
        sims = []
        for j in range(train.shape[0]):
            t = train[j].double()
            sims.append((float(q @ t / (q.norm() * t.norm())), j))
        sims.sort(key=lambda s: -s[0])
        top = sims[0][0] if shift else 0.0
        votes, voted = [0.0] * num_classes, set()
        for s, j in sims[:k]:
            votes[int(train_labels[j])] += math.exp((s - top) / temperature)
            voted.add(int(train_labels[j]))
        ranked = sorted(voted, key=lambda c: (-votes[c], c))
        y = int(test_labels[i])
        top1 += ranked[0] == y
        top5 += y in ranked[:5]
    return top1 / test.shape[0], top5 / test.shape[0]


def fixed_set(seed=0, n_train=60, n_test=25, dim=8, classes=7):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    train_labels = torch.randint(0, classes, (n_train,), generator=g)
    test_labels = torch.randint(0, classes, (n_test,), generator=g)
    train = centres[train_labels] + 1.5 * torch.randn(n_train, dim, generator=g)
    test = centres[test_labels] + 1.5 * torch.randn(n_test, dim, generator=g)
    return train, train_labels, test, test_labels, classes


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_knn_matches_plain_reference_for_every_k(temperature):
    train, ytr, test, yte, classes = fixed_set()
    ks = (1, 3, 10, 20)
    got = knn_classify(train, ytr, test, yte, ks=ks, temperature=temperature, num_classes=classes, chunk=7)
    assert sorted(got) == list(ks)
    for k in ks:
        top1, top5 = reference_knn(train, ytr, test, yte, k, temperature, classes)
        assert got[k].top1 == pytest.approx(top1, abs=1e-9), k
        assert got[k].top5 == pytest.approx(top5, abs=1e-9), k
        assert got[k].num_test == test.shape[0]
    # the reference's numbers are not trivial: k changes the answer on this set
    assert len({round(got[k].top1, 6) for k in ks}) > 1


def test_knn_tiny_temperature_votes_stay_finite_and_match_float64_reference():
    """T = 1e-4: exp(sim / T) overflows (inf votes, NaN scores); the votes are taken per query
    relative to its most similar neighbour, so results match a float64 reference and scores are
    a finite distribution. The first test pins the results for a usual T."""
    train, ytr, test, yte, classes = fixed_set(seed=2)
    ks = (1, 3, 10, 20)
    got = knn_classify(train, ytr, test, yte, ks=ks, temperature=1e-4, num_classes=classes, keep_scores=ks)
    for k in ks:
        top1, top5 = reference_knn(train, ytr, test, yte, k, 1e-4, classes, shift=True)
        assert (got[k].top1, got[k].top5) == (pytest.approx(top1, abs=1e-9), pytest.approx(top5, abs=1e-9)), k
        scores = got[k].scores
        assert torch.isfinite(scores).all(), k
        assert torch.allclose(scores.sum(dim=1), torch.ones(test.shape[0], dtype=torch.float64)), k
    # a usual T gives the same numbers with and without the shift
    for k in ks:
        assert reference_knn(train, ytr, test, yte, k, 0.07, classes) == pytest.approx(
            reference_knn(train, ytr, test, yte, k, 0.07, classes, shift=True), abs=1e-12)


def test_knn_chunking_and_k_order_do_not_change_results():
    train, ytr, test, yte, classes = fixed_set(seed=3)
    a = knn_classify(train, ytr, test, yte, ks=(20, 5), num_classes=classes, chunk=1)
    b = knn_classify(train, ytr, test, yte, ks=(5, 20), num_classes=classes, chunk=1000)
    assert {k: (r.top1, r.top5) for k, r in a.items()} == {k: (r.top1, r.top5) for k, r in b.items()}


def test_knn_is_scale_invariant_cosine():
    train, ytr, test, yte, classes = fixed_set(seed=5)
    a = knn_classify(train, ytr, test, yte, ks=(10,), num_classes=classes)
    b = knn_classify(train * 7.0, ytr, test * 0.01, yte, ks=(10,), num_classes=classes)
    assert (a[10].top1, a[10].top5) == (b[10].top1, b[10].top5)


def test_knn_separable_features_reach_stated_accuracy():
    """20 well-separated classes in 32-D (centres 4 apart in every direction vs noise 0.5):
    k-NN with k = 10 and 20 must reach >= 0.98 top-1; shuffled training labels fall to chance."""
    g = torch.Generator().manual_seed(11)
    classes, dim = 20, 32
    centres = 4.0 * torch.randn(classes, dim, generator=g)
    ytr = torch.arange(classes).repeat(30)
    yte = torch.arange(classes).repeat(10)
    train = centres[ytr] + 0.5 * torch.randn(len(ytr), dim, generator=g)
    test = centres[yte] + 0.5 * torch.randn(len(yte), dim, generator=g)
    res = knn_classify(train, ytr, test, yte, ks=(10, 20))
    assert res[10].top1 >= 0.98 and res[20].top1 >= 0.98
    assert res[20].top5 == 1.0
    shuffled = ytr[torch.randperm(len(ytr), generator=g)]
    chance = knn_classify(train, shuffled, test, yte, ks=(20,))
    assert chance[20].top1 < 0.2


def test_knn_top5_absent_with_five_classes_or_fewer():
    train, ytr, test, yte, _ = fixed_set(classes=4)
    res = knn_classify(train, ytr, test, yte, ks=(5,), num_classes=4)
    assert res[5].top5 is None and 0 <= res[5].top1 <= 1


@pytest.mark.parametrize("kwargs, match", [
    ({"ks": ()}, "at least one"),
    ({"ks": (0,)}, "at least one"),
    ({"ks": (1000,)}, "exceeds"),
    ({"ks": (5,), "temperature": 0.0}, "temperature"),
])
def test_knn_rejects_bad_arguments(kwargs, match):
    train, ytr, test, yte, _ = fixed_set()
    with pytest.raises(ValueError, match=match):
        knn_classify(train, ytr, test, yte, **kwargs)


def test_knn_rejects_mismatched_shapes():
    train, ytr, test, yte, _ = fixed_set()
    with pytest.raises(ValueError, match="features must be"):
        knn_classify(train, ytr, test[:, :3], yte)
    with pytest.raises(ValueError, match="labels must be"):
        knn_classify(train, ytr[:-1], test, yte)


def test_ties_and_unvoted_classes_rank_alike_in_results_and_predictions():
    """Two equal neighbours of classes 4 and 2 tie: both the accuracy and the CSV rank class 2 first;
    the classes without votes are neither counted in top-5 nor listed (empty slots)."""
    from tgmae.evaluate.predictions import prediction_rows

    train = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    train_labels = torch.tensor([4, 2, 0, 1])
    test, test_labels = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([2, 5])
    res = knn_classify(train, train_labels, test, test_labels, [2], 0.07, num_classes=8, keep_scores=[2])[2]
    assert (res.top1, res.top5) == (0.5, 0.5)  # class 5 has no votes: not a top-5 hit
    rows = prediction_rows(["a", "b"], test_labels, res.scores, voted=res.voted)
    assert [r[2::2] for r in rows[1:]] == [["2", "4", "", "", ""]] * 2


def test_knn_class_whose_weights_underflow_still_votes_in_results_and_predictions():
    """T = 1e-30: every neighbour but the nearest weighs exp(-1e27) = 0 in float64, yet each class
    among the k has a neighbour there and is a prediction (exact arithmetic gives it a vote > 0);
    the voted classes with 0 votes rank by class id, ahead of the classes with no neighbour. The
    CSV lists the same classes in the same order as the results count."""
    from tgmae.evaluate.predictions import prediction_rows

    angles = torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 3.0])
    train = torch.stack([angles.cos(), angles.sin()], dim=1)
    train_labels = torch.tensor([6, 5, 1, 3, 2, 0])
    test = torch.tensor([[1.0, 0.0]] * 3)
    test_labels = torch.tensor([6, 3, 0])
    res = knn_classify(train, train_labels, test, test_labels, [5], 1e-30, num_classes=8, keep_scores=[5])[5]
    assert (res.top1, res.top5) == (pytest.approx(1 / 3), pytest.approx(2 / 3))  # class 0: no neighbour
    rows = prediction_rows(["a", "b", "c"], test_labels, res.scores, voted=res.voted)
    assert [r[2::2] for r in rows[1:]] == [["6", "1", "2", "3", "5"]] * 3


@pytest.mark.parametrize("temperature", [1e-30, 1e-300])
def test_knn_extreme_temperature_matches_plain_reference(temperature):
    train, ytr, test, yte, classes = fixed_set(seed=4, classes=12)
    ks = (5, 10, 20)
    got = knn_classify(train, ytr, test, yte, ks=ks, temperature=temperature, num_classes=classes)
    for k in ks:
        top1, top5 = reference_knn(train, ytr, test, yte, k, temperature, classes, shift=True)
        assert (got[k].top1, got[k].top5) == (pytest.approx(top1, abs=1e-9), pytest.approx(top5, abs=1e-9)), k
