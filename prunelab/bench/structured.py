"""Row 4: measured latency speedup against FLOP reduction after removing filters.

The same fraction of every conv's filters is removed (kept = floor(C * (1 - f)), Torch-Pruning's
count): by prunelab (weight-norm plan -> `prunelab.removal.remove_filters_`, optionally with
kept counts rounded to a multiple of ``round_to``) and by Torch-Pruning directly
(``MetaPruner`` with L2 ``MagnitudeImportance``, linear layers left whole).  Latency is the
median forward time, all variants interleaved round-robin in one process; each speedup is
against the dense model in the same precision and memory format.
"""
from __future__ import annotations

import copy
import warnings

import torch
import torch_pruning as tp
from torch import nn

from prunelab.bench.common import BenchConfig, entry, median, time_calls
from prunelab.criteria.filters import weight_norm
from prunelab.metrics import flops
from prunelab.models.cnn import alexnet_small
from prunelab.removal import filter_layers, independent, remove_filters_

FRACTIONS = (0.25, 0.5, 0.75)


def kept_filters(n: int, fraction: float, round_to: int = 1) -> int:
    """Filters kept out of ``n`` when ``fraction`` is removed, rounded to a multiple of ``round_to``.

    >>> kept_filters(96, 0.5), kept_filters(96, 0.75, round_to=8)
    (48, 24)
    """
    kept = int(n * (1 - fraction))
    if round_to > 1:
        kept = max(round_to, round(kept / round_to) * round_to)
    return max(1, min(n, kept))


def prunelab_pruned(model: nn.Module, example: torch.Tensor, fraction: float, round_to: int = 1) -> nn.Module:
    """A copy of ``model`` with the lowest-norm filters of every conv removed by prunelab."""
    model = copy.deepcopy(model)
    layers = filter_layers(model, example)
    names = independent(layers)
    scores = weight_norm(model, names, batches=[(example, None)], layers=layers)
    plan = {n: scores[n].argsort()[: layers[n].n_filters - kept_filters(layers[n].n_filters, fraction, round_to)].tolist()
            for n in names}
    return remove_filters_(model, {n: idx for n, idx in plan.items() if idx}, example)


def tp_pruned(model: nn.Module, example: torch.Tensor, fraction: float) -> nn.Module:
    """A copy of ``model`` pruned by Torch-Pruning's MetaPruner (convs only, L2 magnitude)."""
    model = copy.deepcopy(model).eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    pruner = tp.pruner.MetaPruner(model, example[:1], importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=fraction, ignored_layers=linears)
    pruner.step()
    return model


def _convs(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def _models(cfg: BenchConfig) -> dict:
    torch.manual_seed(0)
    from torchvision.models import alexnet

    out = {"alexnet_small 1x32x32": (alexnet_small().eval(), (1, 32, 32))}
    out["torchvision alexnet 3x224x224"] = (alexnet(weights=None).eval(), (3, 224, 224))
    return out


def _variants(model, example, cfg: BenchConfig) -> dict[str, tuple[nn.Module, str]]:
    """name -> (model, mode): ``fp32`` eager, ``frozen`` (CPU: TorchScript trace, freeze,
    ``optimize_for_inference``, i.e. oneDNN conv+ReLU fusion) or ``bf16-cl`` (CUDA: bf16
    weights, channels_last)."""
    out = {"dense": (model, "fp32")}
    for f in FRACTIONS:
        out[f"prunelab {f}"] = (prunelab_pruned(model, example, f), "fp32")
        out[f"tp {f}"] = (tp_pruned(model, example, f), "fp32")
        if cfg.cuda:
            out[f"prunelab-r8 {f}"] = (prunelab_pruned(model, example, f, round_to=8), "fp32")
    if cfg.cuda:
        out.update({f"{n} bf16-cl": (m, "bf16-cl") for n, (m, _) in list(out.items())})
    else:  # Torch-Pruning's copies have prunelab's shapes: frozen, they would time the same
        out.update({f"{n} frozen": (m, "frozen") for n, (m, _) in list(out.items()) if not n.startswith("tp")})
    return out


def _prepared(model: nn.Module, mode: str, x: torch.Tensor) -> nn.Module:
    model = copy.deepcopy(model).to(x.device).eval()
    if mode == "bf16-cl":
        model = model.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    if mode == "frozen":
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(model, x)))
    return model


