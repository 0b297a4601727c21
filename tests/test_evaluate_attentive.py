"""V-JEPA attentive probe: forward against the equations, schedule, and a task only it can learn."""

import copy
import math

import pytest
import torch
from torch.utils.data import DataLoader

import torch.nn.functional as F

from tgmae.evaluate.attentive import (AttentiveClassifier, AttentiveEnsemble, TokenDataset, cached_tokens, encoder_tokens,
                                      ensemble_loss, predict_attentive)
from tgmae.evaluate.logistic import fit_logistic
from tgmae.train.optim import param_groups


def layer_norm(x, w, b, eps=1e-5):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def reference_logits(m: AttentiveClassifier, x: torch.Tensor) -> torch.Tensor:
    """The module doc's equations, written out with plain tensor algebra and per-head loops."""
    p = m.pooler
    b, n, d = x.shape
    h = p.xattn.num_heads
    q0 = p.query_tokens.expand(b, -1, -1)
    xn = layer_norm(x, p.norm1.weight, p.norm1.bias)
    q = q0 @ p.xattn.q.weight.T + p.xattn.q.bias
    kv = xn @ p.xattn.kv.weight.T + p.xattn.kv.bias
    k, v = kv[..., :d], kv[..., d:]
    heads = []
    for i in range(h):
        s = slice(i * d // h, (i + 1) * d // h)
        a = torch.softmax(q[..., s] @ k[..., s].transpose(1, 2) / math.sqrt(d // h), dim=-1)
        heads.append(a @ v[..., s])
    y = torch.cat(heads, dim=-1) @ p.xattn.proj.weight.T + p.xattn.proj.bias
    q1 = q0 + y
    z = layer_norm(q1, p.norm2.weight, p.norm2.bias)
    hid = z @ p.mlp[0].weight.T + p.mlp[0].bias
    hid = 0.5 * hid * (1 + torch.erf(hid / math.sqrt(2)))  # exact GELU
    q2 = q1 + hid @ p.mlp[2].weight.T + p.mlp[2].bias
    return q2.mean(dim=1) @ m.head.weight.T + m.head.bias


@pytest.mark.parametrize("queries", [1, 3])
def test_forward_matches_equations(queries):
    torch.manual_seed(0)
    m = AttentiveClassifier(dim=24, num_classes=5, num_heads=4, num_queries=queries)
    with torch.no_grad():  # move every parameter off its init so no term hides behind a zero
        for prm in m.parameters():
            prm.add_(0.3 * torch.randn_like(prm))
    x = torch.randn(3, 11, 24)
    got = m(x)
    assert got.shape == (3, 5)
    torch.testing.assert_close(got, reference_logits(m, x), atol=1e-5, rtol=1e-5)


def test_init_follows_jepa():
    torch.manual_seed(1)
    m = AttentiveClassifier(dim=64, num_classes=3, num_heads=8)
    assert m.pooler.query_tokens.shape == (1, 1, 64)
    assert float(m.pooler.xattn.q.bias.detach().abs().max()) == 0.0
    assert float(m.pooler.norm1.weight.detach().min()) == 1.0
    # residual-branch outputs are rescaled by 1/sqrt(2) relative to the 0.02 init
    assert m.pooler.mlp[0].weight.std().item() == pytest.approx(0.02, rel=0.1)
    assert m.pooler.mlp[2].weight.std().item() == pytest.approx(0.02 / math.sqrt(2), rel=0.1)


def fit_reference(train, num_classes: int, dim: int, *, epochs: int, batch_size: int, num_heads: int,
                  lr: float = 1e-3, final_lr: float = 0.0, weight_decay: float = 0.01, seed: int = 0,
                  tokens_of=cached_tokens):
    """V-JEPA's recipe (the module doc) written out: AdamW on >= 2-D weights' decay, lr a per-step
    cosine lr -> final_lr without warm-up, gradient norm clipped to 1.0, cross-entropy; one
    generator seeded by `seed` draws the init, then the batch order. A sample of V views trains each
    view with its video's label. -> (probe in eval mode, per-epoch mean losses)."""
    gen = torch.Generator().manual_seed(seed)
    model = AttentiveClassifier(dim, num_classes, num_heads, generator=gen)
    opt = torch.optim.AdamW(param_groups(model.named_parameters(), weight_decay), lr=lr)
    loader = DataLoader(train, batch_size=batch_size, shuffle=True, generator=gen)
    total, step, losses = epochs * len(loader), 0, []
    for _ in range(epochs):
        epoch = []
        for batch in loader:
            for g in opt.param_groups:
                g["lr"] = final_lr + (lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / total)))
            tokens, labels = tokens_of(batch), batch["label"].long()
            if tokens.dim() == 4:  # views: each one a training example with its video's label
                labels, tokens = labels.repeat_interleave(tokens.shape[1]), tokens.flatten(0, 1)
            loss = F.cross_entropy(model(tokens).float(), labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            epoch.append(float(loss.detach()))
            step += 1
        losses.append(sum(epoch) / len(epoch))
    return model.eval(), losses


def test_weight_decay_groups_follow_jepa():
    """The loop's groups (`tgmae.train.optim.param_groups`, as `AttentiveTask` builds them): >= 2-D
    weights, the query tokens among them, decayed; biases and norms not."""
    m = AttentiveClassifier(dim=16, num_classes=2, num_heads=2)
    other, decay = param_groups(m.named_parameters(), 0.01)
    assert decay["weight_decay"] == 0.01 and other["weight_decay"] == 0.0
    assert any(p is m.pooler.query_tokens for p in decay["params"])
    assert all(p.dim() == 1 for p in other["params"])
    assert len(decay["params"]) + len(other["params"]) == len(list(m.parameters()))


def position_task(n_samples: int, seed: int, tokens: int = 8, dim: int = 32, classes: int = 4):
    """Token grids [M, tokens, dim]: token i = position vector p_i + noise; the label c is which of
    the first `classes` positions also holds a fixed signal vector. The mean over tokens is the
    same whatever c is (mean of p, plus signal / tokens), so mean pooling carries no label."""
    g = torch.Generator().manual_seed(1234)  # positions and signal shared by every split
    pos = torch.randn(tokens, dim, generator=g)
    signal = 3.0 * torch.randn(dim, generator=g)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n_samples,), generator=g)
    x = pos + torch.randn(n_samples, tokens, dim, generator=g)
    x[torch.arange(n_samples), labels] += signal
    return x, labels


