"""Pruning at initialisation (SNIP, Lee et al. 2019): one-shot masks, then fixed-mask training.

The workflow: initialise the model (e.g. `prunelab.models.seq2seq.init_weights_` with a named
scheme), `prune_at_init_` scores it on a few batches (SNIP by default) and zeroes the
lowest-scored weights, then the sparse model is trained with the mask held fixed
(`train_masked_`, or any trainer that calls `masks.masked_step_`).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.criteria.second_order import LossFn, Saliency, obd_saliency, snip_saliency, to_device
from prunelab.masks import (Masks, apply_masks_, bind_masks, check_sparsity, mask_grads_, masked_step_,
                            masks_from_scores)


def prune_at_init_(model: nn.Module, sparsity: float, *, loss_fn: LossFn, batches: Iterable[Any],
                   names: Iterable[str] | None = None, scheme: str = "class-blind",
                   classes: Mapping[str, Iterable[str]] | None = None, generator: torch.Generator | None = None,
                   criterion: str = "snip", **context) -> tuple[Masks, Saliency]:
    """Score ``model`` as it is (at initialisation), mask the lowest ``sparsity`` and zero it.

    Args:
        model: the freshly initialised network (scored in place, then masked in place).
        sparsity: fraction of the classed weights removed, in [0, 1).
        loss_fn, batches: as `snip_saliency`; ``context`` passes ``max_batches`` etc. on.
        names: scored parameters (default: every weight matrix).
        scheme, classes, generator: as `masks.masks_from_scores` (class-blind by default).
        criterion: ``snip`` (default) or ``obd``.

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
    saliency_fns = {"snip": snip_saliency, "obd": obd_saliency}
    if criterion not in saliency_fns:
        raise ValueError(f"unknown criterion {criterion!r} for pruning at init; choose one of {', '.join(saliency_fns)}")
    saliency = saliency_fns[criterion](model, names, loss_fn=loss_fn, batches=batches, **context)
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
