"""Shared pieces of the benchmark rows: configuration, timers, peak memory, table rows."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

COLUMNS = ["row", "case", "metric", "prunelab", "peer", "peer_value", "ratio", "goal", "met", "note"]


@dataclass(frozen=True)
class BenchConfig:
    """What to measure: ``quick`` picks the small sizes; ``device`` is ``cpu`` or ``cuda``."""

    quick: bool = False
    device: str = "cpu"

    def __post_init__(self):
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device={self.device!r}; choose cpu or cuda")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but torch sees no CUDA device")

    @property
    def cuda(self) -> bool:
        return self.device == "cuda"


def entry(row: str, case: str, metric: str, prunelab: float | None, peer: str = "", peer_value: float | None = None,
          ratio: float | None = None, goal: str = "", met: bool | None = None, note: str = "") -> dict:
    """One line of the benchmark table (see `COLUMNS`)."""
    return dict(row=row, case=case, metric=metric, prunelab=prunelab, peer=peer, peer_value=peer_value,
                ratio=ratio, goal=goal, met=met, note=note)


def sync(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_calls(fns: dict[str, Callable[[], object]], device: str, repeats: int = 5, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each call, ``repeats`` rounds interleaved round-robin so load drifts hit all alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - start)
    return times


def median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def paired_ratio(times: dict[str, list[float]], name: str, base: str) -> float:
    """Median over rounds of ``name``'s time / ``base``'s time in the same round."""
    return median([a / b for a, b in zip(times[name], times[base])])


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) of this process; False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def rss_bytes(field: str = "VmRSS") -> int:
    """Current (``VmRSS``) or peak since the last reset (``VmHWM``) resident memory, in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


class PeakMemory:
    """Extra peak memory of a block: RSS high-water mark on the CPU, allocator peak on CUDA."""

    def __init__(self, device: str):
        self.cuda = torch.device(device).type == "cuda"
        self.extra = 0

    def __enter__(self):
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            if not reset_peak_rss():
                raise RuntimeError("cannot reset the peak RSS (/proc/self/clear_refs); Linux only")
            self.base = rss_bytes()
        return self

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.extra = torch.cuda.max_memory_allocated() - self.base
        else:
            self.extra = rss_bytes("VmHWM") - self.base
        return False


def run_module(module: str, args: list[str], timeout: float = 1800) -> dict:
    """Run ``python -m module args`` in a fresh process; its last stdout line is a JSON result.

    Large allocations are forced to ``mmap`` so freed tensors leave the RSS at once and the
    high-water mark measures what was really held at the same time.  The child uses as many
    CPU threads as this process.
    """
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS=str(torch.get_num_threads()))
    done = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{module} {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def fmt(value) -> str:
    if value is None or value == "" or (isinstance(value, float) and value != value):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
