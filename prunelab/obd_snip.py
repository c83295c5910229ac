"""OBD and SNIP against magnitude pruning on the NMT model: the pieces notebooks 20 and 21 share.

Scores of the trained baseline (magnitude, random, OBD) and of a fresh model at
initialisation (SNIP), all over See et al.'s weight classes (biases never pruned); masks from
any scheme of `prunelab.masks`; SNIP's prune-at-init-then-train run; per-class pruning tables.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import Any

import pandas as pd
import torch
from torch import nn

from prunelab import nmt
from prunelab.criteria import magnitude, random_scores
from prunelab.criteria.second_order import Saliency, obd_saliency
from prunelab.masks import Masks, masks_from_scores
from prunelab.nmt.evaluate import sentence_nll
from prunelab.sparse_init import prune_at_init_

METHODS = ("magnitude", "random", "obd", "snip")
AT_INIT = ("snip",)  # methods that prune before training
OUTPUTS = ("hyps", "nll", "tokens")  # what `evaluate(..., outputs=True)` adds to a point's scores


def check_methods(methods) -> list[str]:
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method {bad[0]!r}; choose from {', '.join(METHODS)}")
    return list(methods)


def class_names(classes: dict[str, list[str]]) -> list[str]:
    return [n for names in classes.values() for n in names]


def saliency_batches(corpus, batch_size: int, n_batches: int, seed: int = 0) -> list:
    """The first ``n_batches`` training batches of ``batch_size`` pairs in a shuffled epoch.

    >>> len(saliency_batches(corpus, 64, 2))  # doctest: +SKIP
    2
    """
    if n_batches < 1 or batch_size < 1:
        raise ValueError(f"n_batches={n_batches}, batch_size={batch_size}: both must be >= 1")
    gen = torch.Generator().manual_seed(seed)
    return list(itertools.islice(corpus["train"].batches(batch_size, gen), n_batches))


def _data_free(method: str, scores: dict[str, torch.Tensor], start: float) -> Saliency:
    device = str(next(iter(scores.values())).device)
    return Saliency(scores=scores, method=method, estimator="", examples=0, batches=0, probes=0, per_example="",
                    device=device, seconds=time.perf_counter() - start)


def score_trained(method: str, model: nn.Module, classes: dict[str, list[str]], *, batches: list | None = None,
                  estimator: str = "fisher", probes: int = 8, seed: int = 0) -> Saliency:
    """Saliency of a trained model by ``magnitude``, ``random`` or ``obd`` (SNIP scores at init).

    Args:
        method: one of ``magnitude``, ``random``, ``obd``.
        model: the trained `Seq2Seq`.
        classes: the weight classes (scored parameters).
        batches: training batches for OBD (NMT `Batch` objects).
        estimator, probes: OBD's Hessian estimator and Hutchinson probes per batch.
        seed: seeds random scores and Hutchinson's probes.

    >>> s = score_trained("obd", model, nmt.weight_classes(model), batches=b)  # doctest: +SKIP
    """
    names, start = class_names(classes), time.perf_counter()
    if method == "magnitude":
        return _data_free(method, magnitude(model, names), start)
    if method == "random":
        return _data_free(method, random_scores(model, names, generator=torch.Generator().manual_seed(seed)), start)
    if method == "obd":
        device = next(model.parameters()).device
        gen = torch.Generator(device=device).manual_seed(seed)
        return obd_saliency(model, names, loss_fn=nmt.batch_loss, batches=batches or [], estimator=estimator,
                            probes=probes, generator=gen, example_weights=nmt.target_tokens)
    raise ValueError(f"score_trained takes magnitude, random or obd, not {method!r} (snip scores at initialisation)")


def masks_for(saliency: Saliency, sparsity: float, classes: dict[str, list[str]], scheme: str = "class-blind",
              seed: int = 0, model: nn.Module | None = None) -> Masks:
    """Masks from a saliency's scores (computed on the CPU so every device gives the same masks).

    ``model`` (the scored one) gives class-distribution its sigma_c; other schemes ignore it.
    """
    scores = {n: s.detach().cpu() for n, s in saliency.scores.items()}
    weights = {n: p.detach().cpu() for n, p in model.named_parameters() if n in scores} if model is not None else None
    masks = masks_from_scores(scores, sparsity, scheme, classes, generator=torch.Generator().manual_seed(seed),
                              weights=weights)
    device = next(iter(saliency.scores.values())).device
    return {n: m.to(device) for n, m in masks.items()}


def snip_run(params: Any, corpus, *, sparsity: float, init: str, seed: int, batches: list,
             train_config: nmt.TrainConfig, scheme: str = "class-blind", progress: bool = False):
    """SNIP: initialise with ``init`` (seeded), score |g*w| on ``batches``, prune, train with the mask fixed.

    Returns:
        (trained model, masks, `Saliency` of the scoring, training history).

    >>> model, masks, sal, hist = snip_run(P, corpus, sparsity=0.9, init="uniform", seed=0,
    ...                                    batches=b, train_config=cfg)  # doctest: +SKIP
    """
    model = nmt.build_model(params, corpus, init=init, seed=seed)
    classes = nmt.weight_classes(model)
    masks, saliency = prune_at_init_(model, sparsity, loss_fn=nmt.batch_loss, batches=batches,
                                     names=class_names(classes), scheme=scheme, classes=classes)
    history = nmt.train_(model, corpus, train_config, masks=masks, progress=progress)
    return model, masks, saliency, history


def evaluate(model: nn.Module, corpus, beam: int, alpha: float = 1.0, split: str = "test",
             outputs: bool = False) -> dict[str, Any]:
    """Test BLEU (sacrebleu, beam search) and perplexity of ``model``; with ``outputs`` also its
    hypotheses and per-sentence NLL and token counts (``hyps``, ``nll``, ``tokens``), which the
    paired tests of `prunelab.nmt.evaluate.paired_test` need."""
    result = nmt.bleu(model, corpus, split, beam=beam, alpha=alpha)
    nll, tokens = sentence_nll(model, corpus[split])
    out = dict(bleu=result.score, ppl=math.exp(sum(nll) / sum(tokens)))
    return {**out, "hyps": result.hypotheses, "nll": nll, "tokens": tokens} if outputs else out


def class_pruning(masks: Masks, classes: dict[str, list[str]]) -> pd.DataFrame:
    """One row per weight class: numel, pruned and the percentage pruned.

    >>> class_pruning({"w": torch.tensor([True, False])}, {"c": ["w"]}).pruned_pct.tolist()
    [50.0]
    """
    rows = []
    for cls, names in classes.items():
        numel = sum(masks[n].numel() for n in names)
        pruned = sum(int((~masks[n]).sum()) for n in names)
        rows.append(dict(weight_class=cls, numel=numel, pruned=pruned, pruned_pct=100.0 * pruned / numel))
    return pd.DataFrame(rows)


def mask_overlap(a: Masks, b: Masks) -> float:
    """Jaccard overlap of the kept weights of two masks over the same parameters."""
    inter = sum(int((a[n] & b[n]).sum()) for n in a)
    union = sum(int((a[n] | b[n]).sum()) for n in a)
    return inter / union if union else 1.0
