"""Correctness of the OBD Hessian estimators, SNIP and the prune-at-init workflow."""
import copy
import os
from dataclasses import dataclass
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.func import functional_call

from prunelab import masks as M
from prunelab.criteria import CRITERIA, HESSIAN_ESTIMATORS, get_criterion, second_order
from prunelab.criteria.second_order import (_rademacher, count_examples, hessian_diagonal, hutchinson_cost,
                                            obd_saliency, snip_saliency)
from prunelab.sparse_init import prune_at_init_, train_masked_

# The device test runs on CUDA; PRUNELAB_TEST_DEVICE=cpu runs it with the CPU standing in (as tests/test_cuda.py).
DEVICE = os.environ.get("PRUNELAB_TEST_DEVICE", "cuda")


class Quadratic(nn.Module):
    """L(w) = 0.5 (w - c)^T A (w - c): the Hessian is A whatever the batch."""

    def __init__(self, a, c):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1, a.shape[0], dtype=a.dtype))
        self.register_buffer("a", a)
        self.register_buffer("c", c)

    def forward(self, _batch):
        d = (self.w - self.c).squeeze(0)
        return 0.5 * d @ self.a @ d


def quad_loss(model, batch):
    return model(batch)


def spd(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, dtype=torch.float64)
    return q @ q.T / n + torch.eye(n, dtype=torch.float64)


