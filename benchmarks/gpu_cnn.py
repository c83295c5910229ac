"""Latency of the original vs filter-pruned AlexNet (25/50/75% of each conv's filters removed).

Randomly initialised torchvision AlexNet (nothing is downloaded); filters removed by weight norm
with prunelab.removal (Torch-Pruning). On CUDA: fp32 and bf16 + channels_last at batch 256.
Runs on the CPU too (use a small --batch and --size). Prints one table row per setting.
"""
from __future__ import annotations

import argparse
import copy
import time

import torch
import torchvision

from prunelab import metrics, removal


def prune(model, share, example):
    layers = removal.filter_layers(model, example)
    plan = {n: sorted(torch.argsort(model.get_submodule(n).weight.detach().flatten(1).norm(dim=1))[:int(share * l.n_filters)].tolist())
            for n, l in layers.items() if int(share * l.n_filters)}
    return removal.remove_filters_(copy.deepcopy(model), plan, example).eval()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    torch.manual_seed(0)
    device = torch.device(args.device)
    base = torchvision.models.alexnet(weights=None, num_classes=1000).eval()
    example = torch.zeros(1, 3, args.size, args.size)
    flops0 = metrics.flops(base, example)
    modes = [("fp32", torch.float32, torch.contiguous_format)]
    if device.type == "cuda":
        modes.append(("bf16+channels_last", torch.bfloat16, torch.channels_last))
    print(f"device {torch.cuda.get_device_name(0) if device.type == 'cuda' else 'cpu'}; batch {args.batch}; "
          f"input {args.size}x{args.size}; median of {args.repeats}")
    print(f"{'pruned':>7} {'mode':>20} {'params':>10} {'GFLOPs/img':>10} {'latency_ms':>10} {'speedup':>8} {'flop_red':>8} {'ratio':>6}")
    base_lat = {}
    for share in (0.0, 0.25, 0.5, 0.75):
        model = prune(base, share, example) if share else base
        flops = metrics.flops(model, example)
        for mode, dtype, fmt in modes:
            m = copy.deepcopy(model).to(device=device, dtype=dtype, memory_format=fmt)
            x = torch.randn(args.batch, 3, args.size, args.size, device=device, dtype=dtype).to(memory_format=fmt)
            if not share:  # throwaway: the first timed passes (kernel selection, allocator) run slow
                metrics.latency(m, x, warmup=5, repeats=3)
            lat = metrics.latency(m, x, warmup=5, repeats=args.repeats)
            base_lat.setdefault(mode, lat)
            speedup, red = base_lat[mode] / lat, flops0 / flops
            print(f"{share:>7.0%} {mode:>20} {metrics.count_params(model):>10d} {flops / 1e9:>10.3f} {lat * 1e3:>10.2f} "
                  f"{speedup:>8.2f} {red:>8.2f} {speedup / red:>6.2f}", flush=True)
            del m, x


if __name__ == "__main__":
    t = time.time()
    main()
    print(f"total {time.time() - t:.1f} s")
