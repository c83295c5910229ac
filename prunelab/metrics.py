"""Accuracy, parameter and nonzero counts, FLOPs, measured latency and training-step time."""
from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block ``model`` is in eval mode; on exit every submodule gets back the mode it had.

    >>> net = nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2)).train()
    >>> _ = net[1].eval()  # a frozen batch-norm inside a training model stays frozen
    >>> with eval_mode(net):
    ...     net.training
    False
    >>> net.training, net[0].training, net[1].training
    (True, True, False)
    """
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def accuracy(model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` on (x, y), in eval mode (the model's own mode is restored after)."""
    return accuracy_over(model, ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)))


@torch.no_grad()
def accuracy_over(model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]]) -> float:
    """Top-1 accuracy over ``(x, y)`` batches (a streamed test split), in eval mode (mode restored after).

    >>> accuracy_over(nn.Linear(2, 2), [(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))]) in (0.0, 1.0)
    True
    """
    correct, count = None, 0
    with eval_mode(model):
        for xb, yb in batches:
            hits = (model(xb).argmax(1) == yb).sum()
            correct = hits if correct is None else correct + hits
            count += yb.shape[0]
    return float(correct) / count if count else float("nan")


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_nonzero(model: nn.Module) -> int:
    return sum(int(torch.count_nonzero(p.detach())) for p in model.parameters())


def flops(model: nn.Module, *inputs: Tensor) -> int:
    """Floating-point operations of one forward pass, counted by ``torch.utils.flop_counter``.

    A multiply-add counts as 2 FLOPs (the counter's convention). Counted in eval mode; the model's
    own mode is restored after.
    """
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), eval_mode(model), FlopCounterMode(display=False) as counter:
        model(*inputs)
    return int(counter.get_total_flops())


@torch.no_grad()
def latency(model: nn.Module, x: Tensor, *, warmup: int = 3, repeats: int = 10) -> float:
    """Median seconds of one forward pass on ``x`` in eval mode (synchronising CUDA around each pass);
    the model's own mode is restored after."""
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times = []
    with eval_mode(model):
        for _ in range(warmup):
            model(x)
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            model(x)
            sync()
            times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def train_step_seconds(model: nn.Module, x: Tensor, y: Tensor, *, steps: int = 10, warmup: int = 2, lr: float = 1e-4,
                       threads: int = 0) -> float:
    """Median seconds of one Adam step with cross-entropy on the batch ``x``, ``y`` (forward,
    backward, update), on a copy of ``model`` in train mode; CUDA is synchronised around each step.

    Times a fixed number of steps, not an epoch: seconds per epoch are this times the batches per epoch.
    ``threads`` > 0 runs the steps on that many CPU threads (restored after): on a shared machine
    one thread's timings vary far less than several threads competing for its cores.

    >>> train_step_seconds(nn.Linear(4, 2), torch.zeros(8, 4), torch.zeros(8, dtype=torch.long), steps=3) > 0
    True
    """
    net = copy.deepcopy(model).train()
    opt, loss_fn = torch.optim.Adam(net.parameters(), lr=lr), nn.CrossEntropyLoss()
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    times, before = [], torch.get_num_threads()
    torch.set_num_threads(threads or before)
    try:
        for i in range(warmup + steps):
            sync()
            start = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            loss_fn(net(x), y).backward()
            opt.step()
            sync()
            if i >= warmup:
                times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(before)
    return sorted(times)[len(times) // 2]
