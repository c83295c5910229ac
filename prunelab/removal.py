"""Physical filter removal with Torch-Pruning's dependency graph, and the matching masked forward.

A *filter plan* maps conv module names to the output channels (filters) to remove. Removal runs
in two steps (Torch-Pruning's split): `check_plan` validates the whole plan before anything
mutates, then `remove_filters_` prunes each entry's dependency group, so the change propagates
to the following batch-norm, conv and linear layers (through ``flatten`` and ``cat`` too).

Groups. The dependency graph ties the output channels of several convs together: residual
additions (a ResNet stage's stem/shortcut and every block's last conv), depthwise convs (their
channels are their producer's), squeeze-excitation gates (the gate's channels scale the block's).
Such convs form one *group* (Torch-Pruning's): removing channel k removes it from every member
at once. A group is named by its first conv in module order, its *leader*; `rankable` lists the
leaders of the groups that can be pruned (criteria score one vector per group) and `independent`
those of one conv only. A plan entry may name any member, with indices numbering the leader's
channels; two entries of one group are refused.

Hidden units. With ``linear=True`` the hidden ``nn.Linear`` layers join the convs: a layer's
output units are its "filters", pruned the same way (``tp.prune_linear_out_channels``: the next
linear layer loses those inputs). The output layer never: its group reaches the model's output.

Never pruned (listed with their ``reason``; a plan or criterion asking for them is refused):
a group whose channels reach the model's output without passing a conv or linear layer
(SqueezeNet's classifier conv: its channels are the classes), a group holding a grouped conv
that is not depthwise, or one whose channels reach a layer that mixes them (LayerNorm, ...).

`masked_filters` is the reference semantics and acts where removal acts: a removed channel is
zeroed at the input of every conv and linear layer that consumes it (the group's in-channel
dependencies). A zeroing of the conv's output would not do: a batch-norm after a concatenation
(DenseNet) or a depthwise conv turns a zero into a constant. In eval mode the physically pruned
net computes the same function as the masked one.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch_pruning as tp
from torch import Tensor, nn

from prunelab.masks import n_to_prune
from prunelab.metrics import eval_mode

Plan = dict[str, list[int]]
Inputs = tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]

_OP = tp.ops.OPTYPE
# Layers a removed channel may pass through on its way to a consumer: each acts channel by
# channel (or only re-indexes channels), so zeroing the channel at the consumer equals removing it.
_CHANNELWISE = {_OP.BN, _OP.IN, _OP.PRELU, _OP.ELEMENTWISE, _OP.CONCAT, _OP.SPLIT, _OP.SLICE, _OP.RESHAPE,
                _OP.UNBIND, _OP.EXPAND, _OP.CONV, _OP.DEPTHWISE_CONV, _OP.LINEAR}


@dataclass(frozen=True)
class FilterLayer:
    """One conv (or hidden linear layer) and the dependency group its filters (units) belong to.

    Attributes:
        name: the layer's module name.
        point: module whose output holds its feature maps (the following batch-norm, else the layer).
        n_filters: its current number of output channels or units (the group's channels).
        members: the convs of its group in module order, the leader first (empty: the conv alone).
        reason: why the group is never pruned ("" when it can be).
        inputs: where removal acts on consumers: (module name, its input-channel indices, the group
            channel each one comes from) per conv or linear layer reading the group's channels.
        kind: ``"conv"`` or ``"linear"`` (a hidden linear layer's units).
    """

    name: str
    point: str
    n_filters: int
    members: tuple[str, ...] = ()
    reason: str = ""
    inputs: Inputs = field(default=(), repr=False)
    kind: str = "conv"

    @property
    def leader(self) -> str:
        """Name of the group's first conv, which names the group."""
        return self.members[0] if self.members else self.name

    @property
    def coupled(self) -> tuple[str, ...]:
        """The other convs whose output channels are tied to this one's (sorted)."""
        return tuple(sorted(set(self.members) - {self.name}))

    @property
    def prunable(self) -> bool:
        return not self.reason


def build_graph(model: nn.Module, example: Tensor) -> tp.DependencyGraph:
    """Torch-Pruning's dependency graph of ``model`` traced on ``example`` (a batch of inputs)."""
    with eval_mode(model):
        return tp.DependencyGraph().build_dependency(model, example_inputs=example[:1])


def _is_depthwise(conv: nn.Module) -> bool:
    return conv.groups == conv.in_channels == conv.out_channels


def _describe(graph: tp.DependencyGraph, group, names: dict, kinds: tuple[type, ...]) -> tuple[tuple[str, ...], str, Inputs]:
    """Members (layers of ``kinds`` whose out channels the group prunes), the reason it cannot be pruned, its consumers."""
    members, inputs, reasons = [], [], []
    for item in group:
        dep, module = item.dep, item.dep.target.module
        kind, name = dep.target.type, names.get(module, type(module).__name__)
        reads = isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and graph.is_in_channel_pruning_fn(dep.handler)
        if kind == _OP.OUTPUT or (not dep.target.outputs and not reads):  # no node after it: the model's output
            reasons.append("its channels are the model's output (they reach it through no conv or linear layer); "
                           "output channels are never pruned")
        elif kind not in _CHANNELWISE:
            reasons.append(f"its channels reach {name} ({type(module).__name__}), whose pruning prunelab cannot mask")
        elif isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and not _is_depthwise(module):
            reasons.append(f"its channels reach {name}, a grouped conv (groups={module.groups}); only depthwise "
                           "convs (groups = channels) are pruned")
        elif isinstance(module, kinds) and graph.is_out_channel_pruning_fn(dep.handler):
            members.append(name)
        elif isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)) and graph.is_in_channel_pruning_fn(dep.handler):
            inputs.append((name, tuple(int(i) for i in item.idxs), tuple(int(r) for r in item.root_idxs)))
    order = {n: i for i, n in enumerate(names.values())}
    return tuple(sorted(set(members), key=order.get)), "; ".join(dict.fromkeys(reasons)), tuple(inputs)


