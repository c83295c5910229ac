"""Benchmarks of prunelab's hot paths side by side with torch.nn.utils.prune and Torch-Pruning.

Rows (``prunelab bench --rows 1,2``): 1 global masking (`masking`), 2 masked training step
(`training`), 3 saliency cost (`saliency`), 4 structured-pruning latency (`structured`),
5 suite wall time (`suite`).  Every row is a list of dicts with the columns `COLUMNS`; `run`
gathers them into one table, prints it and writes it as CSV with the machine beside it.
"""
from __future__ import annotations

import importlib
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from prunelab import results
from prunelab.bench.common import COLUMNS, BenchConfig, fmt

ROWS = {1: "masking", 2: "training", 3: "saliency", 4: "structured", 5: "suite"}


def parse_rows(text: str) -> list[int]:
    """``"1,3"`` -> [1, 3]; a clear error for anything else.

    >>> parse_rows("4,1")
    [1, 4]
    """
    try:
        rows = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        rows = []
    if not rows or any(r not in ROWS for r in rows):
        raise ValueError(f"--rows {text!r}: give a comma-separated subset of {', '.join(map(str, ROWS))}")
    return rows


def machine() -> dict:
    """Where the numbers came from: CPU model, cores, threads, load, GPU, versions."""
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {**results.environment(), "cpu": cpu, "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None}


def run(rows: list[int], cfg: BenchConfig, output: Path | None = None, runs: list[Path] | None = None) -> pd.DataFrame:
    """Measure ``rows``, print the table and write ``output`` (CSV) and its ``.json`` machine record."""
    output = Path(output) if output else results.runs_root() / "bench" / f"bench-{cfg.device}{'-quick' if cfg.quick else ''}.csv"
    results.write_json(output.with_suffix(".json"), {"machine": machine(), "quick": cfg.quick, "device": cfg.device, "rows": rows})
    found = []
    for r in rows:
        module = importlib.import_module(f"prunelab.bench.{ROWS[r]}")
        print(f"[bench] row {r}: {ROWS[r]} ...", flush=True)
        start = time.perf_counter()
        found += module.rows(cfg, runs) if r == 5 else module.rows(cfg)
        print(f"[bench] row {r} took {time.perf_counter() - start:.0f} s", flush=True)
        table = pd.DataFrame(found, columns=COLUMNS)
        with results.atomic_path(output) as tmp:  # after every row: a killed run keeps what it measured
            table.to_csv(tmp, index=False)
    print(format_table(table))
    print(f"\nwritten to {output}")
    return table


def format_table(table: pd.DataFrame) -> str:
    """The table as Markdown, notes as numbered footnotes."""
    head = "| row | case | metric | prunelab | peer | peer value | ratio | goal | met |"
    lines = [head, "|" + "---|" * 9]
    notes = []
    for _, r in table.iterrows():
        mark = ""
        if isinstance(r.note, str) and r.note:
            notes.append(r.note)
            mark = f" [{len(notes)}]"
        met = r.met if isinstance(r.met, (bool, np.bool_)) else None
        cells = [fmt(r.row), fmt(r.case) + mark, fmt(r.metric), fmt(r.prunelab), fmt(r.peer), fmt(r.peer_value),
                 fmt(r.ratio), fmt(r.goal), fmt(None if met is None else bool(met))]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines + [""] + [f"[{i}] {n}" for i, n in enumerate(notes, 1)])


def describe() -> str:
    m = machine()
    gpu = f", GPU {m['device']}" if m["device"] != "cpu" else ""
    return f"{m['cpu']}, {m['cpu_count']} cores, {torch.get_num_threads()} torch threads{gpu}, torch {m['torch']}"


__all__ = ["ROWS", "BenchConfig", "describe", "format_table", "machine", "parse_rows", "run"]
