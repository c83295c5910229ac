"""Physical filter removal with Torch-Pruning's dependency graph, and the matching masked forward.

A *filter plan* maps conv module names to the output channels (filters) to remove. Removal runs
in two steps (Torch-Pruning's split): `check_plan` validates the whole plan before anything
mutates, then `remove_filters_` prunes each conv's dependency group, so the change propagates to
the following batch-norm, conv and linear layers (through ``flatten`` too).

Residual additions tie the output channels of several convs (a ResNet stage's stem/shortcut and
every block's last conv). Such a conv is *coupled*: its plan entry removes the same channels from
every conv of its group at once (Torch-Pruning's group), and two entries of one group are refused.
`independent` lists the convs that can be pruned alone; the pruning loop ranks only those.

`masked_filters` is the reference semantics: a removed filter's feature map (the output of the
batch-norm that follows the conv, else of the conv) is zeroed. In eval mode the physically
pruned net computes the same function as the masked one.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import Tensor, nn

Plan = dict[str, list[int]]


@dataclass(frozen=True)
class FilterLayer:
    """One conv whose filters can be removed.

    Attributes:
        name: the conv's module name.
        point: module whose output holds its feature maps (the following BatchNorm2d, else the conv).
        n_filters: its current number of output channels.
        coupled: other convs whose output channels are tied to this one's by residual additions.
    """

    name: str
    point: str
    n_filters: int
    coupled: tuple[str, ...] = ()


def build_graph(model: nn.Module, example: Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` traced on ``example`` (a batch of inputs)."""
    was_training = model.training
    model.eval()
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=example[:1])
    finally:
        model.train(was_training)


def _group_convs(graph: tp.DependencyGraph, conv: nn.Conv2d, names: dict) -> list[tuple[str, list[int]]]:
    group = graph.get_pruning_group(conv, tp.prune_conv_out_channels, idxs=[0])
    return [(names[dep.target.module], list(idxs)) for dep, idxs in group
            if isinstance(dep.target.module, nn.Conv2d) and graph.is_out_channel_pruning_fn(dep.handler)]


def filter_layers(model: nn.Module, example: Tensor, graph: tp.DependencyGraph | None = None) -> dict[str, FilterLayer]:
    """Every (non-grouped) ``nn.Conv2d`` of ``model``, in module order, with its feature-map point and couplings.

    ``graph`` reuses a dependency graph already traced on ``model`` (else one is traced on ``example``).

    >>> from prunelab.models.cnn import alexnet_small
    >>> layers = filter_layers(alexnet_small(), torch.zeros(1, 1, 32, 32))
    >>> list(layers), layers["conv1"].n_filters
    (['conv1', 'conv2', 'conv3', 'conv4', 'conv5'], 32)
    """
    graph = graph or build_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    layers = {}
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d) or conv.groups != 1:
            continue
        outputs = graph.module2node[conv].outputs
        point = name
        if len(outputs) == 1 and isinstance(outputs[0].module, nn.BatchNorm2d):
            point = names[outputs[0].module]
        coupled = tuple(sorted({n for n, _ in _group_convs(graph, conv, names)} - {name}))
        layers[name] = FilterLayer(name, point, conv.out_channels, coupled)
    return layers


def independent(layers: Mapping[str, FilterLayer]) -> list[str]:
    """Names of the convs whose filters can be removed alone (no residual coupling)."""
    return [n for n, layer in layers.items() if not layer.coupled]


def check_plan(plan: Mapping[str, Sequence[int]], layers: Mapping[str, FilterLayer], min_filters: int = 1) -> Plan:
    """Validate ``plan`` against ``layers``; return it with sorted, de-duplicated int indices.

    Raises:
        KeyError: a layer name that is not a prunable conv.
        IndexError: a filter index outside ``[0, n_filters)``.
        ValueError: ``min_filters < 1``; a plan leaving fewer than ``min_filters`` filters in a layer
            (an emptied layer included); two entries of one residual-coupled group.

    >>> check_plan({"conv1": [3, 1, 3]}, {"conv1": FilterLayer("conv1", "conv1", 4)})
    {'conv1': [1, 3]}
    """
    if int(min_filters) < 1:
        raise ValueError(f"min_filters={min_filters!r} must be at least 1: a layer is never emptied")
    clean, owner = {}, {}
    for name, idxs in plan.items():
        if name not in layers:
            raise KeyError(f"unknown layer {name!r}; prunable conv layers are {', '.join(layers)}")
        layer = layers[name]
        idxs = sorted({int(i) for i in idxs})
        if idxs and (idxs[0] < 0 or idxs[-1] >= layer.n_filters):
            bad = idxs[0] if idxs[0] < 0 else idxs[-1]
            raise IndexError(f"filter index {bad} is out of range for {name!r}, which has {layer.n_filters} filters")
        left = layer.n_filters - len(idxs)
        if left < min_filters:
            raise ValueError(f"the plan removes {len(idxs)} of {layer.n_filters} filters of {name!r}, leaving {left}; "
                             f"at least min_filters={min_filters} must stay")
        for member in (name, *layer.coupled):
            if member in owner:
                raise ValueError(f"{name!r} and {owner[member]!r} share output channels through a residual addition; "
                                 "give their group once in the plan")
            owner[member] = name
        if idxs:
            clean[name] = idxs
    return clean