def ce_loss(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def tiny_mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def data(n=16, seed=1, d=3, classes=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randint(0, classes, (n,), generator=g)


def full_hessian(model, names, loss_fn, batch):
    """The Hessian over the flattened weights ``names`` (in that order), by torch.autograd.functional.hessian."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    sizes = [params[n].numel() for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])

    def f(vec):
        parts = dict(zip(names, (v.reshape(s) for v, s in zip(vec.split(sizes), shapes))))
        return loss_fn(lambda x: functional_call(model, parts, (x,)), batch)

    return torch.autograd.functional.hessian(f, flat)


def split_like(vec, model, names):
    """``vec`` over the flattened weights ``names`` as name -> tensor shaped like each weight."""
    params = dict(model.named_parameters())
    parts = vec.split([params[n].numel() for n in names])
    return {n: v.reshape(params[n].shape) for n, v in zip(names, parts)}


def independent_diagonal(model, names, loss_fn, batch):
    """The Hessian diagonal from torch.autograd.functional.hessian over the flattened weights."""
    return split_like(full_hessian(model, names, loss_fn, batch).diagonal(), model, names)


def rel_err(est, ref):
    num = sum((est[n] - ref[n]).pow(2).sum() for n in ref)
    return float((num / sum(ref[n].pow(2).sum() for n in ref)).sqrt())


def test_registry_offers_obd_and_snip():
    assert get_criterion("obd") is CRITERIA["obd"] and get_criterion("snip") is CRITERIA["snip"]
    assert set(HESSIAN_ESTIMATORS) == {"fisher", "hutchinson", "exact"}


def test_exact_and_hutchinson_on_a_quadratic():
    a = spd(6)
    model = Quadratic(a, torch.linspace(-1, 1, 6, dtype=torch.float64))
    batches = [torch.zeros(1)]
    exact, info = hessian_diagonal(model, ["w"], loss_fn=quad_loss, batches=batches, estimator="exact")
    torch.testing.assert_close(exact["w"].squeeze(0), a.diagonal())
    assert info == dict(examples=1, batches=1)
    errs = []
    for probes in (4, 64, 2048):
        est, info = hessian_diagonal(model, ["w"], loss_fn=quad_loss, batches=batches, estimator="hutchinson",
                                     probes=probes, generator=torch.Generator().manual_seed(0))
        assert info["probes"] == probes
        errs.append(rel_err(est, {"w": a.diagonal().unsqueeze(0)}))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.03


def test_exact_matches_autograd_hessian_on_tiny_mlp_and_hutchinson_converges():
    model = tiny_mlp()
    batch = data()
    names = ["0.weight", "2.weight"]
    ref = independent_diagonal(model, names, lambda f, b: nn.functional.cross_entropy(f(b[0]), b[1]), batch)
    exact, _ = hessian_diagonal(model, loss_fn=ce_loss, batches=[batch], estimator="exact")
    assert set(exact) == set(names)
    for n in names:
        torch.testing.assert_close(exact[n], ref[n])
    errs = [rel_err(hessian_diagonal(model, loss_fn=ce_loss, batches=[batch], estimator="hutchinson", probes=p,
                                     generator=torch.Generator().manual_seed(3))[0], ref) for p in (2, 32, 512)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[0] > 1.0 and errs[2] < 0.25  # off-diagonal mass is large here: error ~ 1/sqrt(probes)


def test_central_difference_hutchinson_matches_the_double_backward_one():
    # Same probes, so the two estimates differ only by the O(eps^2) finite-difference error.
    model = tiny_mlp()
    batches = [data(), data(seed=2)]
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    est = {hvp: hessian_diagonal(model, loss_fn=ce_loss, batches=batches, estimator="hutchinson", probes=8, hvp=hvp,
                                 generator=torch.Generator().manual_seed(5)) for hvp in ("autograd", "central")}
    assert est["central"][1] == dict(examples=32, batches=2, probes=8, hvp="central")
    assert rel_err(est["central"][0], est["autograd"][0]) < 1e-6
    assert rel_err(est["central"][0], est["autograd"][0]) > 0  # really a different computation
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())  # put back bit for bit
    coarse = hessian_diagonal(model, loss_fn=ce_loss, batches=batches, estimator="hutchinson", probes=8, hvp="central",
                              step=0.5, generator=torch.Generator().manual_seed(5))[0]
    assert rel_err(coarse, est["autograd"][0]) > 100 * rel_err(est["central"][0], est["autograd"][0])


def test_central_difference_puts_the_weights_back_when_the_loss_raises():
    model = tiny_mlp()
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    calls = []

    def flaky(m, b):
        calls.append(1)
        if len(calls) == 2:  # the second gradient, taken with the weights moved to w - eps z
            raise RuntimeError("interrupted")
        return ce_loss(m, b)
    with pytest.raises(RuntimeError, match="interrupted"):
        hessian_diagonal(model, loss_fn=flaky, batches=[data()], estimator="hutchinson", probes=2, hvp="central")
    assert all(torch.equal(p, weights[n]) for n, p in model.named_parameters())


def test_rademacher_probes_are_balanced_signs():
    from prunelab.criteria.second_order import _rademacher
    z = _rademacher(torch.empty(1001, 3), torch.Generator().manual_seed(0))
    assert z.shape == (1001, 3) and set(z.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(z.mean())) < 0.05
    again = _rademacher(torch.empty(1001, 3), torch.Generator().manual_seed(0))
    assert torch.equal(z, again)


def test_exact_weights_batches_by_examples():
    model = tiny_mlp()
    x, y = data(n=10)
    ref = independent_diagonal(model, ["0.weight", "2.weight"], lambda f, b: nn.functional.cross_entropy(f(b[0]), b[1]), (x, y))
    split, info = hessian_diagonal(model, loss_fn=ce_loss, batches=[(x[:7], y[:7]), (x[7:], y[7:])], estimator="exact")
    assert info == dict(examples=10, batches=2)
    for n in ref:
        torch.testing.assert_close(split[n], ref[n])


def per_example_fisher(model, names, x, y):
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(params[n]) for n in names}
    for i in range(len(x)):
        grads = torch.autograd.grad(ce_loss(model, (x[i:i + 1], y[i:i + 1])), [params[n] for n in names])
        for n, g in zip(names, grads):
            total[n] += g.pow(2)
    return {n: t / len(x) for n, t in total.items()}


@pytest.mark.parametrize("per_example", ["auto", "vmap", "loop"])
def test_fisher_is_mean_of_per_example_squared_gradients(per_example):
    model = tiny_mlp()
    x, y = data(n=12)
    ref = per_example_fisher(model, ["0.weight", "2.weight"], x, y)
    est, info = hessian_diagonal(model, loss_fn=ce_loss, batches=[(x[:5], y[:5]), (x[5:], y[5:])],
                                 estimator="fisher", per_example=per_example)
    assert info["examples"] == 12 and info["batches"] == 2
    assert info["per_example"] == ("loop" if per_example == "loop" else "vmap")
    for n in ref:
        torch.testing.assert_close(est[n], ref[n])
    # Squaring the batch gradient (the known mistake) is a different, smaller quantity.
    g = torch.autograd.grad(ce_loss(model, (x, y)), [model[0].weight])[0]
    assert not torch.allclose(g.pow(2), est["0.weight"])
    assert float(g.pow(2).sum()) < float(est["0.weight"].sum())


def token_mean_loss(model, batch):
    """Cross-entropy averaged over the non-padding tokens of a batch of sentences (as nmt.batch_loss)."""
    x, y = batch
    return nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten(), ignore_index=-100)


def sentences(n, seed=0, d=3, classes=3, max_len=8, model=None):
    """Sentences of 1..max_len tokens (padding -100); labels drawn from ``model`` when given."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, max_len, d, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, max_len + 1, (n,), generator=g)
    if model is None:
        y = torch.randint(0, classes, (n, max_len), generator=g)
    else:
        with torch.no_grad():
            y = torch.multinomial(model(x).softmax(-1).flatten(0, 1), 1, generator=g).view(n, max_len)
    y[torch.arange(max_len) >= lengths[:, None]] = -100
    return x, y


def tokens(batch):
    return (batch[1] != -100).sum(1)


@pytest.mark.parametrize("per_example", ["vmap", "loop"])
def test_fisher_weights_sentences_as_the_token_mean_loss_does(per_example):
    """Sentence i (t_i tokens, NLL s_i) enters the token-mean loss as s_i / T, so its Fisher term
    is (grad s_i)^2 / T: per-sentence terms t_i l_i / T that sum to the batch loss."""
    torch.manual_seed(0)
    model = nn.Linear(3, 3, bias=False).double()
    x, y = sentences(9)
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    est, info = hessian_diagonal(model, loss_fn=token_mean_loss, batches=batches, estimator="fisher",
                                 per_example=per_example, example_weights=tokens)
    assert info["per_example"] == per_example
    want = torch.zeros_like(model.weight)
    for xb, yb in batches:
        t = tokens((xb, yb))
        terms = [token_mean_loss(model, (xb[i:i + 1], yb[i:i + 1])) * t[i] / t.sum() for i in range(len(xb))]
        torch.testing.assert_close(sum(terms), token_mean_loss(model, (xb, yb)))  # they sum to the batch loss
        sq = sum(torch.autograd.grad(c, model.weight)[0].pow(2) for c in terms)
        want += len(xb) / len(x) * t.sum() * sq  # (1/T) sum (grad s_i)^2, batches weighted by examples
    torch.testing.assert_close(est["weight"], want)


def test_fisher_of_a_token_mean_loss_estimates_its_hessian():
    """With labels drawn from the model the Fisher's expectation is the Hessian (for softmax
    regression the Hessian does not depend on the labels): the two estimators agree in scale."""
    torch.manual_seed(0)
    model = nn.Linear(3, 3, bias=False).double()
    batch = sentences(4000, seed=1, model=model)
    exact, _ = hessian_diagonal(model, loss_fn=token_mean_loss, batches=[batch], estimator="exact")
    fisher, _ = hessian_diagonal(model, loss_fn=token_mean_loss, batches=[batch], estimator="fisher",
                                 example_weights=tokens)
    torch.testing.assert_close(fisher["weight"], exact["weight"], rtol=0.1, atol=0)


def test_fisher_logs_the_fall_back_from_vmap_to_a_loop(caplog):
    def refuses_vmap(model, batch):  # data-dependent control flow: vmap cannot trace it
        x, y = batch
        return ce_loss(model, batch) * (2.0 if float(x.sum()) > 0 else 1.0)

    model = tiny_mlp()
    with caplog.at_level("WARNING", logger="prunelab.criteria.second_order"):
        _, info = hessian_diagonal(model, loss_fn=refuses_vmap, batches=[data(n=4), data(n=4, seed=2)],
                                   estimator="fisher")
    assert info["per_example"] == "loop"
    fallbacks = [r for r in caplog.records if "vmap failed" in r.getMessage()]
    assert len(fallbacks) == 1 and "Error" in fallbacks[0].getMessage()  # names the exception
    assert fallbacks[0].levelname == "WARNING"


class TinyLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 3)
        self.lstm = nn.LSTM(3, 4, batch_first=True)
        self.out = nn.Linear(4, 2)

    def forward(self, tokens):
        h, _ = self.lstm(self.emb(tokens))
        return self.out(h[:, -1])


def test_fisher_on_an_lstm_vmap_and_loop_agree():
    torch.manual_seed(0)
    model = TinyLSTM()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randint(0, 7, (6, 5), generator=g), torch.randint(0, 2, (6,), generator=g))
    loop, _ = hessian_diagonal(model, loss_fn=ce_loss, batches=[batch], per_example="loop")
    auto, info = hessian_diagonal(model, loss_fn=ce_loss, batches=[batch], per_example="auto")
    assert info["per_example"] in ("vmap", "loop")
    assert set(loop) == {"emb.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "out.weight"}
    for n in loop:
        torch.testing.assert_close(auto[n], loop[n], rtol=1e-4, atol=1e-7)
    assert model.training  # the scoring mode was undone


@dataclass(frozen=True)
class TokenBatch:
    tokens: torch.Tensor
    labels: torch.Tensor
    name: str = "batch"


def test_dataclass_batches_are_split_into_examples():
    torch.manual_seed(0)
    model = TinyLSTM()
    g = torch.Generator().manual_seed(1)
    tokens, labels = torch.randint(0, 7, (5, 4), generator=g), torch.randint(0, 2, (5,), generator=g)
    loss = lambda m, b: ce_loss(m, (b.tokens, b.labels))  # noqa: E731
    assert count_examples(TokenBatch(tokens, labels)) == 5
    ours, info = hessian_diagonal(model, ["out.weight"], loss_fn=loss, batches=[TokenBatch(tokens, labels)])
    ref = per_example_fisher(model, ["out.weight"], tokens, labels)
    assert info["examples"] == 5
    torch.testing.assert_close(ours["out.weight"], ref["out.weight"], rtol=1e-4, atol=1e-7)


def test_snip_equals_abs_grad_times_weight_by_hand():
    model = tiny_mlp()
    x, y = data(n=9)
    s = snip_saliency(model, loss_fn=ce_loss, batches=[(x[:4], y[:4]), (x[4:], y[4:])])
    grads = torch.autograd.grad(ce_loss(model, (x, y)), [model[0].weight, model[2].weight])
    torch.testing.assert_close(s.scores["0.weight"], (grads[0] * model[0].weight).abs().detach())
    torch.testing.assert_close(s.scores["2.weight"], (grads[1] * model[2].weight).abs().detach())
    assert (s.method, s.examples, s.batches, s.device) == ("snip", 9, 2, "cpu")
    assert s.info()["examples"] == 9 and "scores" not in s.info()
    one = snip_saliency(model, loss_fn=ce_loss, batches=[(x[:4], y[:4]), (x[4:], y[4:])], max_batches=1)
    assert (one.batches, one.examples) == (1, 4)


@pytest.mark.parametrize("estimator", ["exact", "hutchinson"])
def test_obd_at_a_converged_quadratic_ranks_by_loss_increase(estimator):
    # Least squares on orthogonal columns of different scales: H = 2 X^T X / n is diagonal, so
    # 0.5 * h_kk * w_k^2 is exactly the loss increase from deleting weight k.
    n, d = 32, 6
    q, _ = torch.linalg.qr(torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64))
    x = q * torch.tensor([3.0, 0.5, 2.0, 1.0, 4.0, 0.7], dtype=torch.float64) * n ** 0.5
    y = x @ torch.tensor([0.2, 2.0, -0.6, 1.1, 0.05, -1.5], dtype=torch.float64) + 0.1 * q[:, 0]
    model = nn.Linear(d, 1, bias=False).double()
    loss = lambda m, b: (m(b[0]).squeeze(-1) - b[1]).pow(2).mean()  # noqa: E731
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    for _ in range(3000):
        opt.zero_grad()
        loss(model, (x, y)).backward()
        opt.step()
    assert float(model.weight.grad.abs().max()) < 1e-8  # converged
    s = obd_saliency(model, loss_fn=loss, batches=[(x, y)], estimator=estimator, probes=4)
    base = float(loss(model, (x, y)).detach())
    increase = []
    for k in range(d):
        w = model.weight.detach().clone()
        w[0, k] = 0
        increase.append(float(loss(lambda b: b @ w.T, (x, y))) - base)
    increase = torch.tensor(increase, dtype=torch.float64)
    torch.testing.assert_close(s.scores["weight"].squeeze(0), increase)
    assert s.scores["weight"].squeeze(0).argsort().tolist() == increase.argsort().tolist()