def test_attentive_probe_learns_what_mean_pooling_cannot():
    """Stated numbers: after 30 epochs x 8 steps (240 steps, batch 64, lr 1e-2) the attentive
    probe reaches >= 0.9 test accuracy on 4 classes (0.959-0.969 over seeds 0-2); an L-BFGS
    logistic probe on mean-pooled features of the same grids stays below 0.35 (chance 0.25; it
    gets 0.273)."""
    xtr, ytr = position_task(512, seed=1)
    xte, yte = position_task(512, seed=2)
    model, losses = fit_reference(TokenDataset(xtr, ytr), 4, 32, epochs=30, batch_size=64, lr=1e-2, num_heads=4)
    out = predict_attentive(model, DataLoader(TokenDataset(xte, yte), batch_size=128))
    attentive_acc = float((out["probs"].argmax(1) == yte).float().mean())
    linear = fit_logistic(xtr.mean(1), ytr, l2=1e-3, num_classes=4)
    linear_acc = float((linear.predict(xte.mean(1)) == yte).float().mean())
    assert attentive_acc >= 0.9, attentive_acc
    assert linear_acc < 0.35, linear_acc
    assert losses[-1] < losses[0]


def test_multiview_prediction_averages_softmax_over_views():
    torch.manual_seed(0)
    m = AttentiveClassifier(dim=16, num_classes=3, num_heads=2).eval()
    views = torch.randn(5, 4, 6, 16)  # [B, V, N, D]
    labels = torch.arange(5) % 3
    out = predict_attentive(m, [{"tokens": views, "label": labels}])
    expected = torch.stack([m(views[:, v]).softmax(-1) for v in range(4)]).mean(0)
    torch.testing.assert_close(out["probs"], expected.detach(), atol=1e-6, rtol=1e-6)
    assert torch.equal(out["label"], labels)


def test_views_train_with_their_video_label_and_on_the_fly_tokens():
    """An 'encoder' (a fixed linear map of flattened frames) gives token grids on the fly; a
    multi-view batch [B, V, ...] trains every view."""
    class Toy(torch.nn.Module):
        def forward(self, video):  # [B, C, T, H, W] -> [B, T, C*H*W] tokens
            return video.permute(0, 2, 1, 3, 4).flatten(2)

    video = torch.randn(12, 2, 1, 4, 2, 2)  # [M, V, C=1, T=4, 2, 2] -> tokens [4, 4]
    labels = torch.arange(12) % 2
    data = [{"video": video[i], "label": labels[i]} for i in range(12)]
    model, _ = fit_reference(data, 2, 4, epochs=1, batch_size=4, num_heads=2, tokens_of=encoder_tokens(Toy()))
    out = predict_attentive(model, DataLoader(data, batch_size=5), tokens_of=encoder_tokens(Toy()))
    assert out["probs"].shape == (12, 2) and torch.allclose(out["probs"].sum(1), torch.ones(12))


def test_init_draws_only_from_its_generator():
    state = torch.random.get_rng_state()
    a = AttentiveClassifier(16, 3, 2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    b = AttentiveClassifier(16, 3, 2, generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_ensemble_members_train_alone_and_predict_their_mean_softmax():
    """`AttentiveEnsemble` of K probes: logits [K, B, C], member k as the k-th probe drawn from one
    generator; `ensemble_loss` gives each member the gradient of its own cross-entropy; the
    prediction is the members' softmax averaged (over views too)."""
    gen = torch.Generator().manual_seed(3)
    members = [AttentiveClassifier(16, 3, 2, generator=gen) for _ in range(3)]
    alone = [AttentiveClassifier(16, 3, 2, generator=torch.Generator().manual_seed(3))]
    ens = AttentiveEnsemble(members)
    assert all(torch.equal(a, b) for a, b in zip(alone[0].state_dict().values(), members[0].state_dict().values()))
    assert not torch.equal(members[0].head.weight, members[1].head.weight)
    x, y = torch.randn(5, 7, 16, generator=gen), torch.tensor([0, 1, 2, 0, 1])
    logits = ens(x)
    assert logits.shape == (3, 5, 3)
    ensemble_loss(logits, y).backward()
    for m in members:
        ref = copy.deepcopy(m)
        ref.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        for p, q in zip(m.parameters(), ref.parameters()):
            assert torch.allclose(p.grad, q.grad, atol=1e-6)
    views = torch.randn(4, 2, 7, 16, generator=gen)
    out = predict_attentive(ens.eval(), [{"tokens": views, "label": torch.zeros(4, dtype=torch.long)}])
    with torch.no_grad():
        want = torch.stack([m(views.flatten(0, 1)).softmax(-1) for m in members]).mean(0).view(4, 2, 3).mean(1)
    assert torch.allclose(out["probs"], want, atol=1e-6)
