"""Pruning at initialisation on the NMT model: the pieces notebook 22 uses.

A tour, in the order the notebook uses it::

    model = nmt.build_model(P, corpus, init=P.init, seed=0)          # a fresh, seeded model
    classes = nmt.weight_classes(model)
    masks, info = prune_(model, "synflow", 0.99, classes, batches=b, seed=0, rounds=100)
    masks = control_(model, masks, "shuffle", P, corpus, seed=0)      # or "reinit", or "none"
    collapsed(masks)                                                   # weight matrices pruned entirely

Methods (`METHODS`): ``snip``, ``grasp``, ``synflow``, ``fisher`` and ``hutchinson`` (OBD
saliency with that Hessian-diagonal estimator, at init), ``random_erk`` (random at ERK ratios)
and ``random_ratios`` (random at the layer-wise ratios of another method's masks, Liu et al. 2022).

SynFlow on the embedding-and-LSTM model (`seq2seq_flow`): the paper's all-ones input is a
dense vector, but a token is an index.  Here each embedding's output is replaced by the all-ones
vector over the vocabulary times |E|, divided by the vocabulary size (the mean row of |E|, i.e.
the uniform token distribution), at every position of a ``length``-token source and target.
Every embedding weight then carries flow (an index input would give flow to one row only), the
1/V keeps the |w| LSTM's gates out of saturation (a constant input scale multiplies every score
of a positively homogeneous network by the same factor, so the paper's ranking is unchanged
there), and ``length`` >= 2 lets flow reach the recurrent matrices (h_0 = 0 at the first step).
The LSTM and attention are not homogeneous, so the flow is not exactly conserved layer by layer,
and iterative SynFlow loses its protection against collapse here: on a fresh 2x128 model with a
9k vocabulary, 100 rounds to 99% pruned the target embedding, the decoder's LSTM matrices and W_a
entirely (biases zeroed or not; 2 or 8 tokens), so claim T1 is likely not to hold on this model.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from prunelab import nmt
from prunelab.criteria import random_scores
from prunelab.masks import Masks, apply_masks_, layer_ratios, masks_with_ratios
from prunelab.models.seq2seq import PAD
from prunelab.nmt.baseline import load_state_
from prunelab.obd_snip import class_names
from prunelab.sparse_init import erk_ratios, prune_at_init_, shuffle_within_layers

METHODS = ("snip", "grasp", "synflow", "fisher", "hutchinson", "random_erk", "random_ratios")
CONTROLS = ("none", "shuffle", "reinit")
REINIT_SEED = 10_000  # the reinitialised draw's seed is the point's seed plus this


def check_methods(methods, allowed=METHODS) -> list[str]:
    bad = [m for m in methods if m not in allowed]
    if bad:
        raise ValueError(f"unknown method {bad[0]!r}; choose from {', '.join(allowed)}")
    return list(methods)


def seq2seq_flow(length: int = 2):
    """SynFlow's all-ones forward pass for a `Seq2Seq` (see the module docstring): logits (1, L, V).

    >>> m = nmt.Seq2Seq(nmt.Seq2SeqConfig(src_vocab=9, tgt_vocab=7, layers=1, emb_size=4, hidden=4))
    >>> seq2seq_flow(2)(m).shape
    torch.Size([1, 2, 7])
    """
    if length < 2:
        raise ValueError(f"length={length}; the flow needs >= 2 tokens to reach the recurrent weights")

    def mean_row(module: nn.Embedding, _inputs, output: Tensor) -> Tensor:
        return module.weight.mean(0).expand_as(output)

    def flow(model: nn.Module) -> Tensor:
        device = next(model.parameters()).device
        hooks = [model.src_embedding.register_forward_hook(mean_row), model.tgt_embedding.register_forward_hook(mean_row)]
        try:
            tokens = torch.full((1, length), PAD + 1, dtype=torch.long, device=device)
            return model(tokens, torch.tensor([length]), tokens)
        finally:
            for h in hooks:
                h.remove()
    return flow


def prune_(model: nn.Module, method: str, sparsity: float, classes: dict[str, list[str]], *, batches: list, seed: int,
           rounds: int = 100, hvp: str = "autograd", probes: int = 4, flow_length: int = 2,
           ratios: dict[str, float] | None = None) -> tuple[Masks, dict[str, Any]]:
    """Prune the freshly initialised ``model`` in place by ``method`` (class-blind over ``classes``).

    Returns:
        (masks, info): ``info`` is the `Saliency.info` of the scoring (random methods: seconds 0).

    Raises:
        ValueError: an unknown method; ``random_ratios`` without ``ratios``.
    """
    check_methods([method])
    names = class_names(classes)
    if method.startswith("random"):
        if method == "random_ratios" and ratios is None:
            raise ValueError("random_ratios needs ratios (layer_ratios of another method's masks)")
        params = dict(model.named_parameters())
        ratios = erk_ratios({n: params[n].shape for n in names}, sparsity) if method == "random_erk" else ratios
        scores = random_scores(model, names, generator=torch.Generator().manual_seed(seed))
        masks = masks_with_ratios(scores, ratios)
        apply_masks_(model, masks)
        return masks, dict(method=method, estimator="", examples=0, batches=0, probes=0, seconds=0.0)
    criterion, ctx = {
        "snip": ("snip", {}),
        "grasp": ("grasp", dict(hvp=hvp)),
        "synflow": ("synflow", dict(flow_fn=seq2seq_flow(flow_length), rounds=rounds)),
        "fisher": ("obd", dict(estimator="fisher", example_weights=nmt.target_tokens)),
        "hutchinson": ("obd", dict(estimator="hutchinson", probes=probes,
                                   generator=torch.Generator(device=next(model.parameters()).device).manual_seed(seed))),
    }[method]
    masks, sal = prune_at_init_(model, sparsity, loss_fn=nmt.batch_loss, batches=batches, names=names, classes=classes,
                                criterion=criterion, **ctx)
    info = sal.info()
    info["method"] = method
    return masks, info


def control_(model: nn.Module, masks: Masks, control: str, build: Callable[[int], nn.Module], seed: int) -> Masks:
    """Apply a Frankle et al. (2021) control to a model pruned at init from seed ``seed``.

    ``shuffle``: each weight matrix's mask permuted within the matrix, on the same initial
    weights (``build(seed)``, the draw that was pruned).  ``reinit``: the same mask on weights
    re-drawn as ``build(seed + REINIT_SEED)``.  ``none``: unchanged.  Returns the masks now applied.
    """
    if control not in CONTROLS:
        raise ValueError(f"unknown control {control!r}; choose from {', '.join(CONTROLS)}")
    if control == "none":
        return masks
    if control == "shuffle":
        masks = shuffle_within_layers({n: m.cpu() for n, m in masks.items()}, torch.Generator().manual_seed(seed + 1))
    load_state_(model, build(seed + (REINIT_SEED if control == "reinit" else 0)).state_dict())
    masks = {n: m.to(next(model.parameters()).device) for n, m in masks.items()}
    apply_masks_(model, masks)
    return masks


def collapsed(masks: Masks) -> list[str]:
    """The weight matrices ``masks`` prune entirely (layer collapse, Tanaka et al. 2020)."""
    return [n for n, m in masks.items() if not bool(m.any())]


__all__ = ["CONTROLS", "METHODS", "check_methods", "collapsed", "control_", "layer_ratios", "prune_", "seq2seq_flow"]
