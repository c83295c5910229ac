"""Per-filter criteria for structured pruning (Molchanov et al., ICLR 2017, Sec. 2.2).

Every criterion is ``fn(model, names=None, *, batches, layers=None, normalize=..., **context) -> Scores``
with one 1-D tensor of per-filter scores per conv module name (higher is kept). Hidden linear
layers are scored the same way (a unit is a feature map of one position) when ``layers`` lists them
(`prunelab.removal.filter_layers` with ``linear=True``). ``batches`` is a
sequence of ``(x, y)`` pairs; ``names`` defaults to the leaders of the prunable dependency groups
(`prunelab.removal.rankable`). A name scores its whole group: the criterion is computed on every
member conv (a residual-coupled stage, a conv and the depthwise conv and gate that share its
channels) and summed over members, since removing channel k removes it from all of them.

Activation criteria see the feature map they are defined on: the output of each member's
feature-map point (the batch-norm after the conv, else the conv), captured by a forward hook that
hands a copy downstream, so that later in-place ops (ReLU6/SiLU/Hardswish with ``inplace=True``,
``out += identity``) cannot change it. Scoring runs in eval mode (no dropout, batch-norm running
statistics); hooks are removed before returning and the model's mode is restored.

Fair comparison across layers: ``normalize="l2"`` (the default of every criterion but the oracle,
which is the measured reference) divides each group's score vector by its L2 norm, Molchanov et
al.'s layer-wise normalisation (Sec. 2.3), so every criterion is ranked across layers on the same
footing; ``normalize="none"`` keeps raw scores. `NORMALIZATIONS` names both and `describe_normalization`
says in words which was used (for figure captions).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from prunelab.metrics import eval_mode
from prunelab.removal import FilterLayer, filter_layers, masked_filters, prunable_layer, rankable

Batches = Sequence[tuple[Tensor, Tensor]]
NORMALIZATIONS = ("l2", "none")
_DESCRIPTIONS = {"l2": "scores L2-normalised per layer (Molchanov et al. 2017, Sec. 2.3)", "none": "raw scores, no normalisation"}


def describe_normalization(normalize: str) -> str:
    """One phrase for figures and tables.

    >>> describe_normalization("l2")
    'scores L2-normalised per layer (Molchanov et al. 2017, Sec. 2.3)'
    """
    _check_normalize(normalize)
    return _DESCRIPTIONS[normalize]


def _check_normalize(normalize: str) -> None:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize={normalize!r} is not offered; choose one of {', '.join(NORMALIZATIONS)}")


def normalize_scores(scores: dict[str, Tensor], normalize: str = "l2") -> dict[str, Tensor]:
    """Each layer's (group's) scores divided by their L2 norm (``"l2"``; an all-zero layer stays zero) or
    left raw (``"none"``).

    >>> normalize_scores({"a": torch.tensor([3.0, 4.0])})["a"]
    tensor([0.6000, 0.8000])
    """
    _check_normalize(normalize)
    if normalize == "none":
        return dict(scores)
    return {n: s / s.norm() if s.norm() > 0 else s for n, s in scores.items()}


def _setup(model: nn.Module, names: Iterable[str] | None, batches: Batches, layers: dict | None,
           normalize: str) -> tuple[dict[str, FilterLayer], list[str]]:
    if not batches:
        raise ValueError("filter criteria need batches=[(x, y), ...] with at least one batch")
    _check_normalize(normalize)
    layers = layers or filter_layers(model, batches[0][0])
    names = rankable(layers) if names is None else list(names)
    for n in names:
        prunable_layer(layers, n)  # unknown: KeyError; never pruned (the output layer, ...): ValueError
    return layers, names


def _members(layers: dict[str, FilterLayer], names: list[str]) -> list[str]:
    """Every conv of the named groups, each once."""
    return list(dict.fromkeys(m for n in names for m in (layers[n].members or (n,))))


def _per_group(layers, names, per_member: dict[str, Tensor], normalize: str) -> dict[str, Tensor]:
    """Sum each group's member scores, then normalise per group."""
    return normalize_scores({n: sum(per_member[m] for m in (layers[n].members or (n,))) for n in names}, normalize)


