"""Scores -> masks: the See et al. (2016) pruning schemes and masked training.

`Scores` and `Masks` are ``dict[str, Tensor]`` keyed by ``named_parameters()`` names.
A mask is a ``bool`` tensor on its parameter's device: ``True`` keeps a weight.
Higher scores are kept; the lowest-scored weights are pruned.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

import pandas as pd
import torch
from torch import Tensor, nn

from prunelab import selection

Scores = dict[str, Tensor]
Masks = dict[str, Tensor]
Classes = dict[str, list[str]]

SCHEMES = ("class-blind", "class-uniform", "class-distribution", "random")


def check_sparsity(sparsity: float, *, allow_one: bool = False) -> float:
    """Return ``sparsity`` as a float after checking it lies in [0, 1) (or [0, 1])."""
    ok = isinstance(sparsity, (int, float)) and 0.0 <= sparsity <= 1.0
    if not ok or (sparsity == 1.0 and not allow_one):
        allowed = "[0, 1]" if allow_one else "[0, 1) (1.0 would prune every weight)"
        raise ValueError(f"sparsity={sparsity!r} is outside {allowed}; sparsity is the fraction removed")
    return float(sparsity)


def n_to_prune(n: int, sparsity: float) -> int:
    """Number of weights to remove from ``n`` at ``sparsity``: the one rounding rule.

    ``round(s * n)``, Python's round (half to even), exactly as ``torch.nn.utils.prune``
    computes it, so a prunelab mask and a torch mask at the same sparsity remove the same
    number of weights, exact halves included (50% of 1261 weights is 630, not 631).

    >>> n_to_prune(10, 0.25), n_to_prune(10, 0.35)
    (2, 4)
    """
    check_sparsity(sparsity, allow_one=True)
    if n < 0:
        raise ValueError(f"n={n} must be >= 0")
    return min(n, round(float(sparsity) * n))


def default_classes(scores: Mapping[str, Tensor]) -> Classes:
    """One class per parameter tensor."""
    return {name: [name] for name in scores}


def check_classes(classes: Mapping[str, Iterable[str]], scores: Mapping[str, Tensor]) -> Classes:
    """Validate that every class names scored parameters and no parameter is in two classes."""
    seen: dict[str, str] = {}
    out: Classes = {}
    for cls, names in classes.items():
        names = list(names)
        if not names:
            raise ValueError(f"class {cls!r} is empty")
        for name in names:
            if name not in scores:
                allowed = ", ".join(sorted(scores)[:8]) + (" ..." if len(scores) > 8 else "")
                raise KeyError(f"class {cls!r} names parameter {name!r}, which has no score; scored: {allowed}")
            if name in seen:
                raise ValueError(f"parameter {name!r} is in classes {seen[name]!r} and {cls!r}")
            seen[name] = cls
        out[cls] = names
    return out


def _class_masks(scores: Scores, names: list[str], k: int, previous: Masks | None,
                 divisors: Mapping[str, Tensor] | None = None) -> Masks:
    """Prune the ``k`` lowest scores of ``names`` taken together (ties: earlier name and index first).

    Weights pruned in ``previous`` score ``-inf`` so they go first and the mask only shrinks.
    The scores are streamed in chunks by `prunelab.selection` rather than concatenated.
    """
    stream = selection.stream([scores[n] for n in names], [(previous or {}).get(n) for n in names],
                              [(divisors or {}).get(n) for n in names])
    already = selection.scan(stream, f"{names}") if previous is not None else 0
    keep = selection.keep_masks(stream, max(k, already), f"{names}")
    return {n: m.view(scores[n].shape) for n, m in zip(names, keep)}


def _distribution_divisors(scores: Scores, classes: Classes, weights: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    """Each parameter's class sigma: scores / sigma_c make pruning below lambda*sigma_c one threshold.

    See et al. (2016, sec. 3.3) prune the weights of class c with magnitude below lambda * sigma_c,
    sigma_c the standard deviation of class c's weights.  That is the standard deviation of the
    signed weight values, not the spread of their scores: it differs from the root mean square
    of the magnitudes whenever the class's mean weight is not zero.  The population standard
    deviation (divide by N_c): a class is all of its weights, not a sample of them.  Computed
    in float64 in two passes (mean, then squared deviations) without concatenating the class;
    the division happens chunk by chunk inside `prunelab.selection`.
    """
    if weights is None:
        raise ValueError("class-distribution needs the weights: sigma_c is the standard deviation of each class's "
                         "weights (See et al. 2016); pass weights=dict(model.named_parameters())")
    out = {}
    for names in classes.values():
        missing = [n for n in names if n not in weights or tuple(weights[n].shape) != tuple(scores[n].shape)]
        if missing:
            raise KeyError(f"class-distribution: no weights shaped like the scores of {missing}")
        flats = [weights[n].detach().reshape(-1).double() for n in names]
        count = sum(w.numel() for w in flats)
        mean = sum(w.sum() for w in flats) / count
        var = sum((w - mean).pow(2).sum() for w in flats) / count
        sigma = var.sqrt().clamp_min(torch.finfo(torch.float32).tiny)
        for n in names:
            out[n] = sigma.to(scores[n].device)
    return out


def masks_from_scores(
    scores: Mapping[str, Tensor],
    sparsity: float,
    scheme: str = "class-blind",
    classes: Mapping[str, Iterable[str]] | None = None,
    previous: Masks | None = None,
    generator: torch.Generator | None = None,
    weights: Mapping[str, Tensor] | None = None,
) -> Masks:
    """Masks that prune the lowest-scored fraction ``sparsity`` of the classed weights.

    Args:
        scores: name -> score tensor (higher is kept), on any device.
        sparsity: fraction of the classed weights to remove, in [0, 1).
        scheme: ``class-blind`` (one threshold over all classes), ``class-uniform`` (the same
            fraction in every class), ``class-distribution`` (prune below lambda*sigma_c with
            lambda set so the total hits ``sparsity``) or ``random`` (uniform over all weights;
            ``scores`` only give the shapes).
        classes: class name -> parameter names; default one class per scored tensor.
        previous: masks of an earlier round; weights pruned there stay pruned and count
            towards ``sparsity`` (iterative pruning only removes).
        generator: RNG for ``random`` (on the scores' device).
        weights: name -> weight tensor (a superset of the classed names, e.g.
            ``dict(model.named_parameters())``); ``class-distribution`` needs them for sigma_c,
            the standard deviation of each class's weights.

    Returns:
        Masks for every parameter named in ``classes``; exactly ``n_to_prune(N, sparsity)``
        of the N classed weights are False (per class for class-uniform), unless ``previous``
        had already pruned more.

    Raises:
        ValueError: sparsity outside [0, 1), an unknown scheme, NaN scores, class-distribution
            without ``weights``.
        KeyError: a class names a parameter without a score (or, for class-distribution,
            without a weight of the same shape).

    >>> w = {"w": torch.tensor([0.3, -0.1, 0.2, 0.0])}
    >>> masks_from_scores({"w": w["w"].abs()}, 0.5)["w"].tolist()
    [True, False, True, False]
    """
    check_sparsity(sparsity)
    if scheme not in SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}; choose one of {', '.join(SCHEMES)}")
    scores = dict(scores)
    classes = check_classes(classes or default_classes(scores), scores)
    if previous is not None:
        check_masks(previous, {n: s.shape for n, s in scores.items()}, partial=True)
    if scheme == "random":
        scores = {
            n: torch.rand(s.shape, generator=generator, device=s.device) for n, s in scores.items()
        }
    divisors = _distribution_divisors(scores, classes, weights) if scheme == "class-distribution" else None
    if scheme == "class-uniform":
        masks: Masks = {}
        for names in classes.values():
            n = sum(scores[name].numel() for name in names)
            masks.update(_class_masks(scores, names, n_to_prune(n, sparsity), previous))
        return masks
    names = [name for group in classes.values() for name in group]
    n = sum(scores[name].numel() for name in names)
    return _class_masks(scores, names, n_to_prune(n, sparsity), previous, divisors)


def masks_with_ratios(scores: Mapping[str, Tensor], ratios: Mapping[str, float]) -> Masks:
    """Masks pruning the lowest-scored fraction ``ratios[name]`` of each tensor on its own.

    Layer-wise ratios (ERK, or the ratios another method's masks chose: `layer_ratios`) with any
    scores; random scores give Liu et al.'s (2022) random pruning at given ratios.  Each tensor
    loses exactly ``n_to_prune(numel, ratio)`` weights.

    Raises:
        ValueError: a ratio outside [0, 1].  KeyError: a ratio for a tensor without scores.

    >>> masks_with_ratios({"w": torch.tensor([3., 1., 2., 0.])}, {"w": 0.5})["w"].tolist()
    [True, False, True, False]
    """
    missing = [n for n in ratios if n not in scores]
    if missing:
        raise KeyError(f"layer-wise ratio for {missing[0]!r}, which has no score; scored: {', '.join(list(scores)[:8])}")
    out: Masks = {}
    for name, ratio in ratios.items():
        check_sparsity(ratio, allow_one=True)
        out.update(_class_masks(dict(scores), [name], n_to_prune(scores[name].numel(), ratio), None))
    return out


def layer_ratios(masks: Mapping[str, Tensor]) -> dict[str, float]:
    """Each tensor's pruned fraction in ``masks`` (exact under `masks_with_ratios`'s rounding).

    >>> layer_ratios({"w": torch.tensor([True, False, False, False])})
    {'w': 0.75}
    """
    return {n: float((~m).sum()) / m.numel() for n, m in masks.items()}


def check_masks(masks: Mapping[str, Tensor], shapes: Mapping[str, torch.Size], partial: bool = True) -> None:
    """Raise if a mask names an unknown parameter, has the wrong shape or is not bool."""
    for name, mask in masks.items():
        if name not in shapes:
            known = ", ".join(list(shapes)[:8]) + (" ..." if len(shapes) > 8 else "")
            raise KeyError(f"mask for {name!r} matches no parameter; parameters: {known}")
        if tuple(mask.shape) != tuple(shapes[name]):
            raise ValueError(f"mask for {name!r} has shape {tuple(mask.shape)}, parameter has {tuple(shapes[name])}")
        if mask.dtype != torch.bool:
            raise TypeError(f"mask for {name!r} has dtype {mask.dtype}; masks are torch.bool")
    if not partial:
        missing = set(shapes) - set(masks)
        if missing:
            raise KeyError(f"no mask for {sorted(missing)}")


def bind_masks(model: nn.Module, masks: Mapping[str, Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Check ``masks`` against ``model`` once and pair each parameter with its mask.

    Masks are moved to their parameter's device.
    """
    params = dict(model.named_parameters())
    check_masks(masks, {n: p.shape for n, p in params.items()})
    return [(params[n], m.to(params[n].device)) for n, m in masks.items()]


@torch.no_grad()
def apply_masks_(model: nn.Module | list[tuple[Tensor, Tensor]], masks: Mapping[str, Tensor] | None = None) -> None:
    """Zero the pruned weights in place (``model`` may be the output of `bind_masks`).

    In-place multiplication keeps LSTM flat-weight views valid and adds no forward hooks.
    """
    pairs = model if masks is None else bind_masks(model, masks)
    for param, mask in pairs:
        # Same values as mul_(mask); the uint8 view takes the vectorised path (bool is ~10x slower on the CPU).
        param.mul_(mask.view(torch.uint8) if mask.dtype == torch.bool else mask)


@torch.no_grad()
def mask_grads_(pairs: list[tuple[Tensor, Tensor]]) -> None:
    """Zero the gradients of the pruned weights in place (``pairs`` from `bind_masks`).

    Call it between ``backward()`` and gradient clipping: a pruned weight's gradient is not
    part of the masked network's gradient, and left in ``clip_grad_norm_``'s total norm it
    shrinks the kept weights' steps (at high sparsity most weights are pruned ones).
    Optimizer steps on their own act entry by entry, so only clipping needs this.
    """
    for param, mask in pairs:
        if param.grad is not None:
            param.grad.mul_(mask.view(torch.uint8) if mask.dtype == torch.bool else mask)


def masked_step_(optimizer: torch.optim.Optimizer, pairs: list[tuple[Tensor, Tensor]]) -> None:
    """One optimizer step, then re-apply the masks so pruned weights stay exactly zero."""
    optimizer.step()
    apply_masks_(pairs)


def sparsity_report(model: nn.Module, masks: Mapping[str, Tensor], classes: Mapping[str, Iterable[str]] | None = None) -> pd.DataFrame:
    """One row per masked parameter: class, parameter, numel, nonzero, sparsity.

    ``nonzero`` counts the parameter's actual nonzero values, so it shows whether the masks
    really hold. A final row ``class="total"`` sums the table.
    """
    params = dict(model.named_parameters())
    check_masks(masks, {n: p.shape for n, p in params.items()})
    owner = {n: c for c, names in (classes or {}).items() for n in names}
    rows = []
    for name in masks:
        p = params[name]
        nonzero = int(torch.count_nonzero(p.detach()))
        rows.append(dict(cls=owner.get(name, name), parameter=name, numel=p.numel(), nonzero=nonzero))
    df = pd.DataFrame(rows, columns=["cls", "parameter", "numel", "nonzero"]).rename(columns={"cls": "class"})
    total = pd.DataFrame([dict(**{"class": "total", "parameter": ""}, numel=df.numel.sum(), nonzero=df.nonzero.sum())])
    df = pd.concat([df, total], ignore_index=True)
    df["sparsity"] = 1.0 - df.nonzero / df.numel
    return df