def _point(graph: tp.DependencyGraph, layer: nn.Module, name: str, names: dict) -> str:
    outputs = graph.module2node[layer].outputs
    if len(outputs) == 1 and isinstance(outputs[0].module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        return names[outputs[0].module]
    return name


def filter_layers(model: nn.Module, example: Tensor, graph: tp.DependencyGraph | None = None,
                  linear: bool = False) -> dict[str, FilterLayer]:
    """Every ``nn.Conv2d`` of ``model`` (and with ``linear``, every ``nn.Linear``), in module order,
    with its feature-map point and dependency group.

    ``graph`` reuses a dependency graph already traced on ``model`` (else one is traced on ``example``).
    The model's output layer is listed with its ``reason``: never pruned.

    >>> from prunelab.models.cnn import alexnet_small
    >>> layers = filter_layers(alexnet_small(), torch.zeros(1, 1, 32, 32))
    >>> list(layers), layers["conv1"].n_filters, layers["conv1"].coupled
    (['conv1', 'conv2', 'conv3', 'conv4', 'conv5'], 32, ())
    """
    graph = graph or build_graph(model, example)
    names = {m: n for n, m in model.named_modules()}
    kinds = (nn.Conv2d, nn.Linear) if linear else (nn.Conv2d,)
    units = {n: m for n, m in model.named_modules() if isinstance(m, kinds)}
    layers: dict[str, FilterLayer] = {}
    for name, layer in units.items():
        if name in layers:
            continue
        group = graph.get_pruning_group(layer, _out_fn(layer), idxs=list(range(_width(layer))))
        members, reason, inputs = _describe(graph, group, names, kinds)
        members = members if name in members else (name, *members)
        for m in members:
            if m in layers:  # Torch-Pruning's groups partition the layers; refuse to guess if one does not
                raise RuntimeError(f"{m!r} is in the dependency groups of both {layers[m].leader!r} and {name!r}")
            kind = "linear" if isinstance(units[m], nn.Linear) else "conv"
            layers[m] = FilterLayer(m, _point(graph, units[m], m, names), _width(units[m]), members, reason, inputs, kind)
    return {n: layers[n] for n in units}


def _width(layer: nn.Module) -> int:
    return layer.out_features if isinstance(layer, nn.Linear) else layer.out_channels


def _out_fn(layer: nn.Module):
    return tp.prune_linear_out_channels if isinstance(layer, nn.Linear) else tp.prune_conv_out_channels


def rankable(layers: Mapping[str, FilterLayer]) -> list[str]:
    """Leaders of the groups whose filters can be removed (the units a criterion scores and a loop prunes)."""
    return [n for n, layer in layers.items() if layer.prunable and layer.leader == n]


def independent(layers: Mapping[str, FilterLayer]) -> list[str]:
    """Names of the prunable convs whose group is themselves alone (no residual, depthwise or gate coupling)."""
    return [n for n in rankable(layers) if not layers[n].coupled]


def check_plan(plan: Mapping[str, Sequence[int]], layers: Mapping[str, FilterLayer], min_filters: int = 1) -> Plan:
    """Validate ``plan`` against ``layers``; return it with sorted, de-duplicated int indices.

    Raises:
        KeyError: a layer name that is not a conv.
        IndexError: a filter index outside ``[0, n_filters)``.
        ValueError: ``min_filters < 1``; a conv that is never pruned (the output layer, ...); a plan
            leaving fewer than ``min_filters`` filters in a layer (an emptied layer included); two
            entries of one group.

    >>> check_plan({"conv1": [3, 1, 3]}, {"conv1": FilterLayer("conv1", "conv1", 4)})
    {'conv1': [1, 3]}
    """
    if int(min_filters) < 1:
        raise ValueError(f"min_filters={min_filters!r} must be at least 1: a layer is never emptied")
    clean, owner = {}, {}
    for name, idxs in plan.items():
        layer = prunable_layer(layers, name)
        idxs = sorted({int(i) for i in idxs})
        if idxs and (idxs[0] < 0 or idxs[-1] >= layer.n_filters):
            bad = idxs[0] if idxs[0] < 0 else idxs[-1]
            raise IndexError(f"filter index {bad} is out of range for {name!r}, which has {layer.n_filters} filters")
        left = layer.n_filters - len(idxs)
        if left < min_filters:
            raise ValueError(f"the plan removes {len(idxs)} of {layer.n_filters} filters of {name!r}, leaving {left}; "
                             f"at least min_filters={min_filters} must stay")
        if layer.leader in owner:
            raise ValueError(f"{name!r} and {owner[layer.leader]!r} share output channels (one dependency group: "
                             f"{', '.join(layer.members)}); give their group once in the plan")
        owner[layer.leader] = name
        if idxs:
            clean[name] = idxs
    return clean


def prunable_layer(layers: Mapping[str, FilterLayer], name: str) -> FilterLayer:
    """``layers[name]`` if it can be pruned; else a KeyError (no such conv) or ValueError (never pruned)."""
    if name not in layers:
        offered = rankable(layers)
        shown = ", ".join(offered[:12]) + (f", ... ({len(offered)} in all)" if len(offered) > 12 else "")
        what = "layers" if any(layers[n].kind == "linear" for n in layers) else "conv layers (hidden linear units: linear=True)"
        raise KeyError(f"unknown layer {name!r}; prunable {what} are {shown}")
    if not layers[name].prunable:
        raise ValueError(f"{name!r} cannot be pruned: {layers[name].reason}")
    return layers[name]


def remove_filters_(model: nn.Module, plan: Mapping[str, Sequence[int]], example: Tensor, min_filters: int = 1,
                    linear: bool = False) -> nn.Module:
    """Physically remove the planned filters from ``model`` (in place) and return it.

    Each entry prunes its conv's Torch-Pruning group: the out channels of every member conv
    (residual-coupled convs, depthwise convs, gates), the batch-norms after them, the next convs'
    in channels and linear in-features (through flatten and concatenation).

    Args:
        plan: conv name -> filter indices (as numbered before this call).
        example: an input batch used to trace the graph, shape ``(N, C, H, W)``.
        min_filters: the fewest filters any layer may keep.
        linear: the plan may name hidden linear layers (their units are removed).

    Raises:
        See `check_plan`; nothing is changed when the plan is refused.

    >>> from prunelab.models.cnn import alexnet_small
    >>> net = remove_filters_(alexnet_small(), {"conv5": [0, 1]}, torch.zeros(1, 1, 32, 32))
    >>> net.conv5.out_channels, net.fc6.in_features
    (62, 992)
    """
    graph = build_graph(model, example)
    layers = filter_layers(model, example, graph, linear)
    plan = check_plan(plan, layers, min_filters)
    modules = dict(model.named_modules())
    for name, idxs in plan.items():
        leader = modules[layers[name].leader]
        group = graph.get_pruning_group(leader, _out_fn(leader), idxs=idxs)
        group.prune()
    return model


def masked_inputs(plan: Mapping[str, Sequence[int]], layers: Mapping[str, FilterLayer]) -> dict[str, list[int]]:
    """Consumer module -> the input channels (or in-features) ``plan`` zeroes there, every group included.

    >>> from prunelab.models.cnn import alexnet_small
    >>> layers = filter_layers(alexnet_small(widths=(4, 4, 4, 4, 4)), torch.zeros(1, 1, 32, 32))
    >>> masked_inputs({"conv1": [0, 2]}, layers)
    {'conv2': [0, 2]}
    """
    zeroed: dict[str, set[int]] = {}
    for name, idxs in check_plan(plan, layers).items():
        chosen = set(idxs)
        for consumer, channels, roots in layers[name].inputs:
            zeroed.setdefault(consumer, set()).update(c for c, r in zip(channels, roots) if r in chosen)
    return {n: sorted(c) for n, c in zeroed.items()}


@contextmanager
def masked_filters(model: nn.Module, plan: Mapping[str, Sequence[int]], layers: Mapping[str, FilterLayer]) -> Iterator[nn.Module]:
    """Within the block, ``model`` runs as if ``plan`` were removed: the planned channels are zeroed at
    the input of every conv and linear layer that reads them (forward pre-hooks, removed on exit).

    >>> from prunelab.models.cnn import alexnet_small
    >>> net = alexnet_small(); layers = filter_layers(net, torch.zeros(1, 1, 32, 32))
    >>> with masked_filters(net, {"conv1": [0]}, layers):
    ...     y = net(torch.zeros(1, 1, 32, 32))
    """
    modules = dict(model.named_modules())
    handles = []
    try:
        for consumer, idxs in masked_inputs(plan, layers).items():
            def hook(_module, args, idxs=torch.tensor(idxs)):
                x = args[0]
                keep = torch.ones(x.shape[1], dtype=x.dtype, device=x.device)
                keep[idxs.to(x.device)] = 0
                return (x * keep.view(1, -1, *([1] * (x.ndim - 2))), *args[1:])
            handles.append(modules[consumer].register_forward_pre_hook(hook))
        yield model
    finally:
        for h in handles:
            h.remove()


def _ascending(scores: Mapping[str, Tensor]) -> list[tuple[float, int, int]]:
    """(score, layer position, filter index) of every filter, lowest first; ties by layer order, then index."""
    return sorted((float(v), li, i) for li, s in enumerate(scores.values()) for i, v in enumerate(s.detach().cpu().tolist()))


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
    names, plan, taken = list(scores), {}, {n: 0 for n in scores}
    for _, li, i in _ascending(scores):
        if sum(taken.values()) == n_remove:
            break
        name = names[li]
        if taken[name] < capacity[name]:
            plan.setdefault(name, []).append(i)
            taken[name] += 1
    return {n: sorted(v) for n, v in plan.items()}


def wanted_per_layer(scores: Mapping[str, Tensor], n_remove: int) -> dict[str, int]:
    """How many of each layer's filters are among the ``n_remove`` lowest scores over all layers:
    the criterion's own choice before `plan_from_scores`'s ``min_filters`` guard (same tie rule).

    A layer whose count exceeds its filters less ``min_filters`` is one the guard saved; a count equal
    to its filters is a criterion trying to empty the layer (Molchanov et al. 2017 saw Taylor do so).

    >>> wanted_per_layer({"a": torch.tensor([0.5, 0.1, 0.9]), "b": torch.tensor([0.2, 0.3])}, 3)
    {'a': 1, 'b': 2}
    """
    names, wanted = list(scores), {n: 0 for n in scores}
    for _, li, _ in _ascending(scores)[:max(n_remove, 0)]:
        wanted[names[li]] += 1
    return wanted


def empty_ranks(scores: Mapping[str, Tensor]) -> dict[str, int]:
    """How many of the lowest scores over all layers it takes to include every filter of each layer.

    Removing filters one at a time in the criterion's order, without re-scoring (Molchanov et al.
    2017 remove one per iteration), layer ``n`` is emptied at removal ``empty_ranks(scores)[n]``;
    a layer of ``m`` filters whose rank is ``m`` holds the ``m`` lowest scores of the whole network.
    The smallest rank over layers, as a share of all filters, says how close the criterion comes to
    emptying a layer whatever the step size (same tie rule as `plan_from_scores`).

    >>> empty_ranks({"a": torch.tensor([0.5, 0.1, 0.9]), "b": torch.tensor([0.2, 0.3])})
    {'a': 5, 'b': 4}
    """
    names, last = list(scores), {n: 0 for n in scores}
    for rank, (_, li, _) in enumerate(_ascending(scores), start=1):
        last[names[li]] = rank
    return last


def plan_by_share(scores: Mapping[str, Tensor], share: float, min_filters: int = 1) -> Plan:
    """Remove ``share`` of every layer's filters (`masks.n_to_prune`'s rounding), its lowest-scored
    ones, keeping at least ``min_filters`` in each: one pruning level of the same shape for any criterion.

    >>> plan_by_share({"a": torch.tensor([0.5, 0.1, 0.9, 0.2]), "b": torch.tensor([0.2, 0.3])}, 0.5)
    {'a': [1, 3], 'b': [0]}
    """
    plan = {}
    for name, s in scores.items():
        k = min(n_to_prune(int(s.numel()), share), max(int(s.numel()) - min_filters, 0))
        plan.update(plan_from_scores({name: s}, k, min_filters))
    return plan
