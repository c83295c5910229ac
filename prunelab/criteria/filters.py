"""Per-filter criteria for structured pruning (Molchanov et al., ICLR 2017, Sec. 2.2).

Every criterion is ``fn(model, names=None, *, batches, layers=None, **context) -> Scores`` with
one 1-D tensor of per-filter scores per conv module name (higher is kept). ``batches`` is a
sequence of ``(x, y)`` pairs; ``names`` defaults to the convs that can be pruned alone
(`prunelab.removal.independent`). Scoring runs in eval mode (no dropout, batch-norm running
statistics) with forward hooks on each conv's feature-map point (the batch-norm after the conv,
else the conv), removed before returning.

Activation statistics (mean activation, APoZ) are taken after ReLU, which follows every
feature-map point in the studied nets. For Taylor the choice does not matter: with ReLU gating,
activation x gradient is the same before and after the ReLU.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager

import pandas as pd
import torch
from torch import Tensor, nn

from prunelab.removal import FilterLayer, filter_layers, independent, masked_filters

Batches = Sequence[tuple[Tensor, Tensor]]


def _setup(model: nn.Module, names: Iterable[str] | None, batches: Batches, layers: dict | None) -> tuple[dict[str, FilterLayer], list[str]]:
    if not batches:
        raise ValueError("filter criteria need batches=[(x, y), ...] with at least one batch")
    layers = layers or filter_layers(model, batches[0][0])
    names = independent(layers) if names is None else list(names)
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise KeyError(f"unknown layer {unknown[0]!r}; prunable conv layers are {', '.join(layers)}")
    return layers, names


@contextmanager
def _eval(model: nn.Module):
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def _feature_maps(model: nn.Module, layers, names, batches: Batches, grad: bool, loss_fn=None):
    """Yield ``{name: (activation, gradient or None)}`` per batch; activations ``(B, C, H, W)``."""
    modules = dict(model.named_modules())
    loss_fn = loss_fn or nn.CrossEntropyLoss(reduction="sum")
    for x, y in batches:
        acts: dict[str, Tensor] = {}
        handles = [modules[layers[n].point].register_forward_hook(lambda _m, _i, out, n=n: acts.__setitem__(n, out))
                   for n in names]
        try:
            with torch.set_grad_enabled(grad):
                out = model(x)
                grads = torch.autograd.grad(loss_fn(out, y), [acts[n] for n in names]) if grad else [None] * len(names)
        finally:
            for h in handles:
                h.remove()
        yield {n: (acts[n].detach(), g) for n, g in zip(names, grads)}


def _average(model, layers, names, batches, per_example: Callable, grad: bool, loss_fn=None) -> dict[str, Tensor]:
    total, count = {}, 0
    with _eval(model):
        for maps in _feature_maps(model, layers, names, batches, grad, loss_fn):
            for n, (a, g) in maps.items():
                value = per_example(a, g).sum(0)
                total[n] = total[n] + value if n in total else value
            count += next(iter(maps.values()))[0].shape[0]
    return {n: total[n] / count for n in names}


def taylor(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None,
           loss_fn: nn.Module | None = None, normalize: bool = True, **_) -> dict[str, Tensor]:
    """First-order Taylor criterion, Molchanov et al. 2017, Eq. 8, with layer-wise L2 normalisation.

    For example n and feature map k of size M: ``|1/M sum_m a_nkm * dC_n/da_nkm|``, averaged over
    examples; ``C_n`` is example n's own loss (``loss_fn`` sums over the batch), then each layer's
    vector is divided by its L2 norm (the paper's Sec. 2.3).

    Returns:
        name -> ``(n_filters,)`` scores.

    >>> from prunelab.models.cnn import alexnet_small
    >>> s = taylor(alexnet_small(), batches=[(torch.rand(4, 1, 32, 32), torch.tensor([0, 1, 2, 3]))])
    >>> round(float(s["conv1"].norm()), 4)
    1.0
    """
    layers, names = _setup(model, names, batches, layers)
    scores = _average(model, layers, names, batches, lambda a, g: (a * g).mean(dim=(2, 3)).abs(), True, loss_fn)
    if normalize:
        scores = {n: s / s.norm() if s.norm() > 0 else s for n, s in scores.items()}
    return scores


def mean_activation(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None, **_) -> dict[str, Tensor]:
    """Mean post-ReLU activation of each feature map over examples and positions (Sec. 2.2).

    >>> from prunelab.models.cnn import alexnet_small
    >>> mean_activation(alexnet_small(), batches=[(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))])["conv5"].shape
    torch.Size([64])
    """
    layers, names = _setup(model, names, batches, layers)
    return _average(model, layers, names, batches, lambda a, _g: a.clamp(min=0).mean(dim=(2, 3)), False)


def apoz(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None, **_) -> dict[str, Tensor]:
    """``1 - APoZ``: one minus the average percentage of zeros after ReLU (Hu et al. 2016); low APoZ is kept.

    >>> from prunelab.models.cnn import alexnet_small
    >>> s = apoz(alexnet_small(), batches=[(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))])
    >>> bool(((s["conv2"] >= 0) & (s["conv2"] <= 1)).all())
    True
    """
    layers, names = _setup(model, names, batches, layers)
    return _average(model, layers, names, batches, lambda a, _g: 1.0 - (a <= 0).float().mean(dim=(2, 3)), False)


def weight_norm(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None, **_) -> dict[str, Tensor]:
    """The "minimum weight" criterion: L2 norm of each filter's kernel ``weight[k]`` (no data used).

    >>> from prunelab.models.cnn import alexnet_small
    >>> weight_norm(alexnet_small(), batches=[(torch.zeros(1, 1, 32, 32), None)])["conv3"].shape
    torch.Size([96])
    """
    layers, names = _setup(model, names, batches, layers)
    return {n: model.get_submodule(n).weight.detach().flatten(1).norm(dim=1) for n in names}


def random_filters(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None,
                   generator: torch.Generator | None = None, **_) -> dict[str, Tensor]:
    """Uniform random scores; pass ``generator`` for reproducible random pruning."""
    layers, names = _setup(model, names, batches, layers)
    return {n: torch.rand(layers[n].n_filters, generator=generator) for n in names}


def obd(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None,
        loss_fn: nn.Module | None = None, max_examples: int = 256, **_) -> dict[str, Tensor]:
    """Structured OBD (LeCun et al. 1990): ``0.5 * sum_k h_kk w_k^2`` over filter k's weights and bias.

    The Hessian diagonal is estimated by the empirical Fisher, ``h_kk = mean_n (dC_n/dw_k)^2``, from
    per-example gradients of the first ``max_examples`` examples (one backward pass each).

    >>> from prunelab.models.cnn import alexnet_small
    >>> obd(alexnet_small(), batches=[(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))])["conv1"].shape
    torch.Size([32])
    """
    layers, names = _setup(model, names, batches, layers)
    loss_fn = loss_fn or nn.CrossEntropyLoss(reduction="sum")
    params = [(n, p) for n in names for p in (model.get_submodule(n).weight, model.get_submodule(n).bias) if p is not None]
    fisher = [torch.zeros_like(p) for _, p in params]
    count = 0
    with _eval(model):
        for x, y in batches:
            for i in range(x.shape[0]):
                if count == max_examples:
                    break
                grads = torch.autograd.grad(loss_fn(model(x[i:i + 1]), y[i:i + 1]), [p for _, p in params])
                for f, g in zip(fisher, grads):
                    f += g.detach() ** 2
                count += 1
    scores = {n: torch.zeros(layers[n].n_filters, device=fisher[0].device) for n in names}
    for (n, p), f in zip(params, fisher):
        scores[n] += 0.5 * (f / count * p.detach() ** 2).flatten(1).sum(1) if p.ndim > 1 else 0.5 * f / count * p.detach() ** 2
    return scores


@torch.no_grad()
def mean_loss(model: nn.Module, batches: Batches, loss_fn: nn.Module | None = None) -> float:
    """Mean per-example loss over ``batches`` (eval mode)."""
    loss_fn = loss_fn or nn.CrossEntropyLoss(reduction="sum")
    with _eval(model):
        total = sum(float(loss_fn(model(x), y)) for x, y in batches)
    return total / sum(x.shape[0] for x, _ in batches)


def oracle(model: nn.Module, names: Iterable[str] | None = None, *, batches: Batches, layers: dict | None = None,
           loss_fn: nn.Module | None = None, absolute: bool = True, progress: bool = False, **_) -> dict[str, Tensor]:
    """The oracle: change of the mean loss on ``batches`` when filter k alone is removed (by masking).

    ``absolute=True`` gives ``|dC|`` (the paper's oracle-abs, its reference for rank correlations);
    ``False`` gives the signed ``dC`` (oracle-loss: keep the filters whose removal hurts most).

    >>> from prunelab.models.cnn import alexnet_small
    >>> oracle(alexnet_small(), ["conv1"], batches=[(torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))])["conv1"].shape
    torch.Size([32])
    """
    from tqdm.auto import tqdm

    layers, names = _setup(model, names, batches, layers)
    base = mean_loss(model, batches, loss_fn)
    scores = {}
    for n in tqdm(names, desc="oracle layers", disable=not progress, leave=False):
        deltas = []
        for k in range(layers[n].n_filters):
            with masked_filters(model, {n: [k]}, layers):
                deltas.append(mean_loss(model, batches, loss_fn) - base)
        d = torch.tensor(deltas, dtype=torch.float64)
        scores[n] = d.abs() if absolute else d
    return scores


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

    "all layers" pools every filter, each criterion with its own normalisation (Taylor's per-layer L2).

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
