"""Row 4: measured latency speedup against FLOP reduction after removing filters.

The same fraction of every conv's filters is removed (kept = floor(C * (1 - f)), Torch-Pruning's
count): by prunelab (weight-norm plan -> `prunelab.removal.remove_filters_`, optionally with
kept counts rounded to a multiple of ``round_to``) and by Torch-Pruning directly
(``MetaPruner`` with L2 ``MagnitudeImportance``, linear layers left whole). Each is measured twice:
"feature maps only" (the paper's setting) and "+ hidden units" (``+fc``: the same fraction of every
hidden linear layer's units removed too; the output layer never).  Latency is the
median forward time, all variants interleaved round-robin in one process; each speedup is
against the dense model in the same precision and memory format.
"""
from __future__ import annotations

import copy
import time
import warnings
from collections import defaultdict

import torch
import torch_pruning as tp
from torch import nn

from prunelab.bench.common import BenchConfig, entry, median, sync, time_calls
from prunelab.criteria.filters import weight_norm
from prunelab.metrics import flops
from prunelab.models.cnn import alexnet_small
from prunelab.removal import filter_layers, independent, remove_filters_

FRACTIONS = (0.25, 0.5, 0.75)
_HIDDEN = {"": "", " +fc": " + hidden units"}  # variant suffix -> words in the table


def kept_filters(n: int, fraction: float, round_to: int = 1) -> int:
    """Filters kept out of ``n`` when ``fraction`` is removed, rounded to a multiple of ``round_to``.

    >>> kept_filters(96, 0.5), kept_filters(96, 0.75, round_to=8)
    (48, 24)
    """
    kept = int(n * (1 - fraction))
    if round_to > 1:
        kept = max(round_to, round(kept / round_to) * round_to)
    return max(1, min(n, kept))


def prunelab_pruned(model: nn.Module, example: torch.Tensor, fraction: float, round_to: int = 1,
                    linear: bool = False) -> nn.Module:
    """A copy of ``model`` with the lowest-norm filters of every conv (with ``linear``, and units of
    every hidden linear layer) removed by prunelab."""
    model = copy.deepcopy(model)
    layers = filter_layers(model, example, linear=linear)
    names = independent(layers)
    scores = weight_norm(model, names, batches=[(example, None)], layers=layers)
    plan = {n: scores[n].argsort()[: layers[n].n_filters - kept_filters(layers[n].n_filters, fraction, round_to)].tolist()
            for n in names}
    return remove_filters_(model, {n: idx for n, idx in plan.items() if idx}, example, linear=linear)


def tp_pruned(model: nn.Module, example: torch.Tensor, fraction: float, linear: bool = False) -> nn.Module:
    """A copy of ``model`` pruned by Torch-Pruning's MetaPruner (L2 magnitude; convs only, or with
    ``linear`` the hidden linear layers too: every linear layer but the last is pruned)."""
    model = copy.deepcopy(model).eval()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    linears = linears[-1:] if linear else linears
    pruner = tp.pruner.MetaPruner(model, example[:1], importance=tp.importance.MagnitudeImportance(p=2),
                                  pruning_ratio=fraction, ignored_layers=linears)
    pruner.step()
    return model


def _kind(module: nn.Module) -> str:
    return "conv" if isinstance(module, nn.Conv2d) else "linear" if isinstance(module, nn.Linear) else "other"


