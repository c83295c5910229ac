"""Filter pruning on a spread of torchvision architectures (random weights, randomised batch-norm
statistics, eval mode): removal equals the masked reference, activation criteria see the feature
map they are defined on, output layers are never offered, grouped channels are ranked and removed
together, and the metrics leave the model's mode as they found it."""
import copy
import functools
import types

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.efficientnet import MBConv
from torchvision.models.resnet import BasicBlock

from prunelab import metrics, removal, structured
from prunelab.criteria import filters
from prunelab.models import cnn

ARCHS = {  # name -> (extra keyword arguments, image size)
    "alexnet": ({}, 64),  # plain
    "resnet18": ({}, 32),  # residual
    "densenet121": ({}, 32),  # dense: batch-norm after concatenation
    "mobilenet_v2": ({}, 32),  # depthwise, inverted residual
    "efficientnet_b0": ({}, 32),  # depthwise, squeeze-excitation, in-place SiLU and residual add
    "mobilenet_v3_small": ({}, 32),  # depthwise, squeeze-excitation, Hardswish
    "googlenet": (dict(aux_logits=False, init_weights=True), 32),  # inception
    "squeezenet1_1": ({}, 32),  # fire modules, a conv classifier
}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tensors here are tiny: a second intra-op thread only adds synchronisation (10x slower on a busy
    2-core machine). The shared models are dropped when the module is done."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    _built.cache_clear()


def _randomise_bn_(model):
    gen = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics and shifts, so a zero does not stay zero
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))
    return model


@functools.cache
def _built(arch):
    """(model in eval mode, a batch of 2 images, 5 labels, its filter layers); shared, never mutated by the tests."""
    kw, size = ARCHS[arch]
    torch.manual_seed(0)
    model = _randomise_bn_(getattr(torchvision.models, arch)(weights=None, num_classes=5, **kw)).eval()
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(2, 3, size, size, generator=gen), torch.tensor([1, 3])
    return model, x, y, removal.filter_layers(model, x)


def _plan(layers, seed=0):
    """A few channels (one in eight, at least one) of every rankable group, drawn at random."""
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randperm(layers[n].n_filters, generator=gen)[:max(1, layers[n].n_filters // 8)].tolist()
            for n in removal.rankable(layers)}


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a == "densenet121" else a for a in ARCHS])
def test_removal_equals_the_masked_reference(arch):  # DenseNet: 120 groups, Torch-Pruning's concat index maps take seconds
    model, x, _, layers = _built(arch)
    plan = _plan(layers)
    with torch.no_grad(), removal.masked_filters(model, plan, layers):
        masked = model(x)
    pruned = removal.remove_filters_(copy.deepcopy(model), plan, x).eval()
    with torch.no_grad():
        out, full = pruned(x), model(x)
    assert out.shape == full.shape == (2, 5)  # no class was removed
    assert float((out - masked).abs().max()) <= 1e-5 * float(masked.abs().max())
    assert float((full - masked).abs().max()) > 1e-3 * float(masked.abs().max())  # the plan changed the net
    for leader, idxs in plan.items():  # every member of a group lost the planned channels
        for member in layers[leader].members:
            assert pruned.get_submodule(member).out_channels == layers[member].n_filters - len(idxs)
    assert not any(m._forward_pre_hooks for m in model.modules())  # the reference leaves no hook behind


def test_densenet_masks_where_removal_acts():
    """A conv feeding concatenations is zeroed at every consumer, not at its own output (a batch-norm follows the cat)."""
    model, x, _, layers = _built("densenet121")
    name = "features.denseblock4.denselayer15.conv2"
    assert layers[name].point == name and not layers[name].coupled
    zeroed = removal.masked_inputs({name: [0, 5]}, layers)
    assert zeroed == {"features.denseblock4.denselayer16.conv1": [960, 965], "classifier": [960, 965]}


def test_output_layers_are_never_offered():
    model, x, y, layers = _built("squeezenet1_1")
    assert "classifier.1" in layers and "classifier.1" not in removal.rankable(layers)
    assert "output" in layers["classifier.1"].reason
    with pytest.raises(ValueError, match="'classifier.1' cannot be pruned: its channels are the model's output"):
        removal.check_plan({"classifier.1": [0]}, layers)
    with pytest.raises(ValueError, match="'classifier.1' cannot be pruned"):
        filters.taylor(model, ["classifier.1"], batches=[(x, y)], layers=layers)
    for arch in ARCHS:  # no offered group's channels reach the output; the classes stay (checked above by shape)
        assert all(_built(arch)[3][n].prunable for n in removal.rankable(_built(arch)[3]))


