"""Data-driven saliencies: Optimal Brain Damage (LeCun et al. 1989) and SNIP (Lee et al. 2019).

Both are model-agnostic: the model's loss is a closure ``loss_fn(model, batch) -> scalar``
(the mean loss of the batch) and ``batches`` is any iterable of batches, each a tensor, a
tuple/list/dict of tensors or a dataclass of tensors (non-tensor leaves pass through).  Batches are moved to
the scored parameters' device; the model is put in eval mode (restored afterwards) so that
dropout does not make the estimates noisy, and cuDNN is disabled because its RNN kernels
refuse backward in eval mode and have no double backward.

OBD needs the Hessian diagonal h_kk; three estimators are offered (`HESSIAN_ESTIMATORS`):

- ``fisher``: the empirical Fisher of the same loss, from squared per-example gradients
  (torch.func vmap, or a per-example loop where vmap fails); ``example_weights`` says how
  a batch's loss weighs its examples (e.g. target tokens for a token-mean loss).  Squaring a
  gradient summed over a batch is a different quantity that goes to zero at a minimum.
- ``hutchinson``: E[z * Hz] over Rademacher vectors z, with Hessian-vector products by
  double backward; ``probes`` vectors per batch.
- ``exact``: the diagonal from one Hessian-vector product per weight; tiny models only.

Each ``*_saliency`` function returns a `Saliency` (scores plus how much data made them);
`obd` and `snip` return only the scores and follow the criteria convention
``fn(model, names=None, **context)``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree

from prunelab.criteria.unstructured import _select

LossFn = Callable[[nn.Module, Any], Tensor]
ExampleWeights = Callable[[Any], Tensor]
log = logging.getLogger(__name__)
PER_EXAMPLE = ("auto", "vmap", "loop")
MAX_EXACT = 4096  # weights; the exact diagonal costs one backward pass per weight


@dataclass(frozen=True)
class Saliency:
    """Scores of one saliency computation and the data that made them.

    Attributes:
        scores: name -> score tensor (higher is kept), on the parameters' device.
        method: ``obd`` or ``snip``.
        estimator: Hessian estimator for OBD (``fisher``, ``hutchinson``, ``exact``), else "".
        examples: examples seen (size of the example dimension, summed over batches).
        batches: batches seen.
        probes: Rademacher probes per batch (Hutchinson), else 0.
        per_example: how Fisher got per-example gradients (``vmap`` or ``loop``), else "".
        device: where the scores were computed.
        seconds: wall-clock time of the computation.
    """

    scores: dict[str, Tensor] = field(repr=False)
    method: str
    estimator: str
    examples: int
    batches: int
    probes: int
    per_example: str
    device: str
    seconds: float

    def info(self) -> dict[str, Any]:
        """Everything but the scores, as plain values (for tables and run records)."""
        return {k: v for k, v in self.__dict__.items() if k != "scores"}


# ----------------------------------------------------------------------------- batches


def _flatten(batch: Any) -> tuple[list, Callable[[list], Any]]:
    """Leaves of ``batch`` and a function rebuilding it; a dataclass batch is rebuilt from its fields."""
    if dataclasses.is_dataclass(batch) and not isinstance(batch, type):
        names = [f.name for f in dataclasses.fields(batch) if f.init]
        leaves, spec = pytree.tree_flatten([getattr(batch, n) for n in names])
        return leaves, lambda new: type(batch)(**dict(zip(names, pytree.tree_unflatten(new, spec))))
    leaves, spec = pytree.tree_flatten(batch)
    return leaves, lambda new: pytree.tree_unflatten(new, spec)


def _leaf_dims(batch: Any, example_dim: int) -> tuple[list, Callable[[list], Any], list]:
    leaves, rebuild = _flatten(batch)
    dims = [example_dim if isinstance(x, Tensor) and x.ndim > example_dim else None for x in leaves]
    return leaves, rebuild, dims


def count_examples(batch: Any, example_dim: int = 0) -> int:
    """Size of the example dimension of the first tensor in ``batch`` that has one.

    >>> count_examples((torch.zeros(5, 3), torch.zeros(5)))
    5
    """
    leaves, _, dims = _leaf_dims(batch, example_dim)
    for leaf, dim in zip(leaves, dims):
        if dim is not None:
            return int(leaf.shape[dim])
    raise ValueError(f"batch has no tensor with an example dimension {example_dim}: {type(batch).__name__}")


def to_device(batch: Any, device: torch.device | str) -> Any:
    """``batch`` with every tensor moved to ``device`` (tensors, containers, dataclasses)."""
    leaves, rebuild = _flatten(batch)
    return rebuild([x.to(device) if isinstance(x, Tensor) else x for x in leaves])


def _take_batches(batches: Iterable[Any], max_batches: int | None, device: torch.device) -> Iterable[Any]:
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches={max_batches!r}; it must be a positive integer or None (all batches)")
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            return
        yield to_device(batch, device)


@contextmanager
def _scoring_mode(model: nn.Module):
    """Eval mode, gradients on, cuDNN off; the model's mode is restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            yield
    finally:
        model.train(was_training)


