"""Pruning at initialisation: one-shot masks, then fixed-mask training.

The workflow: initialise the model (e.g. `prunelab.models.seq2seq.init_weights_` with a named
scheme), `prune_at_init_` scores it (SNIP by default; GraSP, SynFlow, OBD with any Hessian
estimator) and zeroes the lowest-scored weights, then the sparse model is trained with the mask
held fixed (`train_masked_`, or any trainer that calls `masks.masked_step_`).  `erk_ratios` and
`masks.masks_with_ratios` give random pruning at given layer-wise ratios (Liu et al. 2022);
`shuffle_within_layers` and `reinit_kept_` are the sanity checks of Frankle et al. (ICLR 2021).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.criteria.flow import grasp_saliency, synflow_saliency
from prunelab.criteria.second_order import LossFn, Saliency, obd_saliency, snip_saliency, to_device
from prunelab.masks import (Masks, apply_masks_, bind_masks, check_sparsity, mask_grads_, masked_step_,
                            masks_from_scores)


AT_INIT_CRITERIA = {"snip": snip_saliency, "obd": obd_saliency, "grasp": grasp_saliency, "synflow": synflow_saliency}


def prune_at_init_(model: nn.Module, sparsity: float, *, loss_fn: LossFn | None = None, batches: Iterable[Any] = (),
                   names: Iterable[str] | None = None, scheme: str = "class-blind",
                   classes: Mapping[str, Iterable[str]] | None = None, generator: torch.Generator | None = None,
                   criterion: str = "snip", **context) -> tuple[Masks, Saliency]:
    """Score ``model`` as it is (at initialisation), mask the lowest ``sparsity`` and zero it.

    Args:
        model: the freshly initialised network (scored in place, then masked in place).
        sparsity: fraction of the classed weights removed, in [0, 1).
        loss_fn, batches: as `snip_saliency` (SynFlow needs neither); ``context`` passes
            ``max_batches``, ``estimator`` (OBD), ``hvp`` (GraSP), ``flow_fn`` and ``rounds`` (SynFlow) on.
        names: scored parameters (default: every weight matrix).
        scheme, classes, generator: as `masks.masks_from_scores` (class-blind by default).
        criterion: one of `AT_INIT_CRITERIA`: ``snip`` (default), ``obd``, ``grasp``, ``synflow``.

    Returns:
        (masks, saliency record): the masks now applied to ``model`` and how they were scored.

    Raises:
        ValueError: sparsity outside [0, 1) (1.0 would empty every class), unknown criterion.

    >>> model = nn.Linear(4, 2, bias=False)
    >>> loss = lambda m, b: m(b).pow(2).mean()
    >>> m, s = prune_at_init_(model, 0.5, loss_fn=loss, batches=[torch.randn(8, 4)])
    >>> int(m["weight"].sum()), s.examples
    (4, 8)
    """
    check_sparsity(sparsity)
    if criterion not in AT_INIT_CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r} for pruning at init; choose one of {', '.join(AT_INIT_CRITERIA)}")
    if criterion == "synflow":  # iterative: its rounds use the same scheme and classes as the final mask
        context = dict(context, sparsity=sparsity, scheme=scheme, classes=classes)
    elif loss_fn is None:
        raise ValueError(f"criterion {criterion!r} needs loss_fn and batches (only synflow is data-free)")
    saliency = AT_INIT_CRITERIA[criterion](model, names, loss_fn=loss_fn, batches=batches, **context)
    masks = masks_from_scores(saliency.scores, sparsity, scheme, classes, generator=generator,
                              weights=dict(model.named_parameters()))
    apply_masks_(model, masks)
    return masks, saliency


def train_masked_(model: nn.Module, masks: Mapping[str, Tensor], *, loss_fn: LossFn, batches: Iterable[Any],
                  optimizer: torch.optim.Optimizer, clip: float | None = None) -> list[float]:
    """One pass of training over ``batches`` with ``masks`` held fixed (pruned weights stay 0).

    Returns:
        The loss of every batch, as floats.

    >>> model = nn.Linear(4, 2, bias=False)
    >>> m = {"weight": torch.tensor([[True, False] * 2] * 2)}
    >>> _ = train_masked_(model, m, loss_fn=lambda m, b: m(b).sum(), batches=[torch.ones(1, 4)],
    ...                   optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    >>> bool((model.weight[~m["weight"]] == 0).all())
    True
    """
    pairs = bind_masks(model, masks)
    apply_masks_(pairs)
    model.train()
    device = next(model.parameters()).device
    losses = []
    for batch in batches:
        batch = to_device(batch, device)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        loss.backward()
        if clip is not None:
            mask_grads_(pairs)  # the clipped norm is the masked network's
            nn.utils.clip_grad_norm_(model.parameters(), clip)
        masked_step_(optimizer, pairs)
        losses.append(float(loss.detach()))
    return losses


def erk_ratios(shapes: Mapping[str, torch.Size], sparsity: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel layer-wise sparsities (Evci et al. 2020) with total ``sparsity``.

    Tensor l keeps a fraction eps * sum(shape_l) / prod(shape_l) of its weights, eps chosen so
    the kept total is (1 - sparsity) x all weights; tensors this would fill beyond 1 stay dense
    and eps is re-solved for the rest (as in RigL's code).

    Raises:
        ValueError: sparsity outside [0, 1).

    >>> r = erk_ratios({"a": torch.Size([10, 10]), "b": torch.Size([100, 10])}, 0.5)
    >>> r["a"] < r["b"]
    True
    """
    check_sparsity(sparsity)
    numel = {n: int(torch.Size(s).numel()) for n, s in shapes.items()}
    raw = {n: sum(s) / numel[n] for n, s in shapes.items()}
    keep_total = (1.0 - sparsity) * sum(numel.values())
    dense: set[str] = set()
    while True:
        rest = [n for n in shapes if n not in dense]
        eps = (keep_total - sum(numel[n] for n in dense)) / sum(raw[n] * numel[n] for n in rest)
        full = [n for n in rest if eps * raw[n] > 1.0]
        if not full:
            break
        dense.update(full)
    return {n: 0.0 if n in dense else 1.0 - eps * raw[n] for n in shapes}


def shuffle_within_layers(masks: Mapping[str, Tensor], generator: torch.Generator | None = None) -> Masks:
    """Each tensor's mask randomly permuted within the tensor (Frankle et al. 2021, "shuffle").

    Keeps every layer's pruned count and nothing else of the mask.

    >>> m = shuffle_within_layers({"w": torch.tensor([True, False, False])}, torch.Generator().manual_seed(0))
    >>> int(m["w"].sum())
    1
    """
    out = {}
    for name, mask in masks.items():
        order = torch.randperm(mask.numel(), generator=generator).to(mask.device)
        out[name] = mask.reshape(-1)[order].reshape(mask.shape)
    return out


@torch.no_grad()
def reinit_kept_(model: nn.Module, masks: Mapping[str, Tensor], init: Callable[[nn.Module], Any]) -> nn.Module:
    """Re-draw ``model``'s weights with ``init(model)`` and re-apply ``masks`` (Frankle et al. 2021,
    "reinitialise"): the mask stays, the kept weights get fresh values from the same distribution.

    >>> model = nn.Linear(2, 1, bias=False)
    >>> _ = reinit_kept_(model, {"weight": torch.tensor([[True, False]])}, lambda m: nn.init.ones_(m.weight))
    >>> model.weight.tolist()
    [[1.0, 0.0]]
    """
    init(model)
    apply_masks_(model, masks)
    return model
