"""Scores -> masks: exact counts, See et al. schemes, equality with torch.nn.utils.prune."""
import pytest
import torch
import torch.nn.utils.prune as tprune
from torch import nn

from prunelab import criteria, masks


def small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(13, 11), nn.ReLU(), nn.Linear(11, 7), nn.ReLU(), nn.Linear(7, 3))


@pytest.mark.parametrize("n, sparsity, expected", [
    (10, 0.3, 3), (10, 0.25, 2), (10, 0.35, 4), (5, 0.5, 2), (7, 0.5, 4), (1261, 0.5, 630), (3, 1 / 3, 1),
    (100, 0.0, 0), (100, 1.0, 100), (1, 0.49, 0), (1, 0.5, 0), (3, 0.5, 2), (0, 0.7, 0), (216_000_000, 0.9, 194_400_000),
])
def test_n_to_prune_rounds_as_torch_does(n, sparsity, expected):
    """Half to even, as torch.nn.utils.prune: the same count as the ecosystem's reference."""
    from torch.nn.utils.prune import _compute_nparams_toprune

    assert masks.n_to_prune(n, sparsity) == expected == _compute_nparams_toprune(sparsity, n)


@pytest.mark.parametrize("n", [1261, 5, 7, 99, 1001])
def test_class_uniform_equals_l1_unstructured_at_exact_halves(n):
    """At 50% of an odd count torch removes round(n/2) (half to even); prunelab removes the same weights."""
    torch.manual_seed(n)
    layer = nn.Linear(n, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.randperm(n).float().view(1, n) - n / 2)  # distinct magnitudes up to sign pairs
        layer.weight.add_(torch.linspace(0, 0.1, n).view(1, n))           # break the sign ties
    ref = nn.Linear(n, 1, bias=False)
    ref.load_state_dict(layer.state_dict())
    tprune.l1_unstructured(ref, "weight", amount=0.5)
    m = masks.masks_from_scores(criteria.magnitude(layer), 0.5, "class-uniform")
    assert torch.equal(m["weight"], ref.weight_mask.bool())


@pytest.mark.parametrize("scheme", masks.SCHEMES)
@pytest.mark.parametrize("sparsity", [0.0, 0.13, 0.5, 0.77, 0.99])
def test_achieved_count_is_exact(scheme, sparsity):
    model = small_model()
    scores = criteria.magnitude(model)
    m = masks.masks_from_scores(scores, sparsity, scheme, generator=torch.Generator().manual_seed(0),
                                weights=dict(model.named_parameters()))
    if scheme == "class-uniform":
        for name, mask in m.items():
            assert (~mask).sum().item() == masks.n_to_prune(mask.numel(), sparsity), name
    else:
        total = sum(mask.numel() for mask in m.values())
        assert sum((~mask).sum().item() for mask in m.values()) == masks.n_to_prune(total, sparsity)


def test_ties_break_stably_by_index():
    scores = {"a": torch.ones(6), "b": torch.ones(4)}
    m = masks.masks_from_scores(scores, 0.5, "class-blind")
    assert m["a"].tolist() == [False] * 5 + [True]
    assert m["b"].tolist() == [True] * 4
    uniform = masks.masks_from_scores(scores, 0.5, "class-uniform")
    assert uniform["a"].tolist() == [False] * 3 + [True] * 3
    assert uniform["b"].tolist() == [False] * 2 + [True] * 2


def test_class_blind_equals_torch_global_unstructured():
    ours, ref = small_model(1), small_model(1)
    names = criteria.prunable(ours)
    m = masks.masks_from_scores(criteria.magnitude(ours), 0.6, "class-blind")
    modules = [(ref[i], "weight") for i in (0, 2, 4)]
    tprune.global_unstructured(modules, pruning_method=tprune.L1Unstructured, amount=0.6)
    for name, (module, _) in zip(names, modules):
        assert torch.equal(m[name], module.weight_mask.bool()), name


def test_class_uniform_equals_torch_l1_unstructured_per_parameter():
    ours, ref = small_model(2), small_model(2)
    m = masks.masks_from_scores(criteria.magnitude(ours), 0.45, "class-uniform")
    for name, i in zip(criteria.prunable(ours), (0, 2, 4)):
        tprune.l1_unstructured(ref[i], "weight", amount=masks.n_to_prune(ref[i].weight.numel(), 0.45))
        assert torch.equal(m[name], ref[i].weight_mask.bool()), name