@pytest.mark.parametrize("arch", ["mobilenet_v2", "efficientnet_b0"])
def test_depthwise_and_gate_channels_form_groups_that_are_ranked(arch):
    model, x, y, layers = _built(arch)
    groups = {layer.leader for layer in layers.values()}
    ranked = removal.rankable(layers)
    assert len(ranked) >= 0.8 * len(groups)
    assert sum(len(layers[n].members) for n in ranked) >= 0.8 * len(layers)  # counted as convs too
    depthwise = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert depthwise and all(layers[d].leader != d and layers[d].leader in ranked for d in depthwise)
    scores = filters.weight_norm(model, batches=[(x, y)], layers=layers, normalize="none")
    assert list(scores) == ranked
    for n in ranked:  # a group's score sums its members' Θ_MW
        expected = sum(model.get_submodule(m).weight.detach().pow(2).flatten(1).mean(1) for m in layers[n].members)
        assert torch.allclose(scores[n], expected)


def test_grouped_channels_are_removed_together_and_named_once():
    model, x, _, layers = _built("efficientnet_b0")
    dw = "features.2.0.block.1.0"  # depthwise conv of the second block
    members = layers[dw].members
    assert members == ("features.2.0.block.0.0", dw, "features.2.0.block.2.fc2")  # expand conv, depthwise conv, SE gate
    with pytest.raises(ValueError, match="share output channels"):
        removal.check_plan({members[0]: [0], dw: [1]}, layers)
    pruned = removal.remove_filters_(copy.deepcopy(model), {dw: [0, 3, 7]}, x)
    n = layers[dw].n_filters
    assert [pruned.get_submodule(m).out_channels for m in members] == [n - 3] * 3
    assert pruned.get_submodule(dw).in_channels == pruned.get_submodule(dw).groups == n - 3
    assert pruned.get_submodule("features.2.0.block.2.fc1").in_channels == n - 3
    assert pruned.get_submodule("features.2.0.block.3.0").in_channels == n - 3


def _out_of_place(model):
    """A copy of ``model`` with no in-place op: activations' ``inplace`` off, residual additions out of place."""
    def basic(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + identity)

    def mbconv(self, x):
        result = self.block(x)
        return self.stochastic_depth(result) + x if self.use_res_connect else result

    model = copy.deepcopy(model)
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
        if isinstance(m, BasicBlock):
            m.forward = types.MethodType(basic, m)
        if isinstance(m, MBConv):
            m.forward = types.MethodType(mbconv, m)
    return model


def _direct(model, layers, names, x, y):
    """Taylor, mean activation and 1 - APoZ per group, raw, from plain hooks on each member's point."""
    acts = {}
    members = list(dict.fromkeys(m for n in names for m in layers[n].members))
    handles = [model.get_submodule(layers[m].point).register_forward_hook(lambda _m, _i, out, m=m: acts.__setitem__(m, out))
               for m in members]
    loss = nn.functional.cross_entropy(model(x), y, reduction="sum")
    grads = dict(zip(members, torch.autograd.grad(loss, [acts[m] for m in members])))
    for h in handles:
        h.remove()
    per = {"taylor": lambda a, g: (a * g).mean((2, 3)).abs().mean(0), "activation": lambda a, g: a.clamp(min=0).mean((0, 2, 3)),
           "apoz": lambda a, g: 1 - (a <= 0).float().mean((0, 2, 3))}
    return {c: {n: sum(f(acts[m].detach(), grads[m]) for m in layers[n].members) for n in names} for c, f in per.items()}


@pytest.mark.parametrize("arch", ["resnet18", "efficientnet_b0"])
def test_activation_criteria_see_the_feature_map_not_later_in_place_ops(arch):
    model, x, y, layers = _built(arch)
    names = removal.rankable(layers)
    expected = _direct(_out_of_place(model), layers, names, x, y)
    for crit in ("taylor", "activation", "apoz"):
        got = filters.FILTER_CRITERIA[crit](model, names, batches=[(x, y)], layers=layers, normalize="none")
        for n in names:
            scale = float(expected[crit][n].abs().max())
            assert torch.allclose(got[n], expected[crit][n], rtol=1e-4, atol=1e-6 * scale), (crit, n)
    naive = _direct(model, layers, names, x, y)["taylor"]  # hooks without a copy see what in-place ops made of the map
    assert any(not torch.allclose(naive[n], expected["taylor"][n], rtol=1e-3) for n in names)