@torch.inference_mode()
def layer_profile(model: nn.Module, x: torch.Tensor, repeats: int = 5) -> dict[str, tuple[float, int]]:
    """Where a forward pass spends its time: kind -> (seconds, FLOPs) summed over leaf modules.

    Kinds are ``conv``, ``linear`` and ``other`` (pooling, activations, dropout, ...).  Each leaf
    is timed by hooks around its own forward (synchronised on CUDA), fastest of ``repeats``
    passes; FLOPs come from ``torch.utils.flop_counter`` on the same input.

    >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8, 1))
    >>> prof = layer_profile(net, torch.zeros(1, 1, 4, 4), repeats=1)
    >>> sorted(prof), prof["conv"][1], prof["linear"][1], prof["other"][1]
    (['conv', 'linear', 'other'], 144, 16, 0)
    """
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    leaves = {name: m for name, m in model.named_modules() if name and not list(m.children())}
    best: dict[str, float] = {}
    start: dict[str, float] = {}

    def before(name):
        def hook(_module, _args):
            sync(x.device)
            start[name] = time.perf_counter()
        return hook

    def after(name):
        def hook(_module, _args, _out):
            sync(x.device)
            seconds = time.perf_counter() - start[name]
            best[name] = min(best.get(name, seconds), seconds)
        return hook

    handles = [h for name, m in leaves.items() for h in (m.register_forward_pre_hook(before(name)),
                                                            m.register_forward_hook(after(name)))]
    try:
        for _ in range(repeats + 1):  # the first pass warms up and is timed like the rest
            model(x)
    finally:
        for h in handles:
            h.remove()
    with FlopCounterMode(display=False) as counter:
        model(x)
    counts = {key.partition(".")[2]: sum(ops.values()) for key, ops in counter.get_flop_counts().items()}
    out: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for name, m in leaves.items():
        out[_kind(m)][0] += best.get(name, 0.0)
        out[_kind(m)][1] += int(counts.get(name, 0))
    return {kind: (seconds, count) for kind, (seconds, count) in out.items()}


def _convs(model: nn.Module) -> list[int]:
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def _units(model: nn.Module) -> list[int]:
    return [m.out_features for m in model.modules() if isinstance(m, nn.Linear)]


def _models(cfg: BenchConfig) -> dict:
    torch.manual_seed(0)
    from torchvision.models import alexnet

    out = {"alexnet_small 1x32x32": (alexnet_small().eval(), (1, 32, 32))}
    out["torchvision alexnet 3x224x224"] = (alexnet(weights=None).eval(), (3, 224, 224))
    return out


def _variants(model, example, cfg: BenchConfig) -> dict[str, tuple[nn.Module, str]]:
    """name -> (model, mode): ``fp32`` eager, ``frozen`` (CPU: TorchScript trace, freeze,
    ``optimize_for_inference``, i.e. oneDNN conv+ReLU fusion), ``cl`` (CPU: eager, channels_last)
    or ``bf16-cl`` (CUDA: bf16 weights, channels_last)."""
    out = {"dense": (model, "fp32")}
    for f in FRACTIONS:
        for fc in ("", " +fc"):
            out[f"prunelab {f}{fc}"] = (prunelab_pruned(model, example, f, linear=bool(fc)), "fp32")
            out[f"tp {f}{fc}"] = (tp_pruned(model, example, f, linear=bool(fc)), "fp32")
        if cfg.cuda:
            out[f"prunelab-r8 {f}"] = (prunelab_pruned(model, example, f, round_to=8), "fp32")
    if cfg.cuda:
        out.update({f"{n} bf16-cl": (m, "bf16-cl") for n, (m, _) in list(out.items())})
    else:  # Torch-Pruning's copies have prunelab's shapes: frozen or channels_last, they would time the same
        for mode in ("frozen", "cl"):
            out.update({f"{n} {mode}": (m, mode) for n, (m, m_mode) in list(out.items())
                        if m_mode == "fp32" and not n.startswith("tp")})
    return out


def _prepared(model: nn.Module, mode: str, x: torch.Tensor) -> nn.Module:
    model = copy.deepcopy(model).to(x.device).eval()
    if mode == "bf16-cl":
        model = model.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
    if mode == "cl":
        model = model.to(memory_format=torch.channels_last)
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
        if mode == "cl":
            x = x.contiguous(memory_format=torch.channels_last)
        fns[name] = _forward(_prepared(model, mode, x), x)
    return {name: median(ts) for name, ts in time_calls(fns, cfg.device, repeats=repeats, warmup=2).items()}


