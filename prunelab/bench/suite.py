"""Row 5: wall time of the whole suite per profile.

``smoke`` is measured here: ``prunelab run --profile smoke --force`` over every notebook, in a
fresh process writing to a temporary runs folder.  ``default`` and ``paper`` are never run by
the benchmark; they are read from recorded run folders (the papermill ``duration`` of each
notebook's latest complete executed copy), and left empty when none were recorded.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from prunelab import results, runner
from prunelab.bench.common import BenchConfig, entry

GOALS = {"smoke": ("", None), "default": ("<= 7200 s on a 2-core CPU", 7200.0), "paper": ("<= 3600 s on one GPU", 3600.0)}


def time_smoke(timeout: float = 1800) -> tuple[float, str]:
    """Seconds to run every notebook at ``smoke``, and '' or the failure's last line."""
    with tempfile.TemporaryDirectory(prefix="prunelab-bench-smoke-") as tmp:
        env = dict(os.environ, PRUNELAB_RUNS=tmp)
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "prunelab.cli", "run", "--profile", "smoke", "--force", "--quiet"],
                              capture_output=True, text=True, env=env, timeout=timeout)
        seconds = time.perf_counter() - start
    failure = "" if done.returncode == 0 else (done.stderr.strip().splitlines() or ["failed"])[-1][:160]
    return seconds, failure


def recorded(roots: list[Path], profile: str) -> dict[str, tuple[float, float]]:
    """notebook -> (papermill seconds, mtime) of its latest complete run at ``profile`` under ``roots``."""
    found: dict[str, tuple[float, float]] = {}
    for root in roots:
        for path in Path(root).glob("*/*/[0-9][0-9]_*.ipynb"):
            if path.name.endswith(".failed.ipynb") or not (path.parent / "complete.json").exists():
                continue
            meta = json.loads(path.read_text()).get("metadata", {}).get("papermill", {})
            if meta.get("parameters", {}).get("profile") != profile or meta.get("duration") is None:
                continue
            stem, mtime = path.stem, path.stat().st_mtime
            if stem not in found or mtime > found[stem][1]:
                found[stem] = (float(meta["duration"]), mtime)
    return found


def rows(cfg: BenchConfig, roots: list[Path] | None = None, smoke: bool = True) -> list[dict]:
    roots = roots or [results.runs_root()]
    names = runner.notebooks()
    out = []
    if smoke:
        seconds, failure = time_smoke()
        out.append(entry("5 suite", f"smoke, {len(names)} notebooks, measured here ({cfg.device} machine)", "wall seconds",
                         seconds, note=f"prunelab run --profile smoke --force{'; FAILED: ' + failure if failure else ''}"))
    for profile in ("default", "paper"):
        got = recorded(roots, profile)
        goal, limit = GOALS[profile]
        total = sum(d for d, _ in got.values()) if got else None
        complete = len(got) == len(names)
        out.append(entry("5 suite", f"{profile}, {len(got)} of {len(names)} notebooks recorded", "wall seconds (recorded)",
                         total, goal=goal, met=(total <= limit) if complete and total is not None else None,
                         note=("from papermill durations under " + ", ".join(str(r) for r in roots)) if got else
                         "no recorded run; run `prunelab run --profile " + profile + "` to fill this row"))
    return out