def test_class_distribution_hits_target_and_thresholds_by_sigma():
    torch.manual_seed(0)
    # Two classes whose weights have very different spreads: sigma scaling must matter.
    weights = {"wide": torch.randn(400) * 10, "narrow": torch.randn(600)}
    scores = {k: w.abs() for k, w in weights.items()}
    m = masks.masks_from_scores(scores, 0.6, "class-distribution", weights=weights)
    assert sum((~v).sum().item() for v in m.values()) == 600
    frac = {k: (~v).float().mean().item() for k, v in m.items()}
    blind = masks.masks_from_scores(scores, 0.6, "class-blind")
    assert frac["wide"] == pytest.approx(frac["narrow"], abs=0.1)  # same lambda in sigma units
    assert (~blind["narrow"]).float().mean() > 0.9  # class-blind empties the small-magnitude class
    # One lambda: every pruned weight is below every kept weight once divided by its class sigma.
    sigma = {k: w.std(correction=0) for k, w in weights.items()}
    pruned = torch.cat([scores[k][~m[k]] / sigma[k] for k in scores])
    kept = torch.cat([scores[k][m[k]] / sigma[k] for k in scores])
    assert pruned.max() <= kept.min()


def test_class_distribution_sigma_is_the_std_of_the_weights_not_the_rms_of_the_scores():
    """See et al.'s sigma_c is the standard deviation of class c's weights.

    Class "shifted" has weights around 3 with spread 0.1 (std 0.1, RMS about 3), class "centred"
    zero-mean weights with std 1.  In std units the shifted class's magnitudes (about 30 sigma)
    lie far above all of the centred class's (below 4 sigma), so pruning 700 of the 1000 empties
    the centred class and takes the 200 smallest shifted weights.  In RMS units (about 1 for both
    classes, the shifted ones within a few percent of 1) the centred class would keep about a third.
    """
    g = torch.Generator().manual_seed(0)
    weights = {"shifted": 3 + 0.1 * torch.randn(500, generator=g), "centred": torch.randn(500, generator=g)}
    scores = {k: w.abs() for k, w in weights.items()}
    m = masks.masks_from_scores(scores, 0.7, "class-distribution", weights=weights)
    assert (~m["centred"]).all() and (~m["shifted"]).sum().item() == 200
    in_sigmas = {k: (scores[k].double() / weights[k].double().std(correction=0)).float() for k in m}
    lam = torch.cat([in_sigmas[k][~m[k]] for k in m]).max()
    for k in m:  # pruned exactly where |w| <= lambda * sigma_c, sigma_c the population std
        assert torch.equal(~m[k], in_sigmas[k] <= lam)
    with pytest.raises(ValueError, match="needs the weights"):
        masks.masks_from_scores(scores, 0.7, "class-distribution")


