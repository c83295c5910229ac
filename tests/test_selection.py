"""The streamed selection behind masks_from_scores gives exactly the masks of the plain
concatenate + kthvalue + cumsum rule, and torch.nn.utils.prune's masks where scores have no ties."""
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from prunelab import masks as M
from prunelab import selection


def reference(scores, sparsity, previous=None):
    """The original rule: one concatenation, kthvalue, stable tie-break by a cumsum."""
    names = list(scores)
    flat = []
    for n in names:
        s = scores[n].flatten().float()
        if previous is not None and n in previous:
            s = s.masked_fill(~previous[n].flatten(), float("-inf"))
        flat.append(s)
    flat = torch.cat(flat)
    k = M.n_to_prune(flat.numel(), sparsity)
    if previous is not None:
        k = max(k, int((flat == float("-inf")).sum()))
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k >= flat.numel():
        keep[:] = False
    elif k > 0:
        t = flat.kthvalue(k).values
        below, ties = flat < t, flat == t
        keep = ~(below | (ties & (ties.cumsum(0) <= k - below.sum())))
    out, start = {}, 0
    for n in names:
        out[n] = keep[start:start + scores[n].numel()].view_as(scores[n])
        start += scores[n].numel()
    return out


@pytest.fixture
def tiny_chunks(monkeypatch):
    """Force the streamed path (sample, bracket, bisection) on small tensors."""
    monkeypatch.setattr(selection, "CAP", 64)
    monkeypatch.setattr(selection, "SAMPLE", 32)
    monkeypatch.setattr(selection, "CHUNK", {"cpu": 50, "cuda": 50})


def make_scores(kind, seed):
    g = torch.Generator().manual_seed(seed)
    shapes = [(17, 9), (300,), (4, 5, 6), (1,)]
    if kind == "continuous":
        return {f"p{i}": torch.randn(s, generator=g) for i, s in enumerate(shapes)}
    if kind == "ties":  # a few distinct values: the tie-break decides most of the mask
        return {f"p{i}": torch.randint(0, 4, s, generator=g).float() for i, s in enumerate(shapes)}
    if kind == "zeros":  # many exact zeros, +0.0 and -0.0 mixed, and infinities
        out = {f"p{i}": torch.randn(s, generator=g) * (torch.rand(s, generator=g) > 0.7) for i, s in enumerate(shapes)}
        out["p1"][:40] = -0.0
        out["p1"][40:45] = float("inf")
        out["p0"][0, :3] = float("-inf")
        return out
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["continuous", "ties", "zeros"])
@pytest.mark.parametrize("sparsity", [0.0, 0.01, 0.3, 0.5, 0.77, 0.999])
def test_streamed_masks_equal_reference(tiny_chunks, kind, sparsity):
    for seed in range(3):
        scores = make_scores(kind, seed)
        got = M.masks_from_scores(scores, sparsity)
        want = reference(scores, sparsity)
        assert all(torch.equal(got[n], want[n]) for n in scores), (kind, sparsity, seed)
        n = sum(s.numel() for s in scores.values())
        assert sum(int((~m).sum()) for m in got.values()) == M.n_to_prune(n, sparsity)


@pytest.mark.parametrize("kind", ["continuous", "ties", "zeros"])
def test_streamed_previous_equal_reference(tiny_chunks, kind):
    scores = make_scores(kind, 5)
    first = M.masks_from_scores(scores, 0.4)
    for sparsity in (0.2, 0.4, 0.6, 0.9):  # 0.2 < 0.4: previous already pruned more
        got = M.masks_from_scores(scores, sparsity, previous=first)
        want = reference(scores, sparsity, previous=first)
        assert all(torch.equal(got[n], want[n]) for n in scores)
        assert all(bool((got[n] <= first[n]).all()) for n in scores)


def test_bracket_miss_and_bisection_are_exact(tiny_chunks, monkeypatch):
    # A sample that sees only the first tensor brackets the wrong values; bisection recovers.
    g = torch.Generator().manual_seed(1)
    scores = {"a": torch.rand(500, generator=g), "b": torch.rand(500, generator=g) + 5.0}
    monkeypatch.setattr(selection, "_sample_bracket", lambda s, k, n: (0.1, 0.2))
    for sparsity in (0.05, 0.5, 0.9):
        got = M.masks_from_scores(scores, sparsity)
        want = reference(scores, sparsity)
        assert all(torch.equal(got[n], want[n]) for n in scores)


@pytest.mark.parametrize("scheme", ["class-uniform", "class-distribution"])
def test_streamed_schemes_equal_unstreamed(tiny_chunks, monkeypatch, scheme):
    weights = make_scores("continuous", 2)
    scores = {n: s.abs() for n, s in weights.items()}
    classes = {"x": ["p0", "p2"], "y": ["p1", "p3"]}
    got = M.masks_from_scores(scores, 0.6, scheme, classes, weights=weights)
    monkeypatch.setattr(selection, "CAP", 1 << 22)
    monkeypatch.setattr(selection, "CHUNK", {"cpu": 1 << 20, "cuda": 1 << 20})
    want = M.masks_from_scores(scores, 0.6, scheme, classes, weights=weights)
    assert all(torch.equal(got[n], want[n]) for n in scores)


def test_streamed_nan_raises(tiny_chunks):
    scores = make_scores("continuous", 0)
    scores["p1"][123] = float("nan")
    for sparsity in (0.0, 0.5):
        with pytest.raises(ValueError, match="NaN"):
            M.masks_from_scores(scores, sparsity)


def test_class_blind_equals_torch_global_unstructured(tiny_chunks):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 20), nn.LSTM(20, 10))
    names = ["0.weight", "2.weight", "3.weight_ih_l0", "3.weight_hh_l0"]
    params = dict(model.named_parameters())
    scores = {n: params[n].detach().abs() for n in names}
    ours = M.masks_from_scores(scores, 0.7)
    modules = dict(model.named_modules())
    pairs = [(modules[n.rsplit(".", 1)[0]], n.rsplit(".", 1)[1]) for n in names]
    prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=0.7)
    for (module, attr), n in zip(pairs, names):
        assert torch.equal(ours[n], getattr(module, attr + "_mask").bool())
