"""Masked retraining that follows a sparsity schedule: one-shot, iterative and gradual pruning.

`train_sparse_` trains an NMT model for a fixed number of epochs while a schedule (one of
`prunelab.schedules`, in training steps) raises its sparsity; each rise prunes class-blind by
magnitude on top of the current mask, so a weight once pruned stays pruned.  The same loop
trains sparse-from-scratch models (a fixed mask, no schedule), so every sparse model of a
comparison sees the same optimizer, clipping and model selection.  `margin_verdict` and
`combined_verdict` turn `PairedBleu` comparisons into claim verdicts.

>>> from prunelab import nmt
>>> s = nmt.sparsity_schedule("iterative", 0.8, span_steps=30, rounds=4)
>>> [round(s.sparsity_at(t), 6) for t in (0, 9, 10, 20, 30, 99)]
[0.2, 0.2, 0.4, 0.6, 0.8, 0.8]
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import torch
from torch import nn
from tqdm.auto import tqdm

from prunelab.data.corpus import Corpus, Split
from prunelab.masks import Masks, apply_masks_, bind_masks, mask_grads_, masked_step_
from prunelab.nmt.baseline import prune_masks
from prunelab.nmt.evaluate import PairedBleu
from prunelab.nmt.train import TrainConfig, autocast, batch_loss, make_optimizer, perplexity
from prunelab import results
from prunelab.results import significance_verdict
from prunelab.schedules import Iterative, OneShot, Polynomial

SCHEDULE_METHODS = ("one-shot", "iterative", "gradual")


@dataclass(frozen=True)
class RoundsEvery:
    """An `Iterative` schedule whose rounds fall every ``interval`` training steps (round 1 at step 0)."""

    schedule: Iterative
    interval: int

    @property
    def target(self) -> float:
        return self.schedule.target

    def sparsity_at(self, step: int) -> float:
        return self.schedule.sparsity_at(1 + step // self.interval)


def sparsity_schedule(method: str, target: float, span_steps: int, rounds: int = 4, every: int = 1):
    """The schedule of ``method`` in training steps, reaching ``target`` by step ``span_steps``.

    Args:
        method: ``one-shot`` (`OneShot`: all at step 0), ``iterative`` (`Iterative`: ``rounds``
            equal steps, the first at step 0 and the last at ``span_steps``) or ``gradual``
            (`Polynomial`, Zhu & Gupta's AGP: cubic from dense at step 0 to ``target`` at
            ``span_steps``, updated every ``every`` steps).
        target: final sparsity.
        span_steps: training steps over which the sparsity rises (>= 1).
        rounds: pruning rounds of ``iterative``.
        every: steps between the updates of ``gradual``.

    Returns:
        An object with ``target`` and ``sparsity_at(step)``.

    >>> sparsity_schedule("gradual", 0.9, span_steps=100, every=10).sparsity_at(100)
    0.9
    """
    if method not in SCHEDULE_METHODS:
        raise ValueError(f"unknown schedule {method!r}; choose one of {', '.join(SCHEDULE_METHODS)}")
    if span_steps < 1:
        raise ValueError(f"span_steps={span_steps} must be >= 1")
    if method == "one-shot":
        return OneShot(target)
    if method == "iterative":
        return RoundsEvery(Iterative(target, rounds), max(1, span_steps // max(rounds - 1, 1)))
    return Polynomial(target, begin=0, end=span_steps, frequency=every)


def first_pairs(split: Split, n: int) -> Split:
    """The first ``n`` pairs of ``split`` (all of it for ``n=0``), e.g. for a training perplexity."""
    n = n or len(split)
    return Split(split.src[:n], split.tgt[:n], split.src_raw[:n], split.tgt_raw[:n])


def epoch_steps(corpus: Corpus, config: TrainConfig) -> int:
    """Optimizer steps in one epoch of ``config`` on ``corpus["train"]`` (``max_steps`` caps it)."""
    n = math.ceil(len(corpus["train"]) / config.batch_size)
    return min(n, config.max_steps) if config.max_steps else n


def _sparsity(masks: Masks) -> float:
    total = sum(m.numel() for m in masks.values())
    return 1.0 - sum(int(m.sum()) for m in masks.values()) / total if total else 0.0


class _Pruner:
    """The current masks of a `train_sparse_` run and the pruning its schedule asks for."""

    def __init__(self, model, schedule, classes, masks: Masks):
        self.model, self.schedule, self.classes, self.masks = model, schedule, classes, masks
        self.final = schedule.target if schedule is not None else None
        self.now = _sparsity(masks) if masks else 0.0

    def at_final(self) -> bool:
        return self.final is None or self.now == self.final

    def due(self, step: int) -> bool:
        s = self.schedule.sparsity_at(step) if self.schedule is not None else self.now
        return s > self.now and not math.isclose(s, self.now)

    def prune(self, step: int) -> list:
        """Prune to the schedule's sparsity at ``step`` (on top of the current masks); the bound masks."""
        target = self.schedule.sparsity_at(step) if self.schedule is not None else self.now
        if self.final is not None and math.isclose(target, self.final):
            target = self.final  # 0.8 * 3 / 3 may miss 0.8 by one ulp
        if target > self.now or not self.masks:
            self.masks = prune_masks(self.model, target, "class-blind", classes=self.classes,
                                     previous=self.masks or None)
            self.now = target
        pairs = bind_masks(self.model, self.masks)
        apply_masks_(pairs)
        return pairs


def _masked_update(model, batch, opt, pairs, clip: float, amp: bool):
    """One optimizer step on ``batch`` that keeps the pruned weights at zero; (loss, batch)."""
    opt.zero_grad(set_to_none=True)
    with autocast(batch.src.device, amp):
        loss = batch_loss(model, batch)
    loss.backward()
    mask_grads_(pairs)  # clipping acts on the live weights only
    if clip:
        nn.utils.clip_grad_norm_(model.parameters(), clip)
    masked_step_(opt, pairs)
    return loss, batch