def remove_filters_(model: nn.Module, plan: Mapping[str, Sequence[int]], example: Tensor, min_filters: int = 1) -> nn.Module:
    """Physically remove the planned filters from ``model`` (in place) and return it.

    Each entry prunes its conv's Torch-Pruning group: the conv's out channels, the following
    batch-norm, the next convs' in channels and linear in-features (through flatten), and, for
    a coupled conv, the same channels of every conv tied to it by residual additions.

    Args:
        plan: conv name -> filter indices (as numbered before this call).
        example: an input batch used to trace the graph, shape ``(N, C, H, W)``.
        min_filters: the fewest filters any layer may keep.

    Raises:
        See `check_plan`; nothing is changed when the plan is refused.

    >>> from prunelab.models.cnn import alexnet_small
    >>> net = remove_filters_(alexnet_small(), {"conv5": [0, 1]}, torch.zeros(1, 1, 32, 32))
    >>> net.conv5.out_channels, net.fc6.in_features
    (62, 992)
    """
    graph = build_graph(model, example)
    plan = check_plan(plan, filter_layers(model, example, graph), min_filters)
    modules = dict(model.named_modules())
    for name, idxs in plan.items():
        group = graph.get_pruning_group(modules[name], tp.prune_conv_out_channels, idxs=idxs)
        group.prune()
    return model


def mask_points(plan: Mapping[str, Sequence[int]], layers: Mapping[str, FilterLayer]) -> dict[str, list[int]]:
    """Feature-map point -> channels zeroed by ``plan`` (coupled convs included)."""
    points: dict[str, set[int]] = {}
    for name, idxs in plan.items():
        for member in (name, *layers[name].coupled):
            points.setdefault(layers[member].point, set()).update(int(i) for i in idxs)
    return {p: sorted(c) for p, c in points.items()}


@contextmanager
def masked_filters(model: nn.Module, plan: Mapping[str, Sequence[int]], layers: Mapping[str, FilterLayer]) -> Iterator[nn.Module]:
    """Within the block, ``model`` runs with the planned feature maps zeroed (forward hooks, removed on exit).

    >>> from prunelab.models.cnn import alexnet_small
    >>> net = alexnet_small(); layers = filter_layers(net, torch.zeros(1, 1, 32, 32))
    >>> with masked_filters(net, {"conv1": [0]}, layers):
    ...     y = net(torch.zeros(1, 1, 32, 32))
    """
    plan = check_plan(plan, layers, min_filters=1)
    modules = dict(model.named_modules())
    handles = []
    try:
        for point, idxs in mask_points(plan, layers).items():
            def hook(_module, _inputs, out, idxs=torch.tensor(idxs)):
                keep = torch.ones(out.shape[1], dtype=out.dtype, device=out.device)
                keep[idxs.to(out.device)] = 0
                return out * keep.view(1, -1, *([1] * (out.ndim - 2)))
            handles.append(modules[point].register_forward_hook(hook))
        yield model
    finally:
        for h in handles:
            h.remove()


def plan_from_scores(scores: Mapping[str, Tensor], n_remove: int, min_filters: int = 1) -> Plan:
    """Remove the ``n_remove`` lowest-scored filters across layers, keeping ``min_filters`` per layer.

    Ties are broken stably by layer order, then filter index, so the count is exact.

    Raises:
        ValueError: ``n_remove`` exceeds what ``min_filters`` allows.

    >>> plan_from_scores({"a": torch.tensor([0.5, 0.1, 0.9]), "b": torch.tensor([0.2, 0.3])}, 2)
    {'a': [1], 'b': [0]}
    """
    capacity = {n: max(int(s.numel()) - int(min_filters), 0) for n, s in scores.items()}
    if n_remove < 0 or n_remove > sum(capacity.values()):
        raise ValueError(f"cannot remove {n_remove} filters: with min_filters={min_filters} at most "
                         f"{sum(capacity.values())} of {sum(s.numel() for s in scores.values())} can go")
    order = sorted(((float(v), li, i) for li, s in enumerate(scores.values()) for i, v in enumerate(s.detach().cpu().tolist())))
    names, plan, taken = list(scores), {}, {n: 0 for n in scores}
    for _, li, i in order:
        if sum(taken.values()) == n_remove:
            break
        name = names[li]
        if taken[name] < capacity[name]:
            plan.setdefault(name, []).append(i)
            taken[name] += 1
    return {n: sorted(v) for n, v in plan.items()}
