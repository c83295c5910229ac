"""Accuracy, parameter and nonzero counts, FLOPs and measured latency."""
from __future__ import annotations

import time

import torch
from torch import Tensor, nn


@torch.no_grad()
def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on (x, y)."""
    model.eval()
    correct = torch.zeros((), dtype=torch.long, device=x.device)
    for i in range(0, x.shape[0], batch_size):
        correct += (model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum()
    return float(correct) / x.shape[0]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def flops(model: nn.Module, *inputs: Tensor) -> int:
    """Floating-point operations of one forward pass, counted by ``torch.utils.flop_counter``.

    A multiply-add counts as 2 FLOPs (the counter's convention).
    """
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return int(counter.get_total_flops())


@torch.no_grad()
def latency(model: nn.Module, x: Tensor, *, warmup: int = 3, repeats: int = 10) -> float:
    """Median seconds of one forward pass on ``x`` (synchronising CUDA around each pass)."""
    model.eval()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    for _ in range(warmup):
        model(x)
    times = []
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        model(x)
        sync()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]
