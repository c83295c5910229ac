"""Filter criteria: Taylor equals a hand computation of Eq. 8; the oracle equals brute force."""
import copy

import pytest
import torch
from torch import nn

from prunelab import criteria, removal
from prunelab.criteria import filters
from prunelab.models import cnn


def _tiny():
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("conv", nn.Conv2d(1, 3, 3, padding=1))
    net.add_module("relu", nn.ReLU())
    net.add_module("conv2", nn.Conv2d(3, 4, 3))
    net.add_module("relu2", nn.ReLU())
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc", nn.Linear(4 * 4 * 4, 3))
    x, y = torch.randn(5, 1, 6, 6), torch.tensor([0, 1, 2, 1, 0])
    return net, x, y


def test_registry_is_exported():
    assert set(criteria.FILTER_CRITERIA) >= {"taylor", "weight_norm", "activation", "apoz", "random", "obd", "oracle"}
    with pytest.raises(KeyError, match="unknown filter criterion 'l1'.*taylor"):
        criteria.get_filter_criterion("l1")


def test_taylor_equals_hand_computation_of_eq8():
    net, x, y = _tiny()
    scores = filters.taylor(net, batches=[(x[:2], y[:2]), (x[2:], y[2:])])
    expected = torch.zeros(3)
    for n in range(5):  # Eq. 8 for one example: |mean over positions of a * dC/da|, a = the conv's feature map
        a = net.conv(x[n:n + 1]).detach().requires_grad_()
        z = net.conv2(torch.relu(a))
        loss = nn.functional.cross_entropy(net.fc(torch.relu(z).flatten(1)), y[n:n + 1])
        (g,) = torch.autograd.grad(loss, a)
        expected += (a * g).mean(dim=(2, 3)).abs()[0].detach()
    expected /= 5
    expected /= expected.norm()
    assert torch.allclose(scores["conv"], expected, atol=1e-6)
    raw = filters.taylor(net, ["conv"], batches=[(x, y)], normalize="none")["conv"]
    assert torch.allclose(raw / raw.norm(), expected, atol=1e-6) and not torch.allclose(raw, expected)
    assert not any(m._forward_hooks for m in net.modules())  # hooks only while scoring


def test_oracle_equals_brute_force_loss_differences():
    net, x, y = _tiny()
    batches = [(x[:3], y[:3]), (x[3:], y[3:])]
    base = nn.functional.cross_entropy(net(x), y).item()
    signed = filters.oracle_loss(net, batches=batches)
    absolute = filters.oracle(net, batches=batches)
    for name in ("conv", "conv2"):
        for k in range(net.get_submodule(name).out_channels):
            pruned = removal.remove_filters_(copy.deepcopy(net), {name: [k]}, x)  # brute force: really remove it
            delta = nn.functional.cross_entropy(pruned(x), y).item() - base
            assert signed[name][k] == pytest.approx(delta, abs=1e-5)
            assert absolute[name][k] == pytest.approx(abs(delta), abs=1e-5)


def test_oracle_with_batchnorm_matches_physical_removal():
    torch.manual_seed(0)
    net = cnn.vgg_small(image_size=8, cfg=(4, "M", 6, "M"), hidden=8).eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.bias.data.normal_()
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    layers = removal.filter_layers(net, x)
    assert layers["0.0"].point == "0.1"
    signed = filters.oracle_loss(net, batches=[(x, y)])
    base = nn.functional.cross_entropy(net(x), y).item()
    for k in range(4):
        pruned = removal.remove_filters_(copy.deepcopy(net), {"0.0": [k]}, x).eval()
        assert signed["0.0"][k] == pytest.approx(nn.functional.cross_entropy(pruned(x), y).item() - base, abs=1e-5)


def test_other_criteria_shapes_and_values():
    net, x, y = _tiny()
    batches = [(x, y)]
    w = filters.weight_norm(net, batches=batches, normalize="none")  # the paper's Θ_MW: mean of squared weights
    assert torch.allclose(w["conv2"], net.conv2.weight.detach().pow(2).mean(dim=(1, 2, 3)))
    act = filters.mean_activation(net, batches=batches, normalize="none")["conv"]
    assert torch.allclose(act, torch.relu(net.conv(x)).mean(dim=(0, 2, 3)).detach(), atol=1e-6)
    ap = filters.apoz(net, batches=batches, normalize="none")["conv"]
    assert torch.allclose(ap, 1 - (net.conv(x) <= 0).float().mean(dim=(0, 2, 3)))
    r1 = filters.random_filters(net, batches=batches, generator=torch.Generator().manual_seed(3))
    r2 = filters.random_filters(net, batches=batches, generator=torch.Generator().manual_seed(3))
    assert torch.equal(r1["conv"], r2["conv"])
    o = filters.obd(net, batches=batches, normalize="none")
    fisher = torch.zeros_like(net.conv.weight)
    for n in range(5):
        (g,) = torch.autograd.grad(nn.functional.cross_entropy(net(x[n:n + 1]), y[n:n + 1]), net.conv.weight)
        fisher += g ** 2 / 5
    expected = 0.5 * (fisher * net.conv.weight.detach() ** 2).flatten(1).sum(1)
    (gb,) = [torch.stack([torch.autograd.grad(nn.functional.cross_entropy(net(x[n:n + 1]), y[n:n + 1]), net.conv.bias)[0] ** 2
                          for n in range(5)]).mean(0)]
    expected += 0.5 * gb * net.conv.bias.detach() ** 2
    assert torch.allclose(o["conv"], expected, rtol=1e-4)
    with pytest.raises(KeyError, match="unknown layer 'fc'"):
        filters.taylor(net, ["fc"], batches=batches)


def test_oracle_correlation_table():
    ref = {"a": torch.tensor([1.0, 2.0, 3.0, 4.0]), "b": torch.tensor([0.1, 0.3, 0.2])}
    table = filters.oracle_correlation({"same": ref, "reversed": {k: -v for k, v in ref.items()}}, ref)
    assert list(table.layer.unique()) == ["a", "b", "all layers"]
    assert table.set_index(["criterion", "layer"]).spearman[("same", "all layers")] == pytest.approx(1.0)
    assert table.set_index(["criterion", "layer"]).spearman[("reversed", "a")] == pytest.approx(-1.0)
