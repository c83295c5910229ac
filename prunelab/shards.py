"""Grid sharding: which process computes which grid point of a notebook (`Run.memo`).

A shard job runs the whole notebook with ``$PRUNELAB_SHARD = "i/N"``: `Run.memo` computes only
the points whose key hashes to ``i`` (a stable hash, so every point belongs to exactly one
shard) and hands back a `Pending` placeholder for any other point not cached yet.  The first
use of a placeholder (or any attempt to write tables, figures, claims or ``complete.json``)
raises `ShardStop`: the shard has computed every point it could reach, and stops.  A later
round finds the first stage cached and computes the points that depended on it; then the
gather run executes the notebook whole, finds the points cached, and writes the results.

>>> shard_of("point", {"sparsity": 0.5}, 3) == shard_of("point", {"sparsity": 0.5}, 3)
True
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

SHARD_ENV = "PRUNELAB_SHARD"


class ShardStop(Exception):
    """A shard needs a value another shard computes: its own reachable points are done."""


def current() -> tuple[int, int] | None:
    """``(i, N)`` from ``$PRUNELAB_SHARD`` (``"i/N"``), or None outside a shard job."""
    text = os.environ.get(SHARD_ENV, "")
    if not text:
        return None
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise ValueError(f"${SHARD_ENV}={text!r} is not i/N (e.g. 0/3)") from None
    if not 0 <= i < n:
        raise ValueError(f"${SHARD_ENV}={text!r}: the shard index must be in 0..{n - 1}")
    return i, n


def shard_of(name: str, key: dict[str, Any], n: int) -> int:
    """The shard (0..n-1) that computes point ``key`` of memo ``name``: a stable hash of both."""
    from prunelab.results import params_hash

    return int(params_hash(name, key), 16) % n


def status_path(run_path: Path, shard: tuple[int, int]) -> Path:
    """Where shard ``(i, N)`` of a run records what it computed and what it left pending."""
    return Path(run_path) / "shards" / f"{shard[0]}of{shard[1]}.json"


def note(run_path: Path, shard: tuple[int, int], event: str) -> None:
    """Count an event (``computed``, ``pending``, ``error``) in the shard's status file."""
    from prunelab.results import write_json

    path = status_path(run_path, shard)
    counts = json.loads(path.read_text()) if path.exists() else {}
    counts[event] = counts.get(event, 0) + 1
    write_json(path, counts)


def stopped(run_path: Path) -> bool:
    """Whether this process, a shard, has handed out a `Pending` (so its results are partial)."""
    shard = current()
    if shard is None:
        return False
    path = status_path(run_path, shard)
    return path.exists() and json.loads(path.read_text()).get("pending", 0) > 0


class Pending:
    """The value of a grid point another shard computes; using it in any way stops the shard."""

    __slots__ = ("what",)

    def __init__(self, what: str):
        object.__setattr__(self, "what", what)

    def _stop(self, *args, **kwargs):
        raise ShardStop(f"{self.what} is computed by another shard")

    __getattr__ = __getitem__ = __iter__ = __len__ = __bool__ = __float__ = __int__ = __index__ = _stop
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _stop
    __lt__ = __le__ = __gt__ = __ge__ = __contains__ = __call__ = __format__ = _stop

    def __repr__(self) -> str:
        return f"Pending({self.what})"