def _feature_maps(model: nn.Module, layers, members, batches: Batches, grad: bool, loss_fn=None):
    """Yield ``{member: (activation, gradient or None)}`` per batch; activations ``(B, C, H, W)``
    (``(B, units)`` for a hidden linear layer).

    The hook keeps the point's output and returns a copy for the rest of the forward pass, so the
    kept tensor is the feature map itself whatever in-place op follows (and the gradient is taken
    with respect to it).
    """
    modules = dict(model.named_modules())
    loss_fn = loss_fn or nn.CrossEntropyLoss(reduction="sum")

    def keep(acts, m):
        def hook(_module, _inputs, out):
            acts[m] = out
            return out.clone()
        return hook

    for x, y in batches:
        acts: dict[str, Tensor] = {}
        handles = [modules[layers[m].point].register_forward_hook(keep(acts, m)) for m in members]
        try:
            with torch.set_grad_enabled(grad):
                out = model(x)
                grads = torch.autograd.grad(loss_fn(out, y), [acts[m] for m in members]) if grad else [None] * len(members)
        finally:
            for h in handles:
                h.remove()
        yield {m: (acts[m].detach(), g) for m, g in zip(members, grads)}


def per_unit(t: Tensor) -> Tensor:
    """``(B, C, ...)`` -> ``(B, C)``: the mean over a feature map's positions (a linear unit has one).

    >>> per_unit(torch.ones(2, 3, 4, 4)).shape, per_unit(torch.ones(2, 3)).shape
    (torch.Size([2, 3]), torch.Size([2, 3]))
    """
    return t.mean(dim=tuple(range(2, t.ndim))) if t.ndim > 2 else t


def _average(model, layers, names, batches, per_example: Callable, grad: bool, loss_fn=None) -> dict[str, Tensor]:
    """Per member conv: ``per_example(a, g)`` summed over examples, divided by their count."""
    members = _members(layers, names)
    total, count = {}, 0
    with eval_mode(model):
        for maps in _feature_maps(model, layers, members, batches, grad, loss_fn):
            for m, (a, g) in maps.items():
                value = per_example(a, g).sum(0)
                total[m] = total[m] + value if m in total else value
            count += next(iter(maps.values()))[0].shape[0]
    return {m: total[m] / count for m in members}


def taylor(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None,
           loss_fn: nn.Module | None = None, normalize: str = "l2", **_) -> dict[str, Tensor]:
    """First-order Taylor criterion, Molchanov et al. 2017, Eq. 8, with layer-wise L2 normalisation.

    For example n and feature map k of size M: ``|1/M sum_m a_nkm * dC_n/da_nkm|``, averaged over
    examples; ``a`` is the feature-map point's output (before any activation), ``C_n`` example n's own
    loss (``loss_fn`` sums over the batch). A group sums its members' values; then each group's
    vector is divided by its L2 norm (``normalize="l2"``, the paper's Sec. 2.3).

    Returns:
        name -> ``(n_filters,)`` scores.

    >>> from prunelab.models.cnn import alexnet_small
    >>> s = taylor(alexnet_small(), batches=[(torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]))])
    >>> round(float(s["conv1"].norm()), 4)
    1.0
    """
    layers, names = _setup(model, names, batches, layers, normalize)
    per_member = _average(model, layers, names, batches, lambda a, g: per_unit(a * g).abs(), True, loss_fn)
    return _per_group(layers, names, per_member, normalize)


def mean_activation(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None,
                    normalize: str = "l2", **_) -> dict[str, Tensor]:
    """Mean activation of each feature map over examples and positions (Sec. 2.2), after ReLU:
    the mean of ``max(a, 0)`` of the feature-map point's output ``a`` (the positive part on nets whose
    activation is not a ReLU). Summed over a group's members, then normalised (``normalize``).

    >>> from prunelab.models.cnn import alexnet_small
    >>> mean_activation(alexnet_small(), batches=[(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))])["conv5"].shape
    torch.Size([64])
    """
    layers, names = _setup(model, names, batches, layers, normalize)
    per_member = _average(model, layers, names, batches, lambda a, _g: per_unit(a.clamp(min=0)), False)
    return _per_group(layers, names, per_member, normalize)