def _breakdown(case: str, variants, shape, batch, cfg, repeats) -> list[dict]:
    """Per fraction: the conv layers' own speedup against their own FLOP cut, and each layer
    kind's share of the pruned model's time (eager fp32), from `layer_profile`."""
    x = torch.rand(batch, *shape, device=cfg.device)
    prof = {name: layer_profile(copy.deepcopy(variants[name][0]).to(cfg.device), x, repeats)
            for name in ["dense", *(f"prunelab {f}{fc}" for f in FRACTIONS for fc in ("", " +fc"))]}
    dense, out = prof["dense"], []
    for f, fc in ((f, fc) for f in FRACTIONS for fc in ("", " +fc")):
        pruned = prof[f"prunelab {f}{fc}"]
        total = sum(t for t, _ in pruned.values())
        speed = {k: dense[k][0] / pruned[k][0] for k in pruned if pruned[k][0] > 0}
        cut = {k: dense[k][1] / pruned[k][1] for k in pruned if pruned[k][1] > 0}
        share = ", ".join(f"{k} {pruned[k][0] / total:.0%} of the time ({speed[k]:.2f}x faster"
                          + (f" for {cut[k]:.2f}x fewer FLOPs)" if k in cut else ")") for k in ("conv", "linear", "other")
                          if k in pruned and k in speed)
        out.append(entry("4 structured", f"{case}, {f:.0%} filters{_HIDDEN[fc]}, per layer kind", "conv layers' speedup", speed["conv"],
                         "", None, speed["conv"] / cut["conv"], "", None, f"ratio = speedup / conv FLOP cut; pruned model: {share}"))
    return out


def _entries(case, lat, flop, fractions, cfg) -> list[dict]:
    """Per fraction, feature maps only then feature maps + hidden units: eager fp32 (against
    Torch-Pruning pruning the same layers), on the CPU TorchScript-frozen and channels_last too."""
    out = []
    for f, fc in ((f, fc) for f in fractions for fc in ("", " +fc")):
        ours_name, label = f"prunelab {f}{fc}", f"{case}, {f:.0%} filters{_HIDDEN[fc]}"
        cut = flop["dense"] / flop[ours_name]
        ours, theirs = lat["dense"] / lat[ours_name], lat["dense"] / lat[f"tp {f}{fc}"]
        note = (f"FLOPs cut {cut:.2f}x (Torch-Pruning {flop['dense'] / flop[f'tp {f}{fc}']:.2f}x); same channel counts: "
                f"{flop[f'tp {f}{fc}'] == flop[ours_name]}")
        out.append(entry("4 structured", f"{label}, fp32", "latency speedup", ours, "Torch-Pruning MetaPruner",
                         theirs, ours / cut, ">= 0.8x FLOP cut" if not cfg.cuda else "", ours / cut >= 0.8 if not cfg.cuda else None, note))
        if not cfg.cuda:
            for mode, words in (("frozen", "TorchScript-frozen"), ("cl", "channels_last")):
                sped = lat[f"dense {mode}"] / lat[f"{ours_name} {mode}"]
                out.append(entry("4 structured", f"{label}, fp32 {words}", f"latency speedup (vs dense {words})", sped,
                                 "Torch-Pruning MetaPruner (eager)", theirs, sped / cut, ">= 0.8x FLOP cut", sped / cut >= 0.8,
                                 f"vs dense eager: {lat['dense'] / lat[f'{ours_name} {mode}']:.2f}x; FLOPs cut {cut:.2f}x"))
        if cfg.cuda and not fc:
            r8 = lat["dense bf16-cl"] / lat[f"prunelab-r8 {f} bf16-cl"]
            tp_cl = lat["dense bf16-cl"] / lat[f"tp {f} bf16-cl"]
            out.append(entry("4 structured", f"{label}, bf16+channels_last", "latency speedup (round_to=8)",
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
            # A batch-1 pass takes milliseconds: six times the rounds cost seconds and keep one
            # stalled round on a shared machine from moving the median.
            lat = _latencies(variants, shape, batch, cfg, repeats if batch > 1 else 6 * repeats)
            out += _entries(f"{label}, batch {batch}", lat, flop, FRACTIONS, cfg)
            if not cfg.cuda:
                out += _breakdown(f"{label}, batch {batch}", variants, shape, batch, cfg, repeats)
    return out


__all__ = ["FRACTIONS", "kept_filters", "layer_profile", "prunelab_pruned", "rows", "tp_pruned"]
