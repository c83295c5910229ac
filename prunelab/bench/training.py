"""Row 2: cost of a masked training step on the NMT model, relative to the dense step.

Three copies of one Luong/See et al. seq2seq (input feeding) train on the same synthetic
batch with SGD: dense; prunelab (``masked_step_``: step, then re-mask in place); and
``torch.nn.utils.prune`` (``global_unstructured`` forward pre-hooks recomputing
``weight = weight_orig * weight_mask`` every forward, LSTM flat weights included).  Steps are
interleaved round-robin and the median per method is reported.
"""
from __future__ import annotations

import copy
import warnings

import torch
from torch.nn.utils import prune

from prunelab import masks
from prunelab.bench.common import BenchConfig, entry, median, paired_ratio, time_calls
from prunelab.criteria import magnitude, prunable
from prunelab.data.text import Batch
from prunelab.models.seq2seq import Seq2Seq, Seq2SeqConfig
from prunelab.nmt.train import batch_loss


def sizes(cfg: BenchConfig) -> dict:
    """Model and batch: See et al.'s 4 x 1000 / 50k on CUDA; smaller on the CPU."""
    if cfg.cuda:
        return dict(vocab=50_000, layers=4, hidden=1000, batch=64, length=30, repeats=10)
    if cfg.quick:
        return dict(vocab=5_000, layers=2, hidden=256, batch=32, length=15, repeats=7)
    return dict(vocab=20_000, layers=2, hidden=500, batch=64, length=20, repeats=5)


def synthetic_batch(vocab: int, batch: int, length: int, device: str) -> Batch:
    g = torch.Generator().manual_seed(0)
    tok = lambda: torch.randint(4, vocab, (batch, length), generator=g)  # noqa: E731
    return Batch(tok(), torch.full((batch,), length), tok(), tok(), torch.arange(batch)).to(device)


def _step_fn(model, opt, batch, pairs=None):
    def step():
        opt.zero_grad(set_to_none=True)
        batch_loss(model, batch).backward()
        if pairs is None:
            opt.step()
        else:
            masks.masked_step_(opt, pairs)
    return step


def _torch_pruned(model, names, sparsity):
    modules = dict(model.named_modules())
    pairs = [(modules[n.rpartition(".")[0]], n.rpartition(".")[2]) for n in names]
    prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=sparsity)
    return model


def rows(cfg: BenchConfig, sparsity: float = 0.8) -> list[dict]:
    """Per-step seconds of the three copies; ratios to the dense step."""
    s = sizes(cfg)
    torch.manual_seed(0)
    config = Seq2SeqConfig(s["vocab"], s["vocab"], layers=s["layers"], emb_size=s["hidden"], hidden=s["hidden"], dropout=0.0)
    dense = Seq2Seq(config).to(cfg.device)
    names = prunable(dense)
    found = masks.masks_from_scores(magnitude(dense, names), sparsity)
    ours, theirs = copy.deepcopy(dense), copy.deepcopy(dense)
    pairs = masks.bind_masks(ours, found)
    masks.apply_masks_(pairs)
    _torch_pruned(theirs, names, sparsity)
    batch = synthetic_batch(s["vocab"], s["batch"], s["length"], cfg.device)
    opt = {k: torch.optim.SGD(m.parameters(), lr=0.1) for k, m in dict(dense=dense, ours=ours, theirs=theirs).items()}
    fns = dict(dense=_step_fn(dense, opt["dense"], batch), prunelab=_step_fn(ours, opt["ours"], batch, pairs),
               torch=_step_fn(theirs, opt["theirs"], batch))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t = time_calls(fns, cfg.device, repeats=s["repeats"], warmup=1)
    remask = time_calls(dict(remask=lambda: masks.apply_masks_(pairs)), cfg.device, repeats=s["repeats"])["remask"]
    held = all(bool((p[~m] == 0).all()) for p, m in pairs)
    messages = sorted({str(w.message).split("\n")[0][:90] for w in caught})
    n_weights = sum(p.numel() for p, _ in pairs)
    case = (f"seq2seq {s['layers']}x{s['hidden']}, {s['vocab'] // 1000}k vocab ({n_weights / 1e6:.0f}M weights), "
            f"batch {s['batch']}x{s['length']}, s={sparsity}")
    ours, theirs = paired_ratio(t, "prunelab", "dense"), paired_ratio(t, "torch", "dense")
    dense_s = median(t["dense"])
    part = 1.0 + median(remask) / dense_s
    note = (f"dense step {dense_s:.3g}s; re-masking alone {median(remask) * 1e3:.3g} ms = {part:.4f}x; pruned weights "
            f"stay zero: {held}; torch.prune on LSTM flat weights: " + ("; ".join(messages) if messages else "runs, no warning"))
    return [entry("2 masked step", case, "step time / dense step (paired median)", ours, "torch.prune forward pre-hooks",
                  theirs, theirs / ours, "<= 1.02", ours <= 1.02, note)]
