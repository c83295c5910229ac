"""Saliencies for pruning at initialisation beyond SNIP, both about flow: GraSP (gradient flow) and SynFlow (synaptic flow).

- GraSP (Wang, Zhang & Grosse 2020, eq. 8): S = -w * (H g), g the gradient of the loss and H
  its Hessian; the paper removes the weights with the *highest* S (removing them least reduces
  the gradient flow).  Here scores follow the house rule "higher is kept", so the score
  returned is -S = w * (H g): pruning its lowest removes exactly the paper's highest S.
  H g is one Hessian-gradient product per batch, by double backward (``hvp="autograd"``) or
  by central differences of plain gradients at w +- eps g (``hvp="central"``, the route
  `second_order.hutchinson_diagonal` offers).  The paper's softmax temperature (T = 200 in
  its code) is not applied: the criterion only sees ``loss_fn(model, batch)``.
- SynFlow (Tanaka et al. 2020, eq. 3 and Algorithm 1): data-free.  Every parameter is
  replaced by its absolute value, an all-ones input is pushed through, R = sum of the output,
  and the score is w * dR/dw (>= 0 on the |w| network).  Pruning is iterative: ``rounds``
  rounds (100 in the paper), the kept fraction shrinking exponentially, (1 - s)^(k/n) after
  round k, each round rescoring the masked network.  ``flow_fn(model) -> Tensor`` says what
  the all-ones forward pass is; `ones_flow` builds it for a network taking a dense input.

Both take the criteria convention ``fn(model, names=None, **context)``.
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from prunelab.criteria.second_order import (LossFn, Saliency, _central_hvp, _params, _scoring_mode, _take_batches,
                                            _weighted_mean, check_hvp, count_examples)

FlowFn = Callable[[nn.Module], Tensor]
PAPER_ROUNDS = 100
GRASP_HVP = ("autograd", "central", "forward")


def _rms(tensors: Iterable[Tensor]) -> float:
    tensors = list(tensors)
    total = sum(float(t.double().pow(2).sum()) for t in tensors)
    return math.sqrt(total / max(1, sum(t.numel() for t in tensors)))


def grasp_saliency(model: nn.Module, names: Iterable[str] | None = None, *, loss_fn: LossFn, batches: Iterable[Any],
                   max_batches: int | None = None, example_dim: int = 0, hvp: str = "autograd",
                   step: float | None = None, **_) -> Saliency:
    """GraSP keep-scores w * (H g) (the negated paper score; see the module docstring).

    g is the gradient of the mean loss over all examples of ``batches`` (as `snip_saliency`), H
    the Hessian of the same loss.  ``hvp="autograd"`` keeps every batch's gradient graph (one
    gradient pass with ``create_graph``) and forms H g by one double backward of sum_b
    (n_b / N) <g_b, g>: about 3 forward+backward passes' worth per batch.  ``hvp="central"``:
    one plain gradient pass, then (grad(w + eps g) - grad(w - eps g)) / 2 eps per batch, eps =
    ``step`` x rms(w) / rms(g) (default step 2 x eps_float^(1/3)): 3 plain passes, no graph.
    ``hvp="forward"``: (grad(w + eps g) - grad(w)) / eps, reusing each batch's gradient at w from
    the first pass (default step 2 x eps_float^(1/2), the balance of an O(eps) truncation and
    rounding: ~1e-3 relative in float32 on smooth networks): 2 plain passes per batch.

    Args:
        model, names, loss_fn, batches, max_batches, example_dim: as `snip_saliency`.
        hvp: one of `GRASP_HVP`: ``autograd``, ``central`` or ``forward``.
        step: central-difference step relative to the weights' RMS (None: the default).

    Returns:
        A `Saliency` with ``method="grasp"`` and ``estimator`` the hvp route.

    Raises:
        ValueError: an unknown hvp, a bad step, no batches.

    >>> model = nn.Linear(3, 1, bias=False)
    >>> loss = lambda m, b: (m(b[0]).squeeze(-1) - b[1]).pow(2).mean()
    >>> grasp_saliency(model, loss_fn=loss, batches=[(torch.randn(8, 3), torch.randn(8))]).scores["weight"].shape
    torch.Size([1, 3])
    """
    if hvp not in GRASP_HVP:
        raise ValueError(f"hvp={hvp!r}; choose one of {', '.join(GRASP_HVP)}")
    check_hvp("autograd", step)
    start = time.perf_counter()
    params = _params(model, names)
    plist = list(params.values())
    device = plist[0].device
    with _scoring_mode(model):
        data, graphs, total, examples = [], [], None, 0
        for batch in _take_batches(batches, max_batches, device):
            n = count_examples(batch, example_dim)
            grads = torch.autograd.grad(loss_fn(model, batch), plist, create_graph=hvp == "autograd")
            total = [g.detach() * n for g in grads] if total is None else [t + g.detach() * n for t, g in zip(total, grads)]
            data.append((batch, n))
            graphs.append(grads if hvp != "central" else None)
            examples += n
        g = list(_weighted_mean(None if total is None else dict(zip(params, total)), examples, "GraSP's gradient").values())
        if hvp == "autograd":
            z = sum((n / examples) * sum((gb * gd).sum() for gb, gd in zip(grads, g)) for grads, (_, n) in zip(graphs, data))
            hg = list(torch.autograd.grad(z, plist, allow_unused=True))
            hg = [torch.zeros_like(p) if h is None else h for p, h in zip(plist, hg)]
        else:
            originals = [p.detach().clone() for p in plist]
            power = 1 / 3 if hvp == "central" else 1 / 2
            step = 2 * torch.finfo(plist[0].dtype).eps ** power if step is None else step
            g_rms = _rms(g)
            eps = step * (_rms(originals) or 1.0) / (g_rms if g_rms > 0 else 1.0)
            hg = [torch.zeros_like(p) for p in plist]
            for (batch, n), at_w in zip(data, graphs):
                parts = (_central_hvp(model, params, loss_fn, batch, g, eps, originals) if hvp == "central"
                         else _forward_hvp(model, plist, loss_fn, batch, g, eps, originals, at_w))
                for acc, h in zip(hg, parts):
                    acc.add_(h, alpha=n / examples)
    scores = {name: p.detach() * h.detach() for (name, p), h in zip(params.items(), hg)}
    return Saliency(scores=scores, method="grasp", estimator=hvp, examples=examples, batches=len(data), probes=0,
                    per_example="", device=str(device), seconds=time.perf_counter() - start)


def _forward_hvp(model, plist, loss_fn, batch, g, eps, originals, at_w) -> list[Tensor]:
    """(grad(w + eps g) - grad(w)) / eps with grad(w) given; the weights are restored exactly."""
    try:
        with torch.no_grad():
            for p, w, d in zip(plist, originals, g):
                torch.add(w, d, alpha=eps, out=p)
        moved = torch.autograd.grad(loss_fn(model, batch), plist, allow_unused=True)
    finally:
        with torch.no_grad():
            for p, w in zip(plist, originals):
                p.copy_(w)
    return [(torch.zeros_like(p) if m is None else m).sub(a.detach()).div_(eps) for p, m, a in zip(plist, moved, at_w)]


def grasp(model: nn.Module, names: Iterable[str] | None = None, **context) -> dict[str, Tensor]:
    """GraSP keep-scores (criteria convention); see `grasp_saliency`."""
    return grasp_saliency(model, names, **context).scores


# ------------------------------------------------------------------------------- SynFlow


def ones_flow(input_shape: tuple[int, ...]) -> FlowFn:
    """The paper's flow pass for a network on dense inputs: R's output from one all-ones example.

    >>> ones_flow((3,))(nn.Linear(3, 2)).shape
    torch.Size([1, 2])
    """
    def flow(model: nn.Module) -> Tensor:
        p = next(model.parameters())
        return model(torch.ones((1, *input_shape), dtype=p.dtype, device=p.device))
    return flow


def check_rounds(rounds: int) -> int:
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds={rounds!r}; SynFlow needs a positive integer number of pruning rounds "
                         f"(the paper uses {PAPER_ROUNDS})")
    return rounds


def synflow_round_sparsity(sparsity: float, round_: int, rounds: int) -> float:
    """Sparsity after round ``round_`` of ``rounds``: the kept fraction (1 - s)^(k/n) (exponential).

    >>> round(synflow_round_sparsity(0.99, 1, 2), 4)
    0.9
    """
    return 1.0 - (1.0 - sparsity) ** (round_ / rounds)


def synflow_scores(model: nn.Module, names: Iterable[str] | None = None, *, flow_fn: FlowFn,
                   masks: Mapping[str, Tensor] | None = None, double: bool = True) -> dict[str, Tensor]:
    """One round of synaptic-flow scores w * dR/dw of the |w| network (masked by ``masks``).

    Every parameter (scored or not, biases included) is replaced by its absolute value, masked
    weights by 0, for the pass; the model is restored exactly afterwards.  ``double`` runs the
    pass in float64 (R is a product over layers and overflows float32 in deep networks).

    Returns:
        name -> score (>= 0) with the parameter's shape and dtype.

    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> sorted(synflow_scores(net, flow_fn=ones_flow((3,))))
    ['0.weight', '2.weight']
    """
    params = _params(model, names)
    everything = dict(model.named_parameters())
    saved = {n: p.detach().clone() for n, p in everything.items()}
    dtype = next(iter(params.values())).dtype
    try:
        with torch.no_grad():
            if double:
                model.double()
            for n, p in model.named_parameters():
                p.abs_()
                if masks is not None and n in masks:
                    p.mul_(masks[n].to(p.device, p.dtype))
        with _scoring_mode(model):
            plist = [everything[n] for n in params]
            r = flow_fn(model).sum()
            grads = torch.autograd.grad(r, plist, allow_unused=True)
        scores = {n: (p.detach() * (torch.zeros_like(p) if g is None else g)).to(dtype)
                  for (n, p), g in zip(params.items(), grads)}
    finally:
        with torch.no_grad():
            model.to(dtype)
            for n, p in model.named_parameters():
                p.copy_(saved[n])
    return scores


def synflow_saliency(model: nn.Module, names: Iterable[str] | None = None, *, flow_fn: FlowFn, sparsity: float,
                     rounds: int = PAPER_ROUNDS, scheme: str = "class-blind",
                     classes: Mapping[str, Iterable[str]] | None = None, double: bool = True, **_) -> Saliency:
    """Iterative SynFlow (Algorithm 1 of Tanaka et al.) down to ``sparsity`` in ``rounds`` rounds.

    The model is not modified.  The scores returned are the last round's, with the weights an
    earlier round pruned set to -1 (below any flow score), so that `masks.masks_from_scores` at
    ``sparsity`` and the same scheme and classes gives exactly the iterative mask.

    Raises:
        ValueError: sparsity outside [0, 1), rounds not a positive integer.

    >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    >>> s = synflow_saliency(net, flow_fn=ones_flow((3,)), sparsity=0.5, rounds=3)
    >>> int((s.scores["0.weight"] < 0).sum() + (s.scores["2.weight"] < 0).sum()) <= 10
    True
    """
    from prunelab.masks import check_sparsity, masks_from_scores

    check_sparsity(sparsity)
    check_rounds(rounds)
    start = time.perf_counter()
    masks = None
    for k in range(1, rounds + 1):
        scores = synflow_scores(model, names, flow_fn=flow_fn, masks=masks, double=double)
        if masks is not None:
            scores = {n: torch.where(masks[n], s, torch.full_like(s, -1.0)) for n, s in scores.items()}
        if k < rounds:
            masks = masks_from_scores(scores, synflow_round_sparsity(sparsity, k, rounds), scheme, classes,
                                      previous=masks)
    device = str(next(iter(scores.values())).device)
    return Saliency(scores=scores, method="synflow", estimator="", examples=0, batches=0, probes=rounds,
                    per_example="", device=device, seconds=time.perf_counter() - start)


def synflow(model: nn.Module, names: Iterable[str] | None = None, *, flow_fn: FlowFn, **context) -> dict[str, Tensor]:
    """SynFlow scores (criteria convention): one round unless ``sparsity`` (and ``rounds``) are given."""
    if "sparsity" in context:
        return synflow_saliency(model, names, flow_fn=flow_fn, **context).scores
    return synflow_scores(model, names, flow_fn=flow_fn, double=context.get("double", True))
