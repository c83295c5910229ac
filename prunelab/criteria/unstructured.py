"""Per-weight criteria that need no data: magnitude and random."""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


def prunable(model: nn.Module) -> list[str]:
    """Names of the weight matrices and kernels (``ndim >= 2``); biases and norms are left out."""
    return [n for n, p in model.named_parameters() if p.ndim >= 2]


def _select(model: nn.Module, names: Iterable[str] | None) -> dict[str, Tensor]:
    params = dict(model.named_parameters())
    names = prunable(model) if names is None else list(names)
    missing = [n for n in names if n not in params]
    if missing:
        raise KeyError(f"no parameter named {missing[0]!r}; the model has {', '.join(list(params)[:8])} ...")
    return {n: params[n] for n in names}


def magnitude(model: nn.Module, names: Iterable[str] | None = None, **_) -> dict[str, Tensor]:
    """|w| for each selected parameter (See et al. 2016; Han et al. 2015).

    >>> magnitude(nn.Linear(2, 1, bias=False))["weight"].shape
    torch.Size([1, 2])
    """
    return {n: p.detach().abs() for n, p in _select(model, names).items()}


def random_scores(model: nn.Module, names: Iterable[str] | None = None, generator: torch.Generator | None = None, **_) -> dict[str, Tensor]:
    """Uniform random scores; pass ``generator`` for reproducible random pruning."""
    return {
        n: torch.rand(p.shape, generator=generator, device=p.device)
        for n, p in _select(model, names).items()
    }