def apoz(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None,
         normalize: str = "l2", **_) -> dict[str, Tensor]:
    """``1 - APoZ``: one minus the average percentage of zeros after ReLU (Hu et al. 2016); low APoZ is kept.

    A position counts as zero where the feature-map point's output is ``<= 0``. Summed over a group's
    members, then normalised (``normalize``).

    >>> from prunelab.models.cnn import alexnet_small
    >>> s = apoz(alexnet_small(), batches=[(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))], normalize="none")
    >>> bool(((s["conv2"] >= 0) & (s["conv2"] <= 1)).all())
    True
    """
    layers, names = _setup(model, names, batches, layers, normalize)
    per_member = _average(model, layers, names, batches, lambda a, _g: 1.0 - per_unit((a <= 0).float()), False)
    return _per_group(layers, names, per_member, normalize)


def weight_norm(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None,
                normalize: str = "l2", **_) -> dict[str, Tensor]:
    """The "minimum weight" criterion, the paper's Θ_MW: the mean of squared weights of each filter,
    ``1/|w| sum_i w_i^2`` over ``weight[k]`` (no data used). Summed over a group's members, then
    normalised (``normalize``).

    >>> from prunelab.models.cnn import alexnet_small
    >>> weight_norm(alexnet_small(), batches=[(torch.zeros(1, 1, 32, 32), None)])["conv3"].shape
    torch.Size([96])
    """
    layers, names = _setup(model, names, batches, layers, normalize)
    per_member = {m: model.get_submodule(m).weight.detach().flatten(1).pow(2).mean(dim=1) for m in _members(layers, names)}
    return _per_group(layers, names, per_member, normalize)


def random_filters(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None,
                   generator: torch.Generator | None = None, normalize: str = "l2", **_) -> dict[str, Tensor]:
    """Uniform random scores, one per group channel; pass ``generator`` for reproducible random pruning.

    Normalised like every criterion (``normalize="l2"``: a wider layer's scores are smaller, so
    across layers it loses a larger share, as it would under any normalised criterion); ``"none"``
    ranks all filters uniformly at random.
    """
    layers, names = _setup(model, names, batches, layers, normalize)
    return normalize_scores({n: torch.rand(layers[n].n_filters, generator=generator) for n in names}, normalize)


def obd(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None,
        loss_fn: nn.Module | None = None, max_examples: int = 256, normalize: str = "l2", **_) -> dict[str, Tensor]:
    """Structured OBD (LeCun et al. 1990): ``0.5 * sum_k h_kk w_k^2`` over filter k's weights and bias.

    The Hessian diagonal is estimated by the empirical Fisher, ``h_kk = mean_n (dC_n/dw_k)^2``, from
    per-example gradients of the first ``max_examples`` examples (one backward pass each). Summed
    over a group's member convs, then normalised (``normalize``).

    >>> from prunelab.models.cnn import alexnet_small
    >>> obd(alexnet_small(), batches=[(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))])["conv1"].shape
    torch.Size([32])
    """
    layers, names = _setup(model, names, batches, layers, normalize)
    loss_fn = loss_fn or nn.CrossEntropyLoss(reduction="sum")
    members = _members(layers, names)
    params = [(m, p) for m in members for p in (model.get_submodule(m).weight, model.get_submodule(m).bias) if p is not None]
    fisher = [torch.zeros_like(p) for _, p in params]
    count = 0
    with eval_mode(model):
        for x, y in batches:
            for i in range(x.shape[0]):
                if count == max_examples:
                    break
                grads = torch.autograd.grad(loss_fn(model(x[i:i + 1]), y[i:i + 1]), [p for _, p in params])
                for f, g in zip(fisher, grads):
                    f += g.detach() ** 2
                count += 1
    per_member = {m: torch.zeros(layers[m].n_filters, device=fisher[0].device) for m in members}
    for (m, p), f in zip(params, fisher):
        per_member[m] += 0.5 * (f / count * p.detach() ** 2).flatten(1).sum(1) if p.ndim > 1 else 0.5 * f / count * p.detach() ** 2
    return _per_group(layers, names, per_member, normalize)


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Batches, loss_fn: nn.Module | None = None) -> float:
    """Mean per-example loss over ``batches`` (eval mode)."""
    loss_fn = loss_fn or nn.CrossEntropyLoss(reduction="sum")
    with eval_mode(model):
        total = sum(float(loss_fn(model(x), y)) for x, y in batches)
    return total / sum(x.shape[0] for x, _ in batches)


