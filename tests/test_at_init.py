"""GraSP, SynFlow, layer-wise ratios and the Frankle et al. controls against direct computations."""
import pytest
import torch
from torch import nn

from prunelab.criteria import CRITERIA, get_criterion
from prunelab.criteria.flow import grasp_saliency, ones_flow, synflow_saliency, synflow_scores
from prunelab.masks import layer_ratios, masks_from_scores, masks_with_ratios, n_to_prune
from prunelab.sparse_init import erk_ratios, prune_at_init_, reinit_kept_, shuffle_within_layers


def tiny_mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()


def mse(model, batch):
    x, y = batch
    return (model(x) - y).pow(2).mean()


def data(n=6):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randn(n, 2, generator=g, dtype=torch.float64))
            for _ in range(2)]


def explicit_hg(model, batches, names):
    """H g by forming the Hessian of the mean loss over the named weights (all examples weigh alike)."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat0 = torch.cat([params[n].detach().reshape(-1) for n in names])

    def loss(flat):
        chunks, i = {}, 0
        for n, s in zip(names, shapes):
            chunks[n] = flat[i:i + s.numel()].reshape(s)
            i += s.numel()
        return sum(mse(lambda x: torch.func.functional_call(model, chunks, (x,)), b) for b in batches) / len(batches)

    g = torch.autograd.functional.jacobian(loss, flat0)
    h = torch.autograd.functional.hessian(loss, flat0)
    hg, out, i = h @ g, {}, 0
    for n, s in zip(names, shapes):
        out[n] = hg[i:i + s.numel()].reshape(s)
        i += s.numel()
    return out


@pytest.mark.parametrize("hvp,tol", [("autograd", 1e-10), ("central", 1e-6), ("forward", 1e-6)])
def test_grasp_is_w_times_hessian_gradient(hvp, tol):
    model, batches = tiny_mlp(), data()
    names = ["0.weight", "2.weight"]
    hg = explicit_hg(model, batches, names)
    sal = grasp_saliency(model, names, loss_fn=mse, batches=batches, hvp=hvp)
    params = dict(model.named_parameters())
    for n in names:
        expected = params[n].detach() * hg[n]  # keep-score: the negated paper score -w * Hg
        assert torch.allclose(sal.scores[n], expected, atol=tol * expected.abs().max(), rtol=0), n
    assert sal.method == "grasp" and sal.examples == 12 and sal.batches == 2
    # The paper prunes the highest -w*Hg: the mask keeps the highest w*Hg.
    masks = masks_from_scores(sal.scores, 0.5)
    paper = torch.cat([(-params[n].detach() * hg[n]).reshape(-1) for n in names])
    kept = torch.cat([masks[n].reshape(-1) for n in names])
    assert paper[~kept].min() >= paper[kept].max()


def relu_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7, bias=False), nn.ReLU(), nn.Linear(7, 6, bias=False), nn.ReLU(),
                         nn.Linear(6, 3, bias=False))


def test_synflow_conserves_flow_per_layer():
    net = relu_net()
    scores = synflow_scores(net, flow_fn=ones_flow((5,)))
    with torch.no_grad():
        x = torch.ones(1, 5, dtype=torch.float64)
        for layer in net:
            x = x @ layer.weight.double().abs().t() if isinstance(layer, nn.Linear) else x
        flow = float(x.sum())
    for name, s in scores.items():
        assert float(s.double().sum()) == pytest.approx(flow, rel=1e-6), name
        assert (s >= 0).all()
    assert net[0].weight.dtype == torch.float32 and (net[0].weight < 0).any()  # model restored


def test_synflow_iterative_exact_count_and_only_removes():
    net = relu_net()
    total = sum(p.numel() for p in net.parameters())
    sal = synflow_saliency(net, flow_fn=ones_flow((5,)), sparsity=0.9, rounds=10)
    masks = masks_from_scores(sal.scores, 0.9)
    assert sum(int((~m).sum()) for m in masks.values()) == n_to_prune(total, 0.9)
    # The weights scored -1 (pruned in earlier rounds) are all pruned in the final mask.
    assert all(not bool(masks[n][s < 0].any()) for n, s in sal.scores.items())
    assert sal.probes == 10 and sal.method == "synflow"


def test_registry_has_the_new_criteria():
    assert {"grasp", "synflow"} <= set(CRITERIA)
    with pytest.raises(KeyError, match=r"'grasp2'.*grasp"):
        get_criterion("grasp2")


def test_bad_input_is_refused_with_the_value_and_what_is_allowed():
    net = relu_net()
    with pytest.raises(ValueError, match=r"rounds=0.*positive integer"):
        synflow_saliency(net, flow_fn=ones_flow((5,)), sparsity=0.5, rounds=0)
    with pytest.raises(ValueError, match=r"sparsity=1.0 is outside \[0, 1\)"):
        synflow_saliency(net, flow_fn=ones_flow((5,)), sparsity=1.0)
    with pytest.raises(ValueError, match=r"sparsity=-0.1 is outside"):
        prune_at_init_(net, -0.1, criterion="synflow", flow_fn=ones_flow((5,)))
    with pytest.raises(ValueError, match=r"unknown criterion 'grasps'.*snip, obd, grasp, synflow"):
        prune_at_init_(net, 0.5, loss_fn=mse, batches=data(), criterion="grasps")
    with pytest.raises(ValueError, match=r"'grasp' needs loss_fn"):
        prune_at_init_(net, 0.5, criterion="grasp")
    with pytest.raises(ValueError, match=r"hvp='backward'; choose one of autograd, central, forward"):
        grasp_saliency(tiny_mlp(), loss_fn=mse, batches=data(), hvp="backward")
    with pytest.raises(ValueError, match=r"sparsity=1.5 is outside \[0, 1\]"):
        masks_with_ratios({"w": torch.rand(4)}, {"w": 1.5})


def test_prune_at_init_grasp_and_synflow_zero_exact_counts():
    for criterion, ctx in [("grasp", dict(loss_fn=mse, batches=data())), ("synflow", dict(flow_fn=ones_flow((3,)), rounds=5))]:
        model = tiny_mlp()
        masks, sal = prune_at_init_(model, 0.75, criterion=criterion, **ctx)
        assert sum(int((~m).sum()) for m in masks.values()) == n_to_prune(20, 0.75), criterion
        assert all(bool((dict(model.named_parameters())[n][~m] == 0).all()) for n, m in masks.items())


def test_erk_and_given_ratios_and_controls():
    shapes = {"a": torch.Size([40, 30]), "b": torch.Size([30, 10]), "c": torch.Size([10, 2])}
    r = erk_ratios(shapes, 0.9)
    kept = sum((1 - r[n]) * s.numel() for n, s in shapes.items())
    assert kept == pytest.approx(0.1 * 1520) and r["a"] > r["b"] > r["c"] >= 0
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(s, generator=g) for n, s in shapes.items()}
    base = masks_from_scores(scores, 0.8)
    again = masks_with_ratios({n: torch.rand(s, generator=g) for n, s in shapes.items()}, layer_ratios(base))
    assert {n: int(m.sum()) for n, m in again.items()} == {n: int(m.sum()) for n, m in base.items()}
    shuffled = shuffle_within_layers(base, torch.Generator().manual_seed(1))
    assert {n: int(m.sum()) for n, m in shuffled.items()} == {n: int(m.sum()) for n, m in base.items()}
    assert any(not torch.equal(shuffled[n], base[n]) for n in base)
    model = nn.Linear(30, 40, bias=False)
    before = model.weight.detach().clone()
    reinit_kept_(model, {"weight": base["a"]}, lambda m: nn.init.uniform_(m.weight, -0.1, 0.1))
    assert bool((model.weight[~base["a"]] == 0).all()) and not torch.equal(model.weight[base["a"]], before[base["a"]])


def test_grasp_forward_difference_is_close_in_float32():
    model, batches = tiny_mlp().float(), [(x.float(), y.float()) for x, y in data()]
    exact = grasp_saliency(model, loss_fn=mse, batches=batches).scores
    approx = grasp_saliency(model, loss_fn=mse, batches=batches, hvp="forward").scores
    for n in exact:
        assert torch.allclose(approx[n], exact[n], atol=1e-2 * exact[n].abs().max(), rtol=0), n