def _mini_mobilenet_v3():
    """torchvision's MobileNetV3 with three blocks (depthwise convs, SE gates, one residual): the loop's test net."""
    from torchvision.models.mobilenetv3 import InvertedResidualConfig as Block, MobileNetV3

    blocks = [Block(16, 3, 16, 16, True, "RE", 2, 1, 1.0), Block(16, 3, 48, 24, True, "HS", 2, 1, 1.0),
              Block(24, 3, 64, 24, True, "HS", 1, 1, 1.0)]
    torch.manual_seed(0)
    return _randomise_bn_(MobileNetV3(blocks, last_channel=64, num_classes=5)).eval()


def test_loop_and_oracle_on_a_squeeze_excitation_net():
    """The pruning loop ranks and removes grouped channels; the oracle scores a group as its removal does."""
    model = _mini_mobilenet_v3()
    gen = torch.Generator().manual_seed(0)
    xs, ys = torch.randn(24, 3, 32, 32, generator=gen), torch.randint(0, 5, (24,), generator=gen)
    layers = removal.filter_layers(model, xs[:2])
    ranked = removal.rankable(layers)
    assert len(ranked) == len({layer.leader for layer in layers.values()}) and len(ranked) < len(layers)
    data = {"x_train": xs[:16], "y_train": ys[:16], "x_test": xs[16:], "y_test": ys[16:]}
    total = sum(layers[n].n_filters for n in ranked)
    cfg = structured.PruneConfig(criterion="taylor", filters_per_step=24, finetune_epochs=1, batch_size=8, target_flops=None,
                                 target_filters=total - 24, score_examples=8, latency_batch=2, latency_repeats=1)
    levels, per_layer = structured.prune_iteratively(model, data, cfg)
    assert [r["removed"] for r in levels] == [0, 24] and levels[1]["flops"] < levels[0]["flops"]
    assert {r["layer"] for r in per_layer} == set(ranked)
    leader = next(n for n in ranked if len(layers[n].members) == 3)  # a conv, its depthwise conv and an SE gate
    x, y = xs[:4], ys[:4]
    signed = filters.oracle_loss(model, [leader], batches=[(x, y)], layers=layers)[leader]
    base = nn.functional.cross_entropy(model(x), y).item()
    for k in (0, 5):
        pruned = removal.remove_filters_(copy.deepcopy(model), {leader: [k]}, x).eval()
        assert signed[k] == pytest.approx(nn.functional.cross_entropy(pruned(x), y).item() - base, abs=1e-5)


def test_metrics_restore_the_mode_they_found():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout(), nn.Flatten(), nn.Linear(8, 3)).train()
    net[1].eval()  # a frozen batch-norm inside a training net
    x = torch.randn(4, 1, 4, 4)
    metrics.flops(net, x[:1]), metrics.accuracy(net, x, torch.zeros(4, dtype=torch.long)), metrics.latency(net, x, repeats=1)
    assert [m.training for m in net.modules()] == [True, True, False, True, True, True]
    net.eval()
    metrics.accuracy(net, x, torch.zeros(4, dtype=torch.long))
    assert not any(m.training for m in net.modules())


def test_every_criterion_is_normalised_the_same_way_unless_asked_for_raw_scores():
    torch.manual_seed(0)
    model = _randomise_bn_(cnn.resnet_small(widths=(4, 8, 8))).eval()  # small, with residual-coupled groups
    x, y = torch.randn(3, 1, 16, 16), torch.tensor([0, 4, 9])
    layers = removal.filter_layers(model, x)
    names = removal.rankable(layers)
    assert any(layers[n].coupled for n in names)
    context = dict(batches=[(x, y)], layers=layers, generator=torch.Generator().manual_seed(0), max_examples=2)
    for crit in ("taylor", "weight_norm", "activation", "apoz", "random", "obd"):
        fn = filters.FILTER_CRITERIA[crit]
        raw = fn(model, names, **context, normalize="none")
        if crit == "random":
            context["generator"].manual_seed(0)
        scaled = fn(model, names, **context)  # the default: layer-wise L2 (Molchanov et al. Sec. 2.3)
        if crit == "random":
            context["generator"].manual_seed(0)
        for n in names:
            assert torch.allclose(scaled[n], raw[n] / raw[n].norm(), atol=1e-6), (crit, n)
    oracle = filters.oracle(model, names[:1], **context)[names[0]]  # the reference stays raw by default
    assert float(oracle.norm()) != pytest.approx(1.0)
    assert "L2" in filters.describe_normalization("l2") and "raw" in filters.describe_normalization("none")
    with pytest.raises(ValueError, match="normalize='max' is not offered; choose one of l2, none"):
        filters.taylor(model, names, **context, normalize="max")
