"""Row 1: global class-blind magnitude masking of See et al.-sized NMT models.

prunelab (``magnitude`` -> ``masks_from_scores(..., "class-blind")`` -> ``apply_masks_``) vs
``torch.nn.utils.prune.global_unstructured(L1Unstructured)``, which also masks the model
(``weight_orig`` * ``weight_mask``).  Each method runs in a fresh process on an identically
seeded model, so that its peak memory is its own; time is the median of a few calls there.

    python -m prunelab.bench.masking METHOD SIZE SPARSITY DEVICE REPEATS   # one measurement
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time

import numpy as np
import torch
from torch.nn.utils import prune

from prunelab import masks
from prunelab.bench.common import BenchConfig, PeakMemory, entry, run_module, sync
from prunelab.criteria import magnitude, prunable
from prunelab.models.seq2seq import Seq2Seq, Seq2SeqConfig

# name -> (vocabulary, layers, hidden); "see2016" is See et al.'s 4 x 1000, 50k vocabularies.
SIZES = {"tiny": (200, 1, 16), "nmt-10M": (10_000, 2, 256), "nmt-38M": (20_000, 2, 500), "see2016": (50_000, 4, 1000)}
METHODS = ("prunelab", "prunelab-masks", "torch.prune")


def nmt_model(size: str, device: str) -> Seq2Seq:
    vocab, layers, hidden = SIZES[size]
    torch.manual_seed(0)
    config = Seq2SeqConfig(vocab, vocab, layers=layers, emb_size=hidden, hidden=hidden, dropout=0.0, input_feed=False)
    return Seq2Seq(config).to(device)


def _digest(mask_list: list[torch.Tensor]) -> str:
    h = hashlib.sha1()
    for m in mask_list:
        h.update(m.cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _prunelab(model, names, sparsity):
    found = masks.masks_from_scores(magnitude(model, names), sparsity, "class-blind")
    masks.apply_masks_(model, found)
    return [found[n] for n in names]


def _prunelab_masks_only(scores, sparsity, names):
    found = masks.masks_from_scores(scores, sparsity, "class-blind")
    return [found[n] for n in names]


def _torch(model, names, sparsity):
    modules = dict(model.named_modules())
    pairs = [(modules[n.rpartition(".")[0]], n.rpartition(".")[2]) for n in names]
    prune.global_unstructured(pairs, pruning_method=prune.L1Unstructured, amount=sparsity)
    return [getattr(m, a + "_mask") for m, a in pairs]


def _undo_torch(model, names):
    modules = dict(model.named_modules())
    for n in names:
        prune.remove(modules[n.rpartition(".")[0]], n.rpartition(".")[2])


def _once(method: str, model, names: list[str], scores, sparsity: float, device: str) -> tuple[list, float, int]:
    """One masking call: (bool masks in ``names`` order, seconds, extra peak bytes)."""
    with PeakMemory(device) as peak:
        sync(device)
        start = time.perf_counter()
        if method == "prunelab":
            found = _prunelab(model, names, sparsity)
        elif method == "prunelab-masks":
            found = _prunelab_masks_only(scores, sparsity, names)
        else:
            found = _torch(model, names, sparsity)
        sync(device)
        seconds = time.perf_counter() - start
    return [m.bool() for m in found], seconds, peak.extra


@torch.no_grad()
def _restore_(model, names: list[str], original: dict, method: str) -> None:
    if method == "torch.prune":
        _undo_torch(model, names)
    current = dict(model.named_parameters())
    for n in names:
        current[n].copy_(original[n])


def measure(method: str, size: str, sparsity: float, device: str, repeats: int, save: str = "") -> dict:
    """Seconds (median over ``repeats``), extra peak bytes (first call) and a digest of the masks.

    A first call on a tiny model pages in the code, so the memory measured is the data's.
    With ``save`` the masks are written there, bit-packed (``.npy``), for comparison.
    """
    if size != "tiny":
        measure(method, "tiny", sparsity, device, 1)
    model = nmt_model(size, device)
    names = prunable(model)
    original = {n: p.detach().clone() for n, p in model.named_parameters() if n in names} if repeats > 1 else {}
    scores = magnitude(model, names) if method == "prunelab-masks" else None
    times, extras = [], []
    for i in range(repeats):
        if i:
            _restore_(model, names, original, method)
        found, seconds, extra = _once(method, model, names, scores, sparsity, device)
        times.append(seconds)
        extras.append(extra)
    weights = sum(m.numel() for m in found)
    if save:
        np.save(save, np.packbits(torch.cat([m.flatten().cpu() for m in found]).numpy()))
    return dict(method=method, size=size, seconds=sorted(times)[len(times) // 2], extra_bytes=extras[0],
                weight_bytes=weights * 4, weights=weights, pruned=int(sum(int((~m).sum()) for m in found)),
                digest=_digest(found), ties=_threshold_ties(scores, found) if scores is not None else None)


def _threshold_ties(scores: dict, found: list[torch.Tensor]) -> int:
    """How many scores equal the highest pruned score (where tie-breaks can differ)."""
    t = max(float(s[~m].max()) for s, m in zip(scores.values(), found) if (~m).any())
    return int(sum(int((s == t).sum()) for s in scores.values()))


def _differing(a: str, b: str) -> int:
    return int(np.unpackbits(np.load(a) ^ np.load(b)).sum())


def rows(cfg: BenchConfig, sparsity: float = 0.8) -> list[dict]:
    """Speed and extra peak memory of masking, per model size."""
    sizes = ["nmt-10M", "nmt-38M"] if cfg.quick else (["nmt-38M", "see2016"] if cfg.cuda else ["nmt-10M", "nmt-38M", "see2016"])
    out = []
    for size in sizes:
        repeats = "1" if size == "see2016" else "3"
        with tempfile.TemporaryDirectory(prefix="prunelab-bench-masks-") as tmp:
            got = {m: run_module("prunelab.bench.masking", [m, size, str(sparsity), cfg.device, repeats, f"{tmp}/{m}.npy"])
                   for m in METHODS}
            differ = _differing(f"{tmp}/prunelab-masks.npy", f"{tmp}/torch.prune.npy")
        out += _size_entries(got, size, sparsity, differ)
    return out


def _size_entries(got: dict, size: str, sparsity: float, differ: int) -> list[dict]:
    ours, full, peer = got["prunelab-masks"], got["prunelab"], got["torch.prune"]
    case = f"{size} ({ours['weights'] / 1e6:.0f}M weights) s={sparsity}"
    same = "identical masks" if differ == 0 else (
        f"masks differ at {differ} positions; {ours['ties']} scores tie at the threshold (torch.topk breaks ties arbitrarily)")
    speed = peer["seconds"] / full["seconds"]
    copies = ours["extra_bytes"] / ours["weight_bytes"]
    return [entry("1 masking", case, "seconds (score+mask+apply)", full["seconds"], "torch.prune.global_unstructured",
                  peer["seconds"], speed, ">= 5x faster", speed >= 5, f"masks_from_scores alone {ours['seconds']:.3g} s; {same}"),
            entry("1 masking", case, "extra peak memory (weight copies), scores given", copies,
                  "torch.prune.global_unstructured", peer["extra_bytes"] / peer["weight_bytes"], None, "<= 1 copy",
                  copies <= 1.0, f"prunelab incl. magnitude scores: {full['extra_bytes'] / full['weight_bytes']:.2f} copies")]


if __name__ == "__main__":
    method, size, sparsity, device, repeats, save = (sys.argv[1:] + [""])[:6]
    if method not in METHODS or size not in SIZES:
        raise SystemExit(f"usage: METHOD in {METHODS}, SIZE in {list(SIZES)}")
    print(json.dumps(measure(method, size, float(sparsity), device, int(repeats), save)))
