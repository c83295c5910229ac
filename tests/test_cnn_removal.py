"""Physical filter removal equals masking; bad plans are refused before anything mutates."""
import copy

import pytest
import torch
import torchvision
from torch import nn

from prunelab import removal
from prunelab.models import cnn


def _randomise_bn_(model):
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so a wrong BN shift would show
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model


MODELS = {
    "alexnet_small": (lambda: cnn.alexnet_small(image_size=32, widths=(8, 12, 16, 16, 12), hidden=32), (1, 32, 32)),
    "vgg_small": (lambda: cnn.vgg_small(image_size=32), (1, 32, 32)),
    "resnet_small": (lambda: cnn.resnet_small(widths=(8, 16, 32)), (1, 32, 32)),
    "tv_alexnet": (lambda: torchvision.models.alexnet(weights=None, num_classes=5), (3, 64, 64)),
    "tv_vgg11": (lambda: torchvision.models.vgg11(weights=None, num_classes=5), (3, 32, 32)),
    "tv_resnet18": (lambda: torchvision.models.resnet18(weights=None, num_classes=5), (3, 32, 32)),
}


def _plan(layers, seed, share=0.4):
    """Every other independent conv loses a share of its filters; one coupled group too."""
    gen = torch.Generator().manual_seed(seed)
    plan, used = {}, set()
    for name, layer in layers.items():
        if name in used or (not layer.coupled and len(plan) % 2):
            used.add(name)
            continue
        if layer.coupled and any(c in plan for c in layer.coupled):
            continue
        k = max(1, int(share * layer.n_filters))
        plan[name] = torch.randperm(layer.n_filters, generator=gen)[:k].tolist()
        used.update(layer.coupled)
    return plan


@pytest.mark.parametrize("kind", list(MODELS))
def test_removal_equals_masking(kind):
    torch.manual_seed(0)
    build, shape = MODELS[kind]
    model = _randomise_bn_(build()).eval()
    x = torch.randn(4, *shape)
    layers = removal.filter_layers(model, x)
    plan = _plan(layers, seed=0)
    assert plan
    with torch.no_grad(), removal.masked_filters(model, plan, layers):
        masked = model(x)
    pruned = removal.remove_filters_(copy.deepcopy(model), plan, x).eval()
    with torch.no_grad():
        out = pruned(x)
    assert torch.allclose(out, masked, atol=1e-5, rtol=0), (out - masked).abs().max()
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    for name, idxs in plan.items():
        assert pruned.get_submodule(name).out_channels == layers[name].n_filters - len(idxs)
    with torch.no_grad():  # hooks are gone after the block: the original output differs from the masked one
        assert not torch.allclose(model(x), masked, atol=1e-6)


def test_resnet_coupling_is_detected_and_pruned_together():
    model = torchvision.models.resnet18(weights=None, num_classes=5).eval()
    x = torch.randn(2, 3, 32, 32)
    layers = removal.filter_layers(model, x)
    assert layers["layer1.0.conv1"].coupled == ()
    assert set(layers["layer1.0.conv2"].coupled) == {"conv1", "layer1.1.conv2"}
    assert layers["layer2.0.conv2"].point == "layer2.0.bn2"
    assert "layer2.0.downsample.0" in layers["layer2.1.conv2"].coupled
    removal.remove_filters_(model, {"layer2.0.conv2": [0, 5, 7]}, x)
    for name in ("layer2.0.conv2", "layer2.1.conv2", "layer2.0.downsample.0"):
        assert model.get_submodule(name).out_channels == 125
    assert model.layer3[0].conv1.in_channels == 125
    with pytest.raises(ValueError, match="share output channels"):
        removal.check_plan({"layer1.0.conv2": [0], "layer1.1.conv2": [1]}, removal.filter_layers(model, x))


def test_bad_plans_are_refused_before_mutation():
    model = cnn.alexnet_small(widths=(4, 4, 4, 4, 4), hidden=8)
    x = torch.zeros(1, 1, 32, 32)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="leaving 0"):
        removal.remove_filters_(model, {"conv3": [0, 1, 2, 3]}, x)
    with pytest.raises(ValueError, match="min_filters=2"):
        removal.remove_filters_(model, {"conv1": [0], "conv3": [0, 1, 2]}, x, min_filters=2)
    with pytest.raises(KeyError, match="unknown layer 'conv9'.*conv1, conv2"):
        removal.remove_filters_(model, {"conv9": [0]}, x)
    with pytest.raises(KeyError, match="unknown layer 'fc6'"):
        removal.remove_filters_(model, {"fc6": [0]}, x)
    with pytest.raises(IndexError, match="filter index 4 is out of range"):
        removal.remove_filters_(model, {"conv2": [4]}, x)
    with pytest.raises(ValueError, match="min_filters=0"):
        removal.check_plan({}, removal.filter_layers(model, x), min_filters=0)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and model.conv3.out_channels == 4


def test_plan_from_scores_exact_counts_and_floor():
    scores = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([0.0, 0.05, 0.9, 0.8])}
    plan = removal.plan_from_scores(scores, 3, min_filters=2)
    assert plan == {"a": [0], "b": [0, 1]}
    assert sum(len(v) for v in removal.plan_from_scores(scores, 5, min_filters=1).values()) == 5
    with pytest.raises(ValueError, match="at most 3 of 7"):
        removal.plan_from_scores(scores, 4, min_filters=2)


def test_wanted_per_layer_is_the_choice_the_guard_overrides():
    scores = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([0.9, 0.8]), "c": torch.tensor([0.3, 0.4])}
    assert removal.wanted_per_layer(scores, 3) == {"a": 3, "b": 0, "c": 0}  # tie at 0.3: layer order first
    assert removal.wanted_per_layer(scores, 4) == {"a": 3, "b": 0, "c": 1}
    plan = removal.plan_from_scores(scores, 4, min_filters=1)
    assert plan == {"a": [0, 1], "b": [1], "c": [0]}  # the guard keeps a's and c's last filters; b gives its lowest
    assert removal.wanted_per_layer(scores, 2) == {"a": 2, "b": 0, "c": 0}
    assert removal.plan_from_scores(scores, 2) == {"a": [0, 1]}  # no guard needed: the plan is the choice


def test_empty_ranks_count_the_lowest_scores_that_take_a_whole_layer():
    scores = {"a": torch.tensor([0.1, 0.2, 0.3]), "b": torch.tensor([0.9, 0.8]), "c": torch.tensor([0.3, 0.4])}
    ranks = removal.empty_ranks(scores)
    assert ranks == {"a": 3, "b": 7, "c": 5}  # a holds the 3 lowest (tie at 0.3: layer order first, as the plan)
    for name, rank in ranks.items():  # the `rank` lowest take every filter of the layer, one fewer does not
        assert removal.wanted_per_layer(scores, rank)[name] == len(scores[name])
        assert removal.wanted_per_layer(scores, rank - 1)[name] < len(scores[name])


def test_plan_by_share_removes_the_same_share_of_every_layer():
    scores = {"a": torch.arange(10.0).flip(0), "b": torch.tensor([0.3, 0.1, 0.2]), "c": torch.tensor([1.0])}
    plan = removal.plan_by_share(scores, 0.5)
    assert plan == {"a": [5, 6, 7, 8, 9], "b": [1, 2]}  # round(1.5) = 2 (half to even); c keeps its one filter
    assert removal.plan_by_share(scores, 0.5, min_filters=2) == {"a": [5, 6, 7, 8, 9], "b": [1]}
    assert removal.plan_by_share(scores, 0.0) == {}
