"""Iterative structured pruning (Molchanov et al. 2017, Fig. 1): rank filters, remove k, fine-tune,
repeat until a FLOPs or filter target, measuring every level.

Each level records accuracy, parameters, FLOPs (``torch.utils.flop_counter``, per image),
the median CPU latency of one forward pass at a stated batch size (and CUDA latency when the
model lives on a GPU), and fine-tuning seconds per epoch. The ranked units are the prunable
dependency groups (`prunelab.removal.rankable`: a conv with the depthwise convs, gates and
residual partners that share its channels; never the output layer), each named by its leader.
With ``prune_linear`` the hidden linear layers' units join the ranking (same criterion, same
removal): where the classifier dominates the pruned net's time, filters alone cannot make it fast.

Data is `prunelab.data.imagesets.ImageData` (streamed or in memory) or a dict of tensors
``x_train``, ``y_train``, ``x_test``, ``y_test`` (wrapped by `imagesets.from_tensors`).
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from prunelab import metrics, train
from prunelab.criteria.filters import describe_normalization, get_filter_criterion
from prunelab.data.imagesets import ImageData, from_tensors
from prunelab.models.cnn import check_input_shape
from prunelab.removal import (empty_ranks, filter_layers, plan_by_share, plan_from_scores, rankable, remove_filters_,
                              wanted_per_layer)


@dataclass(frozen=True)
class PruneConfig:
    """One iterative pruning run.

    Attributes:
        criterion: a key of ``FILTER_CRITERIA``.
        normalize: layer-wise score normalisation, one of ``criteria.filters.NORMALIZATIONS`` (``"l2"``:
            every criterion's scores divided by their L2 norm per layer before the global ranking).
        filters_per_step: filters removed per iteration (k).
        finetune_epochs: fine-tuning epochs after each removal (n steps = epochs x batches per epoch).
        target_flops: stop once FLOPs <= this fraction of the original (None: no FLOPs target).
        target_filters: stop once at most this many filters remain (None: no filter target).
        min_filters: the fewest filters a layer keeps.
        score_examples: training examples used by the criterion (held fixed, the first ones).
        latency_batch: batch size of the latency measurement.
        prune_linear: rank and remove hidden linear units too (never the output layer).
    """

    criterion: str = "taylor"
    normalize: str = "l2"
    filters_per_step: int = 8
    finetune_epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 64
    target_flops: float | None = 0.2
    target_filters: int | None = None
    min_filters: int = 1
    score_examples: int = 256
    score_batch: int = 128
    latency_batch: int = 64
    latency_repeats: int = 10
    seed: int = 0
    prune_linear: bool = False


def min_flops(model: nn.Module, example: Tensor, names: list[str], min_filters: int, linear: bool = False) -> int:
    """FLOPs per image left when every layer in ``names`` keeps only ``min_filters`` filters."""
    layers = filter_layers(model, example, linear=linear)
    small = copy.deepcopy(model)
    plan = {n: list(range(min_filters, layers[n].n_filters)) for n in names}
    remove_filters_(small, plan, example, min_filters, linear)
    return metrics.flops(small, example[:1])


def accuracy_on_test(model: nn.Module, data: ImageData) -> float:
    """Top-1 accuracy on the test split (streamed in batches of 512)."""
    return metrics.accuracy_over(model, data.batches("test", 512))


def measure(model: nn.Module, data: ImageData, cfg: PruneConfig) -> dict:
    """Accuracy, parameters, FLOPs per image and latency (CPU always; CUDA when the model is on a GPU)."""
    example = data.example()
    row = dict(accuracy=accuracy_on_test(model, data), params=metrics.count_params(model),
               flops=metrics.flops(model, example), latency_batch=cfg.latency_batch, threads=torch.get_num_threads())
    batch = torch.zeros(cfg.latency_batch, *data.shape)
    if example.is_cuda:
        row["latency_cuda_s"] = metrics.latency(model, batch.to(example.device), repeats=cfg.latency_repeats)
    cpu = copy.deepcopy(model).cpu()
    row["latency_cpu_s"] = metrics.latency(cpu, batch, repeats=cfg.latency_repeats)
    return row


def _finetune_(model, data: ImageData, cfg, gen) -> float:
    """Fine-tune in place; return the mean seconds per epoch."""
    hist = train.fit_classifier_(model, lambda: data.batches("train", cfg.batch_size, gen), epochs=cfg.finetune_epochs,
                                 lr=cfg.lr)
    return sum(h["seconds"] for h in hist) / len(hist)


def check_targets(model: nn.Module, example: Tensor, names: list[str], cfg: PruneConfig) -> None:
    """Raise a clear ValueError when no target is set or a target cannot be reached."""
    layers = filter_layers(model, example, linear=cfg.prune_linear)
    total, floor = sum(layers[n].n_filters for n in names), cfg.min_filters * len(names)
    if cfg.target_flops is None and cfg.target_filters is None:
        raise ValueError("set target_flops (a fraction of the original FLOPs) or target_filters")
    if cfg.target_filters is not None and not floor <= cfg.target_filters <= total:
        raise ValueError(f"target_filters={cfg.target_filters} is unreachable: between {floor} (min_filters="
                         f"{cfg.min_filters} in each of {len(names)} layers) and {total} filters can remain")
    if cfg.target_flops is not None:
        reachable = min_flops(model, example, names, cfg.min_filters, cfg.prune_linear) / metrics.flops(model, example[:1])
        if not reachable <= cfg.target_flops <= 1:
            raise ValueError(f"target_flops={cfg.target_flops} is unreachable: keeping min_filters={cfg.min_filters} "
                             f"in each of {', '.join(names)} leaves {reachable:.4f} of the FLOPs; choose a fraction in "
                             f"[{reachable:.4f}, 1]")
    describe_normalization(cfg.normalize)  # an unknown normalisation is refused before any work
    if cfg.filters_per_step < 1:
        raise ValueError(f"filters_per_step={cfg.filters_per_step} must be at least 1")


def prune_iteratively(model: nn.Module, data: ImageData | dict[str, Tensor], cfg: PruneConfig,
                      progress: bool = False) -> tuple[list[dict], list[dict]]:
    """Prune a copy of ``model`` until ``cfg``'s target; ``model`` itself is left unchanged.

    Args:
        data: an `ImageData` whose batches land on the model's device, or ``x_train``, ``y_train``,
            ``x_test``, ``y_test`` tensors there; images ``(N, C, H, W)``.

    Returns:
        (levels, layers): one dict per level (level 0 = unpruned; accuracy after fine-tuning,
        accuracy_before_finetune, params, flops, latency, finetune_s_per_epoch, ...), and one dict per
        level and layer (kind conv or linear, filters or units remaining, removed at that level, and
        ``wanted_now``: how many the criterion's k lowest scores took from it before the ``min_filters``
        guard; ``wanted_now > removed_now`` where the guard overrode the criterion; ``empty_rank``: how
        many of those scores' lowest it takes to include all of the layer's filters, `removal.empty_ranks`;
        both 0 at level 0).

    Raises:
        ValueError: images the model cannot take, an unreachable target, an unknown criterion.
    """
    score = get_filter_criterion(cfg.criterion)
    data = data if isinstance(data, ImageData) else from_tensors(data)
    check_input_shape(model, data.shape)
    model = copy.deepcopy(model).eval()
    example = data.example()
    names = rankable(filter_layers(model, example, linear=cfg.prune_linear))
    check_targets(model, example, names, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    batches = data.head(cfg.score_examples, cfg.score_batch)
    flops0 = metrics.flops(model, example)
    measure(model, data, cfg)  # throwaway: the first timed passes in a process run slow
    start = measure(model, data, cfg)
    base_epoch = _finetune_(copy.deepcopy(model), data, cfg, torch.Generator().manual_seed(cfg.seed))  # timing only
    levels = [dict(level=0, criterion=cfg.criterion, removed=0, **start, accuracy_before_finetune=start["accuracy"],
                   finetune_s_per_epoch=base_epoch, score_s=0.0)]
    layers = filter_layers(model, example, linear=cfg.prune_linear)
    per_layer = [dict(level=0, criterion=cfg.criterion, layer=n, kind=layers[n].kind, filters=layers[n].n_filters,
                      removed_now=0, wanted_now=0, empty_rank=0) for n in names]
    bar = tqdm(desc=f"pruning ({cfg.criterion})", disable=not progress, leave=False)
    while not _reached(levels[-1], flops0, layers, names, cfg):
        t = time.perf_counter()
        scores = score(model, names, batches=batches, layers=layers, generator=gen, normalize=cfg.normalize)
        score_s = time.perf_counter() - t
        capacity = sum(layers[n].n_filters - cfg.min_filters for n in names)
        n_remove = min(cfg.filters_per_step, capacity)
        plan = plan_from_scores(scores, n_remove, cfg.min_filters)
        wanted = wanted_per_layer(scores, n_remove)  # read only: what the criterion chose before the min_filters guard
        ranks = empty_ranks(scores)  # read only: how close the criterion's order comes to emptying each layer
        remove_filters_(model, plan, example, cfg.min_filters, cfg.prune_linear)
        before = accuracy_on_test(model, data)
        # Dropout draws from the global RNG: reseed it per level so that a level's fine-tuning
        # does not depend on what else drew from it before (the run was not reproducible otherwise).
        torch.manual_seed(cfg.seed + len(levels))
        epoch_s = _finetune_(model, data, cfg, gen)
        layers, level = filter_layers(model, example, linear=cfg.prune_linear), len(levels)
        levels.append(dict(level=level, criterion=cfg.criterion, removed=levels[-1]["removed"] + sum(map(len, plan.values())),
                           **measure(model, data, cfg), accuracy_before_finetune=before, finetune_s_per_epoch=epoch_s,
                           score_s=score_s))
        per_layer += [dict(level=level, criterion=cfg.criterion, layer=n, kind=layers[n].kind, filters=layers[n].n_filters,
                           removed_now=len(plan.get(n, [])), wanted_now=wanted[n], empty_rank=ranks[n])
                     for n in names]
        bar.update()
    bar.close()
    for row in levels:
        row["flops_fraction"] = row["flops"] / flops0
    return levels, per_layer


def prune_to_share(model: nn.Module, example: Tensor, share: float, criterion: str = "weight_norm",
                   batches=None, min_filters: int = 1, linear: bool = False) -> nn.Module:
    """A copy of ``model`` with ``share`` of every prunable group's filters removed in one step.

    Every group loses the same share (`removal.plan_by_share`), its lowest-``criterion`` filters, so a
    level has one shape whatever the criterion: what a timing across architectures needs.

    Args:
        example: one input batch ``(N, C, H, W)`` for the dependency graph.
        batches: the criterion's ``(x, y)`` batches (``weight_norm``, the default, uses none).

    >>> from prunelab.models.cnn import alexnet_small
    >>> small = prune_to_share(alexnet_small(image_size=16, widths=(8, 8, 8, 8, 8)), torch.zeros(1, 1, 16, 16), 0.5)
    >>> small.conv1.out_channels
    4
    """
    model = copy.deepcopy(model).eval()
    layers = filter_layers(model, example, linear=linear)
    names = rankable(layers)
    scores = get_filter_criterion(criterion)(model, names, batches=batches or [(example, None)], layers=layers)
    remove_filters_(model, plan_by_share(scores, share, min_filters), example, min_filters, linear)
    return model


def _reached(last: dict, flops0: int, layers, names, cfg: PruneConfig) -> bool:
    remaining = sum(layers[n].n_filters for n in names)
    if remaining <= cfg.min_filters * len(names):
        return True
    if cfg.target_filters is not None and remaining <= cfg.target_filters:
        return True
    return cfg.target_flops is not None and last["flops"] <= cfg.target_flops * flops0