def _forward(model, x):
    def run():
        with torch.inference_mode():
            model(x)
    return run


def _latencies(variants, shape, batch, cfg, repeats) -> dict[str, float]:
    fns = {}
    for name, (model, mode) in variants.items():
        x = torch.rand(batch, *shape, device=cfg.device)
        if mode == "bf16-cl":
            x = x.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        fns[name] = _forward(_prepared(model, mode, x), x)
    return {name: median(ts) for name, ts in time_calls(fns, cfg.device, repeats=repeats, warmup=2).items()}


def _entries(case, lat, flop, fractions, cfg) -> list[dict]:
    out = []
    for f in fractions:
        cut = flop["dense"] / flop[f"prunelab {f}"]
        ours, theirs = lat["dense"] / lat[f"prunelab {f}"], lat["dense"] / lat[f"tp {f}"]
        note = f"FLOPs cut {cut:.2f}x (Torch-Pruning {flop['dense'] / flop[f'tp {f}']:.2f}x); same channel counts: {flop[f'tp {f}'] == flop[f'prunelab {f}']}"
        out.append(entry("4 structured", f"{case}, {f:.0%} filters, fp32", "latency speedup", ours, "Torch-Pruning MetaPruner",
                         theirs, ours / cut, ">= 0.8x FLOP cut" if not cfg.cuda else "", ours / cut >= 0.8 if not cfg.cuda else None, note))
        if not cfg.cuda:
            frozen = lat["dense frozen"] / lat[f"prunelab {f} frozen"]
            out.append(entry("4 structured", f"{case}, {f:.0%} filters, fp32 TorchScript-frozen",
                             "latency speedup (vs dense frozen)", frozen, "Torch-Pruning MetaPruner (eager)", theirs, frozen / cut,
                             ">= 0.8x FLOP cut", frozen / cut >= 0.8,
                             f"vs dense eager: {lat['dense'] / lat[f'prunelab {f} frozen']:.2f}x; FLOPs cut {cut:.2f}x"))
        if cfg.cuda:
            r8 = lat["dense bf16-cl"] / lat[f"prunelab-r8 {f} bf16-cl"]
            tp_cl = lat["dense bf16-cl"] / lat[f"tp {f} bf16-cl"]
            out.append(entry("4 structured", f"{case}, {f:.0%} filters, bf16+channels_last", "latency speedup (round_to=8)",
                             r8, "Torch-Pruning MetaPruner", tp_cl, r8 / tp_cl, "> Torch-Pruning", r8 > tp_cl,
                             f"vs dense fp32: prunelab-r8 bf16-cl {lat['dense'] / lat[f'prunelab-r8 {f} bf16-cl']:.2f}x, "
                             f"Torch-Pruning fp32 {lat['dense'] / lat[f'tp {f}']:.2f}x"))
    return out


def rows(cfg: BenchConfig) -> list[dict]:
    """Speedups per model, batch size and fraction; FLOPs counted at batch 1 in fp32 on the CPU."""
    batches = (1, 256) if cfg.cuda else (1, 32)
    repeats = 10 if cfg.cuda else (5 if cfg.quick else 9)
    out = []
    for label, (model, shape) in _models(cfg).items():
        example = torch.zeros(1, *shape)
        variants = _variants(model, example, cfg)
        flop = {n: flops(m, example) for n, (m, mode) in variants.items() if mode == "fp32"}
        for batch in batches:
            lat = _latencies(variants, shape, batch, cfg, repeats)
            out += _entries(f"{label}, batch {batch}", lat, flop, FRACTIONS, cfg)
    return out


__all__ = ["FRACTIONS", "kept_filters", "prunelab_pruned", "rows", "tp_pruned"]