def test_random_scheme_is_reproducible_with_a_generator():
    scores = criteria.magnitude(small_model())
    a = masks.masks_from_scores(scores, 0.5, "random", generator=torch.Generator().manual_seed(3))
    b = masks.masks_from_scores(scores, 0.5, "random", generator=torch.Generator().manual_seed(3))
    c = masks.masks_from_scores(scores, 0.5, "random", generator=torch.Generator().manual_seed(4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("scheme", masks.SCHEMES)
def test_masks_are_monotone_across_iterative_rounds(scheme):
    model = small_model()
    previous, gen = None, torch.Generator().manual_seed(0)
    for sparsity in (0.2, 0.4, 0.6, 0.8):
        # New scores each round (as after retraining): a weight pruned earlier must stay pruned.
        scores = criteria.random_scores(model, generator=gen)
        m = masks.masks_from_scores(scores, sparsity, scheme, previous=previous, generator=gen,
                                    weights=dict(model.named_parameters()))
        if previous is not None:
            assert all(not (m[k] & ~previous[k]).any() for k in m)
        total = sum(v.numel() for v in m.values())
        if scheme != "class-uniform":
            assert sum((~v).sum().item() for v in m.values()) == masks.n_to_prune(total, sparsity)
        previous = m


def test_classes_group_parameters():
    model = small_model()
    names = criteria.prunable(model)
    classes = {"hidden": names[:2], "output": names[2:]}
    m = masks.masks_from_scores(criteria.magnitude(model), 0.5, "class-uniform", classes=classes)
    hidden = sum((~m[n]).sum().item() for n in names[:2])
    assert hidden == masks.n_to_prune(sum(m[n].numel() for n in names[:2]), 0.5)


def test_masked_training_keeps_pruned_weights_exactly_zero():
    model = small_model()
    m = masks.masks_from_scores(criteria.magnitude(model), 0.7)
    pairs = masks.bind_masks(model, m)
    masks.apply_masks_(pairs)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    x, y = torch.randn(64, 13), torch.randint(0, 3, (64,))
    for _ in range(20):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        masks.masked_step_(opt, pairs)
    params = dict(model.named_parameters())
    for name, mask in m.items():
        assert (params[name][~mask] == 0).all()
        assert (params[name][mask] != 0).all()
    report = masks.sparsity_report(model, m)
    assert report.iloc[-1]["class"] == "total"
    assert report.iloc[-1].nonzero == sum(v.sum().item() for v in m.values())


def lstm_reference(x, weights, layers):
    """Output of a stacked LSTM written out gate by gate (PyTorch's i, f, g, o order), zero initial state."""
    for k in range(layers):
        h = c = x.new_zeros(x.shape[1], weights[f"weight_hh_l{k}"].shape[1])
        outs = []
        for x_t in x:
            gates = (x_t @ weights[f"weight_ih_l{k}"].T + weights[f"bias_ih_l{k}"]
                     + h @ weights[f"weight_hh_l{k}"].T + weights[f"bias_hh_l{k}"])
            i, f, g, o = gates.chunk(4, dim=-1)
            c = f.sigmoid() * c + i.sigmoid() * g.tanh()
            h = o.sigmoid() * c.tanh()
            outs.append(h)
        x = torch.stack(outs)
    return x


def test_masked_lstm_keeps_flat_weights_valid():
    torch.manual_seed(0)
    lstm = nn.LSTM(8, 16, num_layers=2)
    x = torch.randn(5, 3, 8)
    dense = {n: p.detach().clone() for n, p in lstm.named_parameters()}
    m = masks.masks_from_scores(criteria.magnitude(lstm), 0.5)
    masks.apply_masks_(lstm, m)
    params = dict(lstm.named_parameters())
    # The flat weights (the list the LSTM hands its kernel) are the masked parameters themselves, zeros included.
    for name, flat in zip(lstm._flat_weights_names, lstm._flat_weights):
        assert flat.data_ptr() == params[name].data_ptr(), name
        if name in m:
            assert (flat[~m[name]] == 0).all() and (flat[m[name]] != 0).all(), name
    with torch.no_grad():
        out, _ = lstm(x)
        masked = {n: w * m[n] if n in m else w for n, w in dense.items()}
        torch.testing.assert_close(out, lstm_reference(x, masked, 2), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(out, lstm_reference(x, dense, 2), atol=1e-3)  # the zeros matter


@pytest.mark.parametrize("bad", [-0.1, 1.5, 1.0, float("nan"), "0.5"])
def test_bad_sparsity_names_value(bad):
    with pytest.raises(ValueError, match="sparsity="):
        masks.masks_from_scores({"w": torch.ones(4)}, bad)


def test_bad_scheme_lists_allowed():
    with pytest.raises(ValueError, match="class-blind.*random"):
        masks.masks_from_scores({"w": torch.ones(4)}, 0.5, "layerwise")


def test_class_naming_missing_parameter():
    with pytest.raises(KeyError, match="'nope'"):
        masks.masks_from_scores({"w": torch.ones(4)}, 0.5, classes={"c": ["nope"]})


def test_masks_that_do_not_match_the_model():
    model = small_model()
    with pytest.raises(KeyError, match="'9.weight'"):
        masks.apply_masks_(model, {"9.weight": torch.ones(3, 7, dtype=torch.bool)})
    with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
        masks.apply_masks_(model, {"0.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(TypeError, match="torch.bool"):
        masks.apply_masks_(model, {"0.weight": torch.ones(11, 13)})


def test_unknown_criterion_lists_allowed():
    with pytest.raises(KeyError, match="magnitude"):
        criteria.get_criterion("taylorr")


@pytest.mark.cuda
def test_masks_stay_on_cuda_and_match_cpu():
    model = small_model()
    cpu = masks.masks_from_scores(criteria.magnitude(model), 0.6)
    gpu = masks.masks_from_scores(criteria.magnitude(model.cuda()), 0.6)
    assert all(v.is_cuda for v in gpu.values())
    assert all(torch.equal(cpu[k], gpu[k].cpu()) for k in cpu)