def train_sparse_(model: nn.Module, corpus: Corpus, config: TrainConfig, schedule=None, masks: Masks | None = None,
                  classes: dict[str, list[str]] | None = None, amp: bool = False,
                  progress: bool = True) -> tuple[list[dict], Masks]:
    """Train ``model`` in place for ``config.max_epochs`` epochs, pruning as ``schedule`` says.

    Whenever ``schedule.sparsity_at(step)`` rises, the weights are pruned class-blind by
    magnitude (`prune_masks` over ``classes``) on top of the current masks; pruned weights stay
    exactly zero (re-masked after every step).  Without a schedule ``masks`` stay fixed
    (sparse-from-scratch).  Only epochs at the final sparsity compete for the best validation
    perplexity: their best weights are restored at the end, and an epoch among them that does
    not improve multiplies the learning rate by ``config.lr_decay`` (as `train_`; no early stop,
    so every method spends the same budget).

    Args:
        model: a `Seq2Seq` on its device.
        corpus: ``train`` to fit, ``val`` to select.
        config: the `TrainConfig` (``max_epochs`` is the budget).
        schedule: a `sparsity_schedule` (``target``, ``sparsity_at``) in training steps, or None.
        masks: masks to start from (True keeps); required without a schedule.
        classes: See et al.'s weight classes (default `weight_classes(model)`).
        amp: bf16 autocast on CUDA.
        progress: tqdm bars.

    Returns:
        (history, masks): one dict per epoch (epoch 0 before training) with epoch, step,
        sparsity, train_loss, val_ppl, lr, seconds, best; and the final masks.

    Raises:
        ValueError: no schedule and no masks, or a schedule that does not reach its target
            within the budget.

    >>> history, m = train_sparse_(model, corpus, cfg, sparsity_schedule("one-shot", 0.8, 1))  # doctest: +SKIP
    """
    n, epochs = epoch_steps(corpus, config), config.max_epochs
    if schedule is None and not masks:
        raise ValueError("train_sparse_ needs a schedule or masks")
    if schedule is not None and not math.isclose(schedule.sparsity_at(max(n * epochs - 1, 0)), schedule.target):
        raise ValueError(f"the schedule reaches {schedule.sparsity_at(max(n * epochs - 1, 0))}, not its target "
                         f"{schedule.target}, within {epochs} epoch(s) of {n} steps")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    pruner = _Pruner(model, schedule, classes, dict(masks or {}))
    pairs = pruner.prune(0)
    opt = make_optimizer(model, config)
    at_final = pruner.at_final()
    val = perplexity(model, corpus["val"], amp=amp)
    best, best_state = (val, copy.deepcopy(model.state_dict())) if at_final else (math.inf, None)
    history = [dict(epoch=0, step=0, sparsity=pruner.now, train_loss=float("nan"), val_ppl=val, lr=config.lr, seconds=0.0,
                    best=at_final)]
    device, step = next(model.parameters()).device, 0
    for epoch in tqdm(range(1, epochs + 1), desc="epochs", disable=not progress, leave=False):
        start, total, tokens = time.perf_counter(), torch.zeros((), device=device), 0
        model.train()
        for i, batch in enumerate(tqdm(corpus["train"].batches(config.batch_size, generator), total=n,
                                       desc=f"epoch {epoch}", disable=not progress, leave=False, mininterval=10)):
            if i >= n:
                break
            if pruner.due(step):
                pairs = pruner.prune(step)
            loss, batch = _masked_update(model, batch.to(device), opt, pairs, config.clip, amp)
            total, tokens, step = total + loss.detach() * batch.n_tokens, tokens + batch.n_tokens, step + 1
        val = perplexity(model, corpus["val"], amp=amp)
        lr, at_final = opt.param_groups[0]["lr"], pruner.at_final()
        improved = at_final and val < best
        history.append(dict(epoch=epoch, step=step, sparsity=pruner.now, train_loss=float(total) / max(tokens, 1), val_ppl=val,
                            lr=lr, seconds=time.perf_counter() - start, best=improved))
        if improved:
            best, best_state = val, copy.deepcopy(model.state_dict())
        elif at_final:
            for group in opt.param_groups:
                group["lr"] = lr * config.lr_decay
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history, pruner.masks


def margin_verdict(paired: PairedBleu, margin: float) -> str:
    """Verdict of "system a is within ``margin`` BLEU of system b, or better": `results.margin_verdict`
    of the 95% interval of BLEU(a) - BLEU(b)."""
    return results.margin_verdict(*paired.ci, margin)


def beats_verdict(paired: PairedBleu) -> str:
    """Verdict of "system a beats system b": `significance_verdict` of the paired bootstrap."""
    return significance_verdict(paired.delta > 0, paired.beyond_noise())


def combined_verdict(verdicts: list[str]) -> str:
    """One verdict for a claim made at several points: ``not reproduced`` if any point says so,
    ``reproduced`` if all do, else ``within noise``.

    >>> combined_verdict(["reproduced", "within noise"])
    'within noise'
    """
    if not verdicts:
        raise ValueError("no verdicts to combine")
    if "not reproduced" in verdicts:
        return "not reproduced"
    return "reproduced" if all(v == "reproduced" for v in verdicts) else "within noise"


__all__ = ["SCHEDULE_METHODS", "RoundsEvery", "beats_verdict", "combined_verdict", "epoch_steps", "first_pairs",
           "margin_verdict", "sparsity_schedule", "train_sparse_"]