@pytest.mark.parametrize("criterion", ["obd", "snip", "magnitude", "random"])
def test_masks_stay_fixed_during_sparse_training(criterion):
    model = tiny_mlp()
    x, y = data(n=64)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    scores = get_criterion(criterion)(model, loss_fn=ce_loss, batches=[(x, y)], generator=torch.Generator().manual_seed(0))
    masks = M.masks_from_scores(scores, 0.6)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    losses = train_masked_(model, masks, loss_fn=ce_loss, batches=[(x, y)] * 200, optimizer=opt, clip=5.0)
    assert len(losses) == 200 and losses[-1] < losses[0]
    params = dict(model.named_parameters())
    for n, m in masks.items():
        assert bool((params[n][~m] == 0).all())
        assert not torch.equal(params[n][m], before[n][m])
    assert M.sparsity_report(model, masks).sparsity.iloc[-1] == pytest.approx(M.n_to_prune(20, 0.6) / 20)


@pytest.mark.parametrize("estimator", ["hutchinson", "exact"])
def test_obd_saliency_is_non_negative_where_the_hessian_diagonal_is_not(estimator):
    """Away from a minimum (a tanh MLP at init) h_kk < 0 for some weights (a third of them here);
    the signed 0.5 h w^2 would prune the largest of those first."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3)).double()
    batches = [data(n=64, d=6, classes=3)]
    diag, _ = hessian_diagonal(model, loss_fn=ce_loss, batches=batches, estimator=estimator, probes=4)
    assert float(torch.cat([h.flatten() for h in diag.values()]).lt(0).float().mean()) > 0.15
    s = obd_saliency(model, loss_fn=ce_loss, batches=batches, estimator=estimator, probes=4).scores
    params = dict(model.named_parameters())
    scores = torch.cat([v.flatten() for v in s.values()])
    w = torch.cat([params[n].detach().abs().flatten() for n in s])
    first = scores.argsort()[:len(scores) // 10]
    assert w[first].median() < w.median()  # the first pruned are small weights, not large ones
    assert bool((scores >= 0).all())
    for n, h in diag.items():
        torch.testing.assert_close(s[n], 0.5 * h.abs() * params[n].detach().pow(2))


def test_gradient_clipping_counts_only_the_kept_weights():
    """At 90% sparsity an SGD step of lr 1 clipped at c moves the kept weights by exactly c.

    The clipped norm is the masked network's gradient norm; counting the pruned weights'
    gradients too would shrink the step by ||g_kept|| / ||g_all||.
    """
    torch.manual_seed(0)
    model = nn.Linear(16, 3).double()
    x, y = data(n=64, d=16, classes=3)
    masks = {"weight": torch.rand(3, 16, generator=torch.Generator().manual_seed(0)) > 0.9}
    M.apply_masks_(model, masks)
    before = [p.detach().clone() for p in model.parameters()]
    g_weight, g_bias = torch.autograd.grad(ce_loss(model, (x, y)), [model.weight, model.bias])
    kept_norm = torch.cat([g_weight[masks["weight"]], g_bias]).norm()
    clip = 1e-3
    assert kept_norm > 10 * clip and torch.cat([g_weight.flatten(), g_bias]).norm() > 1.5 * kept_norm
    train_masked_(model, masks, loss_fn=ce_loss, batches=[(x, y)], optimizer=torch.optim.SGD(model.parameters(), lr=1.0),
                  clip=clip)
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert float(step.norm()) == pytest.approx(clip, rel=1e-4)  # clip_grad_norm_ divides by norm + 1e-6


def test_prune_at_init_workflow():
    x, y = data(n=32)
    model = tiny_mlp()
    masks, s = prune_at_init_(model, 0.5, loss_fn=ce_loss, batches=[(x[:16], y[:16]), (x[16:], y[16:])],
                              max_batches=1, scheme="class-uniform")
    assert (s.method, s.examples, s.batches) == ("snip", 16, 1)
    assert [int((~m).sum()) for m in masks.values()] == [6, 4]  # exact per-class counts
    assert all(bool((p[~masks[n]] == 0).all()) for n, p in model.named_parameters() if n in masks)
    ref = snip_saliency(tiny_mlp(), loss_fn=ce_loss, batches=[(x[:16], y[:16])])
    assert all(torch.equal(masks[n], m) for n, m in M.masks_from_scores(ref.scores, 0.5, "class-uniform").items())
    _, o = prune_at_init_(tiny_mlp(), 0.5, loss_fn=ce_loss, batches=[(x, y)], criterion="obd")
    assert (o.method, o.estimator) == ("obd", "fisher")


def test_saliencies_are_deterministic():
    model = tiny_mlp()
    batch = data()
    a = obd_saliency(model, loss_fn=ce_loss, batches=[batch], estimator="hutchinson", probes=3,
                     generator=torch.Generator().manual_seed(5))
    b = obd_saliency(model, loss_fn=ce_loss, batches=[batch], estimator="hutchinson", probes=3,
                     generator=torch.Generator().manual_seed(5))
    assert all(torch.equal(a.scores[n], b.scores[n]) for n in a.scores)
    assert (a.probes, a.estimator, a.examples) == (3, "hutchinson", 16)


def test_count_examples_and_hutchinson_cost(monkeypatch):
    assert count_examples({"x": torch.zeros(3, 5, 2), "n": 7}, example_dim=1) == 5
    # A clock that advances one unit per loss evaluation turns the timings into exact counts of forward passes.
    clock = [0.0]

    def counted(m, b):
        clock[0] += 1.0
        return ce_loss(m, b)
    monkeypatch.setattr(second_order, "time", SimpleNamespace(perf_counter=lambda: clock[0]))
    # Central differences: two forward+backward passes (at w + eps z and w - eps z) per probe.
    central = hutchinson_cost(tiny_mlp(), loss_fn=counted, batch=data(), probes=3, repeats=2, hvp="central")
    assert central == dict(forward_backward_s=1.0, per_probe_s=2.0, ratio=2.0)
    # Double backward: the probes share the one forward pass, which is not charged to them.
    exact = hutchinson_cost(tiny_mlp(), loss_fn=counted, batch=data(), probes=3, repeats=2, hvp="autograd")
    assert exact == dict(forward_backward_s=1.0, per_probe_s=0.0, ratio=0.0)


def test_bad_input_errors_name_the_value_and_the_choices():
    model, batch = tiny_mlp(), data()
    with pytest.raises(ValueError, match=r"'bogus'.*fisher, hutchinson, exact"):
        hessian_diagonal(model, loss_fn=ce_loss, batches=[batch], estimator="bogus")
    with pytest.raises(ValueError, match=r"probes=0"):
        obd_saliency(model, loss_fn=ce_loss, batches=[batch], estimator="hutchinson", probes=0)
    with pytest.raises(ValueError, match=r"hvp='forward'.*autograd, central"):
        obd_saliency(model, loss_fn=ce_loss, batches=[batch], estimator="hutchinson", hvp="forward")
    with pytest.raises(ValueError, match=r"step=0.*positive finite"):
        obd_saliency(model, loss_fn=ce_loss, batches=[batch], estimator="hutchinson", hvp="central", step=0)
    with pytest.raises(ValueError, match=r"no batch"):
        obd_saliency(model, loss_fn=ce_loss, batches=[])
    with pytest.raises(ValueError, match=r"no batch"):
        snip_saliency(model, loss_fn=ce_loss, batches=iter(()))
    with pytest.raises(ValueError, match=r"max_batches=0"):
        snip_saliency(model, loss_fn=ce_loss, batches=[batch], max_batches=0)
    with pytest.raises(ValueError, match=r"per_example='fast'.*auto, vmap, loop"):
        obd_saliency(model, loss_fn=ce_loss, batches=[batch], per_example="fast")
    with pytest.raises(ValueError, match=r"sparsity=1.0.*every weight"):
        prune_at_init_(model, 1.0, loss_fn=ce_loss, batches=[batch])
    with pytest.raises(ValueError, match=r"criterion 'craig'.*snip, obd, grasp, synflow"):
        prune_at_init_(model, 0.5, loss_fn=ce_loss, batches=[batch], criterion="craig")
    big = nn.Linear(100, 50)
    with pytest.raises(ValueError, match=r"5000 weights.*max_weights=4096"):
        obd_saliency(big, loss_fn=lambda m, b: m(b).pow(2).mean(), batches=[torch.randn(2, 100)], estimator="exact")


@pytest.mark.parametrize("estimator", [pytest.param(e, marks=[pytest.mark.cuda] if DEVICE == "cuda" else [])
                                       for e in ("fisher", "hutchinson")])
def test_lstm_scores_on_cuda_match_the_cpu(estimator):
    """OBD and SNIP scores of an LSTM computed on the device equal a float64 CPU computation.

    Tolerance: rtol 1e-4 and atol 1e-6 of the largest score (float32 on the device against float64).
    Hutchinson is compared with z * Hz for the very probes the device drew, Hz from the full Hessian.
    """
    torch.manual_seed(0)
    model = TinyLSTM().to(DEVICE)
    ref_model = copy.deepcopy(model).cpu().double()
    g = torch.Generator().manual_seed(0)
    batch = (torch.randint(0, 7, (6, 5), generator=g), torch.randint(0, 2, (6,), generator=g))  # moved by the criterion
    s = obd_saliency(model, loss_fn=ce_loss, batches=[batch], estimator=estimator, probes=2,
                     generator=torch.Generator(device=DEVICE).manual_seed(0))
    assert s.device.startswith(DEVICE) and all(v.device.type == DEVICE for v in s.scores.values())
    names = list(s.scores)
    assert names == ["emb.weight", "lstm.weight_ih_l0", "lstm.weight_hh_l0", "out.weight"]
    if estimator == "fisher":
        h = per_example_fisher(ref_model, names, *batch)
    else:
        hessian = full_hessian(ref_model, names, lambda f, b: nn.functional.cross_entropy(f(b[0]), b[1]), batch)
        params = dict(model.named_parameters())
        gen = torch.Generator(device=DEVICE).manual_seed(0)  # the device's probes, drawn in hutchinson_diagonal's order
        zs = [torch.cat([_rademacher(params[n], gen).flatten() for n in names]).cpu().double() for _ in range(2)]
        h = split_like(sum(z * (hessian @ z) for z in zs) / len(zs), ref_model, names)
    weights = dict(ref_model.named_parameters())
    close = dict(rtol=1e-4, atol=1e-6 * max(float(v.abs().max()) for v in s.scores.values()))
    for n in names:
        torch.testing.assert_close(s.scores[n].cpu().double(), 0.5 * h[n] * weights[n].detach() ** 2, **close)
    snip = snip_saliency(model, loss_fn=ce_loss, batches=[batch]).scores
    grads = dict(zip(names, torch.autograd.grad(ce_loss(ref_model, batch), [weights[n] for n in names])))
    for n in names:
        assert snip[n].device.type == DEVICE
        ref = (grads[n] * weights[n]).abs().detach()
        torch.testing.assert_close(snip[n].cpu().double(), ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))