def oracle(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None,
           loss_fn: nn.Module | None = None, absolute: bool = True, progress: bool = False, normalize: str = "none",
           **_) -> dict[str, Tensor]:
    """The oracle: change of the mean loss on ``batches`` when channel k of a group alone is removed.

    Removal is emulated by `prunelab.removal.masked_filters`, which equals physical removal in eval
    mode. ``absolute=True`` gives ``|dC|`` (the paper's oracle-abs, its reference for rank
    correlations); ``False`` gives the signed ``dC`` (oracle-loss: keep the filters whose removal
    hurts most). The oracle is the measured reference, so it stays raw unless ``normalize="l2"``.

    >>> from prunelab.models.cnn import alexnet_small
    >>> oracle(alexnet_small(), ["conv1"], batches=[(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))])["conv1"].shape
    torch.Size([32])
    """
    from tqdm.auto import tqdm

    layers, names = _setup(model, names, batches, layers, normalize)
    base = mean_loss(model, batches, loss_fn)
    scores = {}
    for n in tqdm(names, desc="oracle layers", disable=not progress, leave=False):
        deltas = []
        for k in range(layers[n].n_filters):
            with masked_filters(model, {n: [k]}, layers):
                deltas.append(mean_loss(model, batches, loss_fn) - base)
        d = torch.tensor(deltas, dtype=torch.float64)
        scores[n] = d.abs() if absolute else d
    return normalize_scores(scores, normalize)


def oracle_loss(model: nn.Module, names: Iterable[str] | None = None, **context) -> dict[str, Tensor]:
    """Signed oracle: the loss increase when filter k alone is removed (see `oracle`)."""
    return oracle(model, names, **{**context, "absolute": False})


FILTER_CRITERIA: dict[str, Callable[..., dict[str, Tensor]]] = {
    "taylor": taylor,
    "weight_norm": weight_norm,
    "activation": mean_activation,
    "apoz": apoz,
    "random": random_filters,
    "obd": obd,
    "oracle": oracle,
    "oracle_loss": oracle_loss,
}


def get_filter_criterion(name: str) -> Callable[..., dict[str, Tensor]]:
    """The filter criterion registered as ``name``; a clear error lists the ones offered."""
    try:
        return FILTER_CRITERIA[name]
    except KeyError:
        raise KeyError(f"unknown filter criterion {name!r}; choose one of {', '.join(FILTER_CRITERIA)}") from None


def oracle_correlation(scores: dict[str, dict[str, Tensor]], reference: dict[str, Tensor]) -> pd.DataFrame:
    """Spearman rank correlation of each criterion with ``reference`` (the oracle), per layer and across layers.

    "all layers" pools every filter's score as given (normalised as each criterion was called: by
    default every criterion but the oracle is L2-normalised per layer, see `normalize_scores`).

    Returns:
        tidy frame: criterion, layer, filters, spearman, pvalue.

    >>> ref = {"a": torch.tensor([1., 2., 3.])}
    >>> float(oracle_correlation({"x": {"a": torch.tensor([3., 2., 1.])}}, ref).spearman[0])
    -1.0
    """
    from scipy.stats import spearmanr

    rows = []
    for crit, s in scores.items():
        for layer in [*reference, "all layers"]:
            names = list(reference) if layer == "all layers" else [layer]
            a = torch.cat([s[n].detach().double().cpu().flatten() for n in names]).numpy()
            b = torch.cat([reference[n].detach().double().cpu().flatten() for n in names]).numpy()
            rho, p = spearmanr(a, b) if a.std() > 0 and b.std() > 0 else (float("nan"), float("nan"))
            rows.append(dict(criterion=crit, layer=layer, filters=len(a), spearman=float(rho), pvalue=float(p)))
    return pd.DataFrame(rows)
