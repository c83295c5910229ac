"""Seeding, devices and a plain masked training loop for classifiers."""
from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import nullcontext

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from prunelab.masks import apply_masks_, bind_masks, masked_step_


def seed_all(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator seeded the same (for data order).

    Call before building models and masks so that both are reproducible.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def pick_device(device: str = "auto") -> torch.device:
    """``auto`` is CUDA when present, else the CPU; other values go to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def batches(x: Tensor, y: Tensor, batch_size: int, generator: torch.Generator | None = None) -> Iterable[tuple[Tensor, Tensor]]:
    """Mini-batches of (x, y); shuffled with ``generator`` when one is given."""
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device) if generator is not None else torch.arange(n, device=x.device)
    for i in range(0, n, batch_size):
        idx = order[i:i + batch_size]
        yield x[idx], y[idx]


def autocast(device: torch.device | str, amp: bool):
    """bf16 autocast on ``device`` when ``amp``; a no-op otherwise (fp32, the default results).

    >>> with autocast("cpu", False):
    ...     pass
    """
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16) if amp else nullcontext()


def train_classifier_(model: nn.Module, x: Tensor, y: Tensor, *, epochs: int, lr: float, batch_size: int = 64,
                      masks: Mapping[str, Tensor] | None = None, generator: torch.Generator | None = None,
                      weight_decay: float = 0.0, progress: bool = False, amp: bool = False) -> list[dict]:
    """Train with Adam and cross-entropy on tensors ``x``, ``y``; with ``masks``, pruned weights stay
    exactly zero. Mini-batches are `batches` of ``x``, ``y`` (shuffled with ``generator``).

    ``amp`` runs forward and loss under bf16 autocast (weights, gradients and optimizer stay
    fp32, so masks hold exactly); off by default, which keeps fp32 results bit for bit.
    The loss is summed on the device: one host read per epoch, none per batch.

    Returns one dict per epoch: epoch, loss (mean over batches), seconds.
    """
    return fit_classifier_(model, lambda: batches(x, y, batch_size, generator), epochs=epochs, lr=lr, masks=masks,
                           weight_decay=weight_decay, progress=progress, amp=amp)


def fit_classifier_(model: nn.Module, epoch_batches: Callable[[], Iterable[tuple[Tensor, Tensor]]], *, epochs: int, lr: float,
                    masks: Mapping[str, Tensor] | None = None, weight_decay: float = 0.0, progress: bool = False,
                    amp: bool = False) -> list[dict]:
    """`train_classifier_` on any source of batches: ``epoch_batches()`` yields one epoch's ``(x, y)``
    on the model's device (a streamed ``DataLoader``, `prunelab.data.imagesets.ImageData.batches`).

    >>> net = nn.Linear(2, 2)
    >>> len(fit_classifier_(net, lambda: [(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long))], epochs=2, lr=0.1))
    2
    """
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    pairs = bind_masks(model, masks) if masks else []
    apply_masks_(pairs)
    loss_fn = nn.CrossEntropyLoss()
    device = next(model.parameters()).device
    history = []
    for epoch in tqdm(range(epochs), desc="epochs", disable=not progress, leave=False):
        model.train()
        start, total, count = time.perf_counter(), torch.zeros((), device=device), 0
        for xb, yb in epoch_batches():
            opt.zero_grad(set_to_none=True)
            with autocast(device, amp):
                loss = loss_fn(model(xb), yb)
            loss.backward()
            masked_step_(opt, pairs)
            total += loss.detach().float()
            count += 1
        history.append(dict(epoch=epoch + 1, loss=float(total) / max(count, 1), seconds=time.perf_counter() - start))
    model.eval()
    return history