def _params(model: nn.Module, names: Iterable[str] | None) -> dict[str, Tensor]:
    params = _select(model, names)
    frozen = [n for n, p in params.items() if not p.requires_grad]
    if frozen:
        raise ValueError(f"parameters {frozen} do not require grad; saliencies need their gradients")
    devices = {p.device for p in params.values()}
    if len(devices) != 1:
        raise ValueError(f"scored parameters lie on several devices {sorted(map(str, devices))}; use one")
    return params


def _weighted_mean(sums: dict[str, Tensor] | None, count: int, what: str) -> dict[str, Tensor]:
    if sums is None or count == 0:
        raise ValueError(f"batches gave no batch (or no examples) to compute {what} from; pass at least one")
    return {n: s / count for n, s in sums.items()}


def _accumulate(total: dict[str, Tensor] | None, part: dict[str, Tensor], weight: float = 1.0) -> dict[str, Tensor]:
    if total is None:
        return {n: p.detach() * weight for n, p in part.items()}
    return {n: total[n] + part[n].detach() * weight for n in total}


# ----------------------------------------------------------------------- Hessian diagonal


class _LossModule(nn.Module):
    """Wraps ``loss_fn`` so torch.func.functional_call can swap the model's parameters."""

    def __init__(self, model: nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


def _sq_grads_vmap(model, params, loss_fn, batch, example_dim, chunk_size, weights):
    from torch.func import functional_call, grad, vmap

    wrapper = _LossModule(model, loss_fn)
    leaves, rebuild, dims = _leaf_dims(batch, example_dim)
    detached = {f"model.{n}": p.detach() for n, p in params.items()}

    def loss_one(p, *example_leaves):
        # vmap removed the example dimension; put it back so loss_fn sees a batch of one.
        example = [x.unsqueeze(d) if d is not None else x for x, d in zip(example_leaves, dims)]
        return functional_call(wrapper, p, (rebuild(example),))

    with warnings.catch_warnings():  # LSTMs run under vmap through a slower fallback; the result is exact
        warnings.filterwarnings("ignore", message="There is a performance drop")
        g = vmap(grad(loss_one), in_dims=(None, *dims), chunk_size=chunk_size)(detached, *leaves)
    if weights is None:
        return {n: g[f"model.{n}"].pow(2).sum(0) for n in params}
    scale = {n: weights.to(device=p.device, dtype=p.dtype).view(-1, *[1] * p.ndim) for n, p in params.items()}
    return {n: (g[f"model.{n}"] * scale[n]).pow(2).sum(0) for n in params}


def _sq_grads_loop(model, params, loss_fn, batch, example_dim, weights):
    leaves, rebuild, dims = _leaf_dims(batch, example_dim)
    total = None
    for i in range(count_examples(batch, example_dim)):
        example = [x.narrow(d, i, 1) if d is not None else x for x, d in zip(leaves, dims)]
        grads = torch.autograd.grad(loss_fn(model, rebuild(example)), list(params.values()))
        w = 1.0 if weights is None else float(weights[i])
        total = _accumulate(total, {n: (g * w).pow(2) for n, g in zip(params, grads)})
    return total


def _batch_example_weights(example_weights: ExampleWeights | None, batch, n: int) -> Tensor | None:
    if example_weights is None:
        return None
    w = torch.as_tensor(example_weights(batch)).detach()
    if w.shape != (n,) or not bool((w > 0).all()):
        raise ValueError(f"example_weights gave {tuple(w.shape)} values for a batch of {n} examples; "
                         f"it must give one positive weight per example")
    return w.double()


def fisher_diagonal(model, params, loss_fn, batches, *, example_dim=0, per_example="auto", chunk_size=None,
                    example_weights=None, **_):
    """Empirical Fisher diagonal of the loss whose Hessian `hutchinson_diagonal` estimates.

    A batch's loss is taken to be L = sum_i t_i l_i / T: l_i = ``loss_fn`` on example i alone,
    t_i = ``example_weights(batch)[i]`` (default 1: the mean over examples) and T = sum_i t_i.
    For a token-mean loss t_i is example i's target-token count and t_i l_i its negative
    log-likelihood s_i, so the per-example terms t_i l_i / T sum exactly to L.  The Fisher
    identity stands a whole example's log-likelihood in for its Hessian, H(s_i) ~ grad s_i
    grad s_i^T, so H(L) ~ (1/T) sum_i (t_i grad l_i)^2 = T sum_i (grad of the i-th term)^2.
    Squaring grad l_i = grad s_i / t_i alone would weigh (grad s_i)^2 by 1/t_i^2 where H(L)
    weighs H(s_i) by 1/T: long sentences would count for too little.  Batches then combine
    as in `hutchinson_diagonal`: weighted by their example counts.
    """
    if per_example not in PER_EXAMPLE:
        raise ValueError(f"per_example={per_example!r}; choose one of {', '.join(PER_EXAMPLE)}")
    total, examples, n_batches, path = None, 0, 0, "loop" if per_example == "loop" else per_example
    for batch in batches:
        n = count_examples(batch, example_dim)
        weights = _batch_example_weights(example_weights, batch, n)
        if path in ("auto", "vmap"):
            try:
                part = _sq_grads_vmap(model, params, loss_fn, batch, example_dim, chunk_size, weights)
                path = "vmap"
            except Exception as exc:  # noqa: BLE001 - packed RNNs, data-dependent control flow refuse vmap
                if path == "vmap":
                    raise
                log.warning("Fisher diagonal: vmap failed (%s: %s); per-example gradients by a loop instead",
                            type(exc).__name__, exc)
                path = "loop"
        if path == "loop":
            part = _sq_grads_loop(model, params, loss_fn, batch, example_dim, weights)
        total = _accumulate(total, part, 1.0 if weights is None else n / float(weights.sum()))
        examples += n
        n_batches += 1
    return _weighted_mean(total, examples, "the Fisher diagonal"), dict(examples=examples, batches=n_batches, per_example=path)


def _batch_grads(model, params, loss_fn, batch):
    loss = loss_fn(model, batch)
    return torch.autograd.grad(loss, list(params.values()), create_graph=True)


def _hvp(grads, params: list[Tensor], vectors) -> list[Tensor]:
    """Products of the Hessian with ``vectors`` (one per parameter) by double backward."""
    live = [(g, v) for g, v in zip(grads, vectors) if g.requires_grad]
    if not live:  # the loss is linear in every parameter: its Hessian is zero
        return [torch.zeros_like(p) for p in params]
    outs, vs = zip(*live)
    hv = torch.autograd.grad(outs, params, grad_outputs=vs, retain_graph=True, allow_unused=True)
    return [torch.zeros_like(p) if h is None else h for p, h in zip(params, hv)]


def _rademacher(like: Tensor, generator: torch.Generator) -> Tensor:
    """Independent +-1 entries shaped like ``like``: eight per random byte, unpacked bit by bit."""
    n = like.numel()
    shifts = torch.arange(8, dtype=torch.uint8, device=like.device)
    words = torch.empty((n + 7) // 8, dtype=torch.uint8, device=like.device).random_(0, 256, generator=generator)
    signs = (words.unsqueeze(-1) >> shifts).bitwise_and_(1).reshape(-1)[:n].reshape(like.shape)
    return signs.to(like.dtype).mul_(2).sub_(1)


HVP_METHODS = ("autograd", "central")


def _central_hvp(model, params: dict[str, Tensor], loss_fn, batch, zs: list[Tensor], eps: float,
                 originals: list[Tensor]) -> list[Tensor]:
    """(grad(w + eps z) - grad(w - eps z)) / (2 eps): Hz to O(eps^2), with two plain backward passes.

    The weights are moved in place and copied back from ``originals`` (exactly) before returning,
    also when the loss raises.
    """
    plist = list(params.values())

    def grads_at(sign: float) -> list[Tensor]:
        with torch.no_grad():
            for p, w, z in zip(plist, originals, zs):
                torch.add(w, z, alpha=sign * eps, out=p)
        got = torch.autograd.grad(loss_fn(model, batch), plist, allow_unused=True)
        return [torch.zeros_like(p) if g is None else g for p, g in zip(plist, got)]

    try:
        plus, minus = grads_at(1.0), grads_at(-1.0)
    finally:
        with torch.no_grad():
            for p, w in zip(plist, originals):
                p.copy_(w)
    return [a.sub_(b).div_(2 * eps) for a, b in zip(plus, minus)]


def hutchinson_diagonal(model, params, loss_fn, batches, *, probes=16, generator=None, example_dim=0, hvp="autograd",
                        step=None, **_):
    """Hutchinson estimate E[z * Hz] (z Rademacher) of the Hessian diagonal of the mean loss.

    ``hvp="autograd"`` forms each Hz exactly by double backward; each batch's gradient graph is
    built once and shared by its ``probes`` products.  ``hvp="central"`` takes central differences
    of plain gradients at w +- eps z, eps = ``step`` x the RMS of the scored weights (default step
    2 x machine-epsilon^(1/3) of the weights' dtype, the usual balance of truncation and rounding:
    about 1e-2 in float32): two ordinary forward+backward passes per probe and no second-order
    graph, so it also runs where double backward does not.  On smooth networks (tanh/sigmoid
    LSTMs, tanh MLPs) its O(eps^2) error (~1e-4 relative in float32) is far below the estimator's
    own sampling noise.  On piecewise-linear ones (ReLU, max-pooling) it is a different quantity:
    the gradient jumps of units whose activation pattern flips within +-eps do not vanish as eps
    shrinks, so it measures a smoothed curvature, not the double-backward Hessian.  Each product is
    accumulated in place.
    """
    check_probes(probes)
    check_hvp(hvp, step)
    device = next(iter(params.values())).device
    gen = generator if generator is not None else torch.Generator(device=device).manual_seed(0)
    plist = list(params.values())
    total = {k: torch.zeros_like(p, memory_format=torch.contiguous_format).detach() for k, p in params.items()}
    originals, eps = None, 0.0
    if hvp == "central":
        originals = [p.detach().clone() for p in plist]
        step = 2 * torch.finfo(plist[0].dtype).eps ** (1 / 3) if step is None else step
        rms = math.sqrt(sum(float(w.double().pow(2).sum()) for w in originals) / max(1, sum(w.numel() for w in originals)))
        eps = step * (rms if rms > 0 else 1.0)
    examples, n_batches = 0, 0
    for batch in batches:
        grads = _batch_grads(model, params, loss_fn, batch) if hvp == "autograd" else None
        n = count_examples(batch, example_dim)
        for _ in range(probes):
            zs = [_rademacher(p, gen) for p in plist]
            hz = _hvp(grads, plist, zs) if hvp == "autograd" else _central_hvp(model, params, loss_fn, batch, zs, eps, originals)
            for acc, z, h in zip(total.values(), zs, hz):
                acc.addcmul_(z, h.detach(), value=n / probes)
        examples += n
        n_batches += 1
    return _weighted_mean(total if n_batches else None, examples, "the Hutchinson diagonal"), dict(
        examples=examples, batches=n_batches, probes=probes, hvp=hvp)


def exact_diagonal(model, params, loss_fn, batches, *, example_dim=0, max_weights=MAX_EXACT, **_):
    """Exact Hessian diagonal of the mean loss: one Hessian-vector product per weight."""
    size = sum(p.numel() for p in params.values())
    if size > max_weights:
        raise ValueError(f"the exact Hessian diagonal of {size} weights needs {size} backward passes per batch; "
                         f"it is offered up to max_weights={max_weights}: use estimator 'fisher' or 'hutchinson'")
    total, examples, n_batches = None, 0, 0
    for batch in batches:
        grads = _batch_grads(model, params, loss_fn, batch)
        n = count_examples(batch, example_dim)
        diag = {}
        for name, g in zip(params, grads):
            flat, p = g.reshape(-1), params[name]
            # Row k of the Hessian block of `p` is the gradient of dL/dw_k; keep its k-th entry.
            rows = [_hvp([flat[k]], [p], [torch.ones((), dtype=g.dtype, device=g.device)])[0].reshape(-1)[k]
                    for k in range(flat.numel())]
            diag[name] = torch.stack(rows).reshape(g.shape)
        total = _accumulate(total, diag, n)
        examples += n
        n_batches += 1
    return _weighted_mean(total, examples, "the exact Hessian diagonal"), dict(examples=examples, batches=n_batches)


HESSIAN_ESTIMATORS: dict[str, Callable[..., tuple[dict[str, Tensor], dict]]] = {
    "fisher": fisher_diagonal,
    "hutchinson": hutchinson_diagonal,
    "exact": exact_diagonal,
}


def check_hvp(hvp: str, step: float | None = None) -> None:
    if hvp not in HVP_METHODS:
        raise ValueError(f"hvp={hvp!r}; choose one of {', '.join(HVP_METHODS)}")
    if step is None:
        return
    if isinstance(step, bool) or not isinstance(step, (int, float)) or not math.isfinite(step) or step <= 0:
        raise ValueError(f"step={step!r}; the central-difference step must be a positive finite number (or None)")


def check_probes(probes: int) -> int:
    if isinstance(probes, bool) or not isinstance(probes, int) or probes < 1:
        raise ValueError(f"probes={probes!r}; Hutchinson needs a positive integer number of probe vectors")
    return probes


def hessian_diagonal(model: nn.Module, names: Iterable[str] | None = None, *, loss_fn: LossFn, batches: Iterable[Any],
                     estimator: str = "fisher", max_batches: int | None = None, **options) -> tuple[dict[str, Tensor], dict]:
    """Estimate of the Hessian diagonal of the mean loss over ``batches`` w.r.t. ``names``.

    Args:
        model: the network; its selected parameters must require grad.
        names: parameters to estimate (default `prunable`: the weight matrices).
        loss_fn: ``loss_fn(model, batch) -> scalar`` mean loss of a batch.
        batches: iterable of batches (moved to the parameters' device).
        estimator: one of `HESSIAN_ESTIMATORS` (``fisher``, ``hutchinson``, ``exact``).
        max_batches: use only the first ``max_batches`` batches (None: all).
        **options: ``probes``, ``generator``, ``hvp`` (``autograd``: exact double backward, or
            ``central``: central differences of gradients) and ``step`` (hutchinson), ``example_dim`` (default 0),
            ``per_example`` (fisher: ``auto``, ``vmap`` or ``loop``), ``chunk_size`` (vmap),
            ``example_weights`` (fisher: ``batch -> (n,)`` tensor, each example's weight in the
            batch's loss, e.g. `prunelab.nmt.target_tokens` for a token-mean loss; see
            `fisher_diagonal`).

    Returns:
        (name -> diagonal with the parameter's shape, info dict with examples and batches).

    Raises:
        ValueError: an unknown estimator, zero probes or batches, an exact diagonal too large.

    >>> model = nn.Linear(3, 1, bias=False)
    >>> loss = lambda m, b: (m(b[0]).squeeze(-1) - b[1]).pow(2).mean()
    >>> h, info = hessian_diagonal(model, loss_fn=loss, batches=[(torch.eye(3), torch.zeros(3))], estimator="exact")
    >>> h["weight"]  # 2 * mean of x_k^2
    tensor([[0.6667, 0.6667, 0.6667]])
    """
    if estimator not in HESSIAN_ESTIMATORS:
        raise ValueError(f"unknown Hessian estimator {estimator!r}; choose one of {', '.join(HESSIAN_ESTIMATORS)}")
    if estimator == "hutchinson":
        check_probes(options.get("probes", 16))
        check_hvp(options.get("hvp", "autograd"), options.get("step"))
    params = _params(model, names)
    device = next(iter(params.values())).device
    with _scoring_mode(model):
        return HESSIAN_ESTIMATORS[estimator](model, params, loss_fn, _take_batches(batches, max_batches, device), **options)


# ------------------------------------------------------------------------- OBD and SNIP


def obd_saliency(model: nn.Module, names: Iterable[str] | None = None, *, loss_fn: LossFn, batches: Iterable[Any],
                 estimator: str = "fisher", max_batches: int | None = None, **options) -> Saliency:
    """OBD saliency 0.5 * |h_kk| * w_k^2 (LeCun et al. 1989, eq. 5) of a trained model.

    LeCun et al. derive the saliency at a local minimum, where the Hessian is positive
    semi-definite, so h_kk >= 0 and the saliency is the (non-negative) loss increase of deleting
    w_k.  Estimates can still come out negative: Hutchinson's z_k (Hz)_k carries off-diagonal
    terms of either sign, and away from a minimum (an unconverged or tanh network) the exact
    diagonal has negative entries too.  Signed, a negative h_kk makes the saliency fall as |w_k|
    grows, so the largest such weights go first.  Clamping at zero would tie every one of them
    at saliency 0 (a quarter or more of the weights with Hutchinson on a small tanh MLP), which
    the selection then breaks by parameter order, i.e. prunes by position.  |h_kk| keeps the
    size of the predicted second-order change, stays >= 0 and leaves the saliency increasing
    in |w_k| for every h_kk; it equals the clamp wherever the OBD assumption holds.

    Args: as `hessian_diagonal`.  Returns: a `Saliency` (``method="obd"``).

    >>> model = nn.Linear(3, 1, bias=False)
    >>> loss = lambda m, b: (m(b[0]).squeeze(-1) - b[1]).pow(2).mean()
    >>> s = obd_saliency(model, loss_fn=loss, batches=[(torch.randn(8, 3), torch.randn(8))])
    >>> s.scores["weight"].shape, s.examples, s.estimator
    (torch.Size([1, 3]), 8, 'fisher')
    """
    start = time.perf_counter()
    diag, info = hessian_diagonal(model, names, loss_fn=loss_fn, batches=batches, estimator=estimator,
                                  max_batches=max_batches, **options)
    params = dict(model.named_parameters())
    scores = {n: 0.5 * h.abs() * params[n].detach().pow(2) for n, h in diag.items()}
    return Saliency(scores=scores, method="obd", estimator=estimator, examples=info["examples"], batches=info["batches"],
                    probes=info.get("probes", 0), per_example=info.get("per_example", ""),
                    device=str(next(iter(scores.values())).device), seconds=time.perf_counter() - start)


def snip_saliency(model: nn.Module, names: Iterable[str] | None = None, *, loss_fn: LossFn, batches: Iterable[Any],
                  max_batches: int | None = None, example_dim: int = 0, **_) -> Saliency:
    """SNIP connection sensitivity |dL/dc| at c = 1, i.e. |g * w| (Lee et al. 2019, eq. 3).

    g is the gradient of the mean loss over all examples of ``batches`` (batch gradients
    weighted by their example counts).  Lee et al. divide by the sum of the scores; that does
    not change the ranking and is left out.

    >>> model = nn.Linear(3, 1, bias=False)
    >>> loss = lambda m, b: (m(b[0]).squeeze(-1) - b[1]).pow(2).mean()
    >>> snip_saliency(model, loss_fn=loss, batches=[(torch.randn(8, 3), torch.randn(8))]).batches
    1
    """
    start = time.perf_counter()
    params = _params(model, names)
    device = next(iter(params.values())).device
    total, examples, n_batches = None, 0, 0
    with _scoring_mode(model):
        for batch in _take_batches(batches, max_batches, device):
            n = count_examples(batch, example_dim)
            grads = torch.autograd.grad(loss_fn(model, batch), list(params.values()))
            total = _accumulate(total, dict(zip(params, grads)), n)
            examples += n
            n_batches += 1
    grad = _weighted_mean(total, examples, "SNIP sensitivities")
    scores = {n: (grad[n] * params[n].detach()).abs() for n in params}
    return Saliency(scores=scores, method="snip", estimator="", examples=examples, batches=n_batches, probes=0,
                    per_example="", device=str(device), seconds=time.perf_counter() - start)


def obd(model: nn.Module, names: Iterable[str] | None = None, **context) -> dict[str, Tensor]:
    """OBD scores (criteria convention); see `obd_saliency` for the context it needs."""
    return obd_saliency(model, names, **context).scores


def snip(model: nn.Module, names: Iterable[str] | None = None, **context) -> dict[str, Tensor]:
    """SNIP scores (criteria convention); see `snip_saliency` for the context it needs."""
    return snip_saliency(model, names, **context).scores


def hutchinson_cost(model: nn.Module, names: Iterable[str] | None = None, *, loss_fn: LossFn, batch: Any,
                    probes: int = 8, repeats: int = 3, hvp: str = "autograd") -> dict[str, float]:
    """Time one Hutchinson probe against one forward+backward pass on ``batch`` (best of ``repeats``).

    ``hvp`` picks how each Hessian-vector product is formed (see `hutchinson_diagonal`).

    Returns:
        ``forward_backward_s``, ``per_probe_s`` (excluding the shared first backward) and
        ``ratio`` = per_probe_s / forward_backward_s, for the benchmark table.

    >>> model = nn.Linear(3, 1)
    >>> loss = lambda m, b: m(b).pow(2).mean()
    >>> sorted(hutchinson_cost(model, loss_fn=loss, batch=torch.randn(4, 3), probes=2, repeats=1))
    ['forward_backward_s', 'per_probe_s', 'ratio']
    """
    check_probes(probes)
    check_hvp(hvp)
    params = _params(model, names)
    device = next(iter(params.values())).device
    batch = to_device(batch, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def best(fn) -> float:
        times = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return min(times)

    with _scoring_mode(model):
        fb = best(lambda: torch.autograd.grad(loss_fn(model, batch), list(params.values())))
        one = best(lambda: hutchinson_diagonal(model, params, loss_fn, [batch], probes=1, hvp=hvp))
        many = best(lambda: hutchinson_diagonal(model, params, loss_fn, [batch], probes=probes + 1, hvp=hvp))
    per_probe = max(many - one, 0.0) / probes
    return dict(forward_backward_s=fb, per_probe_s=per_probe, ratio=per_probe / fb)
