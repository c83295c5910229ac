"""Training an NMT model: Adam or SGD, gradient clipping, early stopping, masked steps."""
from __future__ import annotations

import copy
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab.data.corpus import Corpus, Split
from prunelab.data.text import PAD, Batch
from prunelab.masks import Masks, apply_masks_, bind_masks, mask_grads_, masked_step_

OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class TrainConfig:
    """Training parameters (recorded with every checkpoint).

    Attributes:
        optimizer: ``adam`` or ``sgd`` (Luong/See et al. used plain SGD, lr 1, halving).
        lr: learning rate.
        batch_size: sentence pairs per step.
        max_epochs: upper bound on epochs.
        patience: stop after this many epochs without a better validation perplexity
            (0 = never stop early).
        lr_decay: multiply the learning rate by this after an epoch that did not improve.
        clip: gradient-norm clipping threshold (0 = none).
        seed: seeds the data order and dropout.
        max_steps: cap on steps per epoch (0 = whole epoch); for quick checks.
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    batch_size: int = 64
    max_epochs: int = 10
    patience: int = 2
    lr_decay: float = 0.5
    clip: float = 5.0
    seed: int = 0
    max_steps: int = 0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.lr <= 0 or self.batch_size < 1 or self.max_epochs < 0:
            raise ValueError(f"lr={self.lr}, batch_size={self.batch_size}, max_epochs={self.max_epochs}: "
                             "lr must be > 0, batch_size >= 1, max_epochs >= 0")

    @classmethod
    def from_params(cls, params: dict[str, Any], **changes) -> "TrainConfig":
        """The fields of ``params`` (a mapping or a notebook's namespace ``P``) this config has, updated by ``changes``."""
        params = params if isinstance(params, dict) else vars(params)
        fields = {k: params[k] for k in cls.__dataclass_fields__ if k in params}
        return cls(**{**fields, **changes})


def autocast(device: torch.device, amp: bool):
    """bf16 autocast on CUDA when ``amp``; a no-op otherwise (the CPU stays in fp32)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if amp and device.type == "cuda" else nullcontext()


def batch_loss(model: nn.Module, batch: Batch, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy of ``batch.tgt_out`` under teacher forcing, padding ignored.

    ``reduction="sum"`` gives the summed negative log-likelihood (for perplexity).

    >>> loss = batch_loss(model, batch)  # doctest: +SKIP
    """
    logits = model(batch.src, batch.src_len, batch.tgt_in)
    return nn.functional.cross_entropy(logits.float().flatten(0, 1), batch.tgt_out.flatten(), ignore_index=PAD,
                                       reduction=reduction)


def target_tokens(batch: Batch) -> torch.Tensor:
    """Target tokens (``</s>`` included, padding not) of each sentence: shape (B,).

    Each sentence's weight in `batch_loss`, a mean over tokens; OBD's Fisher needs it
    (``example_weights``, see `prunelab.criteria.second_order.fisher_diagonal`).
    """
    return (batch.tgt_out != PAD).sum(1)


@torch.no_grad()
def perplexity(model: nn.Module, split: Split, batch_size: int = 128, amp: bool = False) -> float:
    """exp(mean negative log-likelihood per target token, ``</s>`` included) on ``split``.

    >>> perplexity(model, corpus["val"])  # doctest: +SKIP
    """
    model.eval()
    device = next(model.parameters()).device
    nll, tokens = 0.0, 0
    for batch in split.batches(batch_size):
        batch = batch.to(device)
        with autocast(device, amp):
            nll += float(batch_loss(model, batch, reduction="sum"))
        tokens += batch.n_tokens
    return math.exp(nll / tokens)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """``config``'s optimizer over ``model``'s parameters.

    Adam is torch's fused kernel (CPU and CUDA): one pass over each parameter instead of a
    dozen elementwise ops; at the `default` size on one CPU thread a step takes 1/1.13 of the
    time it takes with the foreach kernel (``benchmarks/nmt_step.py`` measures it).
    """
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    return torch.optim.SGD(model.parameters(), lr=config.lr)


def _epoch(model, split, opt, config, pairs, generator, amp, desc, progress) -> float:
    model.train()
    device = next(model.parameters()).device
    total, tokens = torch.zeros((), device=device), 0
    n = math.ceil(len(split) / config.batch_size)
    n = min(n, config.max_steps) if config.max_steps else n
    # mininterval keeps executed notebooks small: a bar line every 10 s, not every batch.
    for i, batch in enumerate(tqdm(split.batches(config.batch_size, generator), total=n, desc=desc,
                                   disable=not progress, leave=False, mininterval=10)):
        if i >= n:
            break
        batch = batch.to(device)
        opt.zero_grad(set_to_none=True)
        with autocast(device, amp):
            loss = batch_loss(model, batch)
        loss.backward()
        if config.clip:
            mask_grads_(pairs)  # the clipped norm is the masked network's
            nn.utils.clip_grad_norm_(model.parameters(), config.clip)
        masked_step_(opt, pairs)
        total += loss.detach() * batch.n_tokens
        tokens += batch.n_tokens
    return float(total) / max(tokens, 1)


def train_(model: nn.Module, corpus: Corpus, config: TrainConfig, masks: Masks | None = None,
           amp: bool = False, progress: bool = True) -> list[dict]:
    """Train ``model`` in place with early stopping on validation perplexity.

    The weights of the epoch with the best validation perplexity are restored at the end.
    With ``masks`` the pruned weights are zeroed first and stay exactly zero (re-masked after
    every optimizer step, which keeps the LSTM's flat weights valid).

    Args:
        model: a `Seq2Seq` on its device.
        corpus: the data (``train`` to fit, ``val`` for early stopping).
        config: the `TrainConfig`.
        masks: optional masks (True = keep) over ``model``'s parameters.
        amp: bf16 autocast on CUDA.
        progress: tqdm bars.

    Returns:
        One dict per epoch (epoch 0 = before training): epoch, train_loss, val_ppl, lr,
        seconds, best (whether this epoch's weights were kept so far).

    >>> history = train_(model, corpus, TrainConfig(max_epochs=1))  # doctest: +SKIP
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    pairs = bind_masks(model, masks) if masks else []
    apply_masks_(pairs)
    opt = make_optimizer(model, config)
    best = perplexity(model, corpus["val"], amp=amp)
    best_state, since = copy.deepcopy(model.state_dict()), 0
    history = [dict(epoch=0, train_loss=float("nan"), val_ppl=best, lr=config.lr, seconds=0.0, best=True)]
    for epoch in tqdm(range(1, config.max_epochs + 1), desc="epochs", disable=not progress, leave=False):
        start = time.perf_counter()
        loss = _epoch(model, corpus["train"], opt, config, pairs, generator, amp, f"epoch {epoch}", progress)
        ppl = perplexity(model, corpus["val"], amp=amp)
        improved = ppl < best
        lr = opt.param_groups[0]["lr"]
        history.append(dict(epoch=epoch, train_loss=loss, val_ppl=ppl, lr=lr,
                            seconds=time.perf_counter() - start, best=improved))
        if improved:
            best, best_state, since = ppl, copy.deepcopy(model.state_dict()), 0
        else:
            since += 1
            for group in opt.param_groups:
                group["lr"] = lr * config.lr_decay
            if config.patience and since >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return history
