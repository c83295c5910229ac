"""Grid sharding: which process computes which grid point of a notebook (`Run.memo`).

A shard job runs the notebook with ``$PRUNELAB_SHARD = "i/N"``: `Run.memo` computes only the
points whose key hashes to ``i`` (a stable hash, so every point belongs to exactly one shard)
and hands back a `Pending` placeholder for any other point not cached yet.  The first use of a
placeholder (or any attempt to write tables, figures or claims while one is out) raises
`ShardStop`, and the shard's status file lists the points it was handed as placeholders.  The
shard job (`executors.run_shard`) then waits until their owners have cached them and runs the
notebook again, now further; it gives up on a point whose owner is not running.  Points depend
only on points asked for earlier (the notebook's order is the same in every shard), so the
shards never wait on each other in a circle.  A gather run then executes the notebook whole
from the cache and writes the results.

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
    """A shard needs a value another shard computes (or reached the end): it stops here."""


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


def owner(digest: str, n: int) -> int:
    """The shard that computes the point whose key hashes to ``digest`` (`results.params_hash`)."""
    return int(digest, 16) % n


def shard_of(name: str, key: dict[str, Any], n: int) -> int:
    """The shard (0..n-1) that computes point ``key`` of memo ``name``: a stable hash of both."""
    from prunelab.results import params_hash

    return owner(params_hash(name, key), n)


def status_path(run_path: Path, shard: tuple[int, int]) -> Path:
    """Where shard ``(i, N)`` records one execution: ``computed``, ``pending`` (the cache files it
    was handed placeholders for), ``error``, and ``stop`` (``use``, ``write`` or ``end``)."""
    return Path(run_path) / "shards" / f"{shard[0]}of{shard[1]}.json"


def alive_path(run_path: Path, shard: tuple[int, int]) -> Path:
    """The lock a shard job holds while it runs (`executors.run_shard`): free means not running."""
    return Path(run_path) / "shards" / f"{shard[0]}of{shard[1]}.alive"


def read_status(run_path: Path, shard: tuple[int, int]) -> dict:
    path = status_path(run_path, shard)
    return json.loads(path.read_text()) if path.exists() else {}


def note(run_path: Path, shard: tuple[int, int], event: str, value: Any = 1) -> None:
    """Record an event in the shard's status: counts add up, ``pending`` collects, ``stop`` is set once."""
    from prunelab.results import write_json

    status = read_status(run_path, shard)
    if event == "pending":
        status["pending"] = [*status.get("pending", []), value]
    elif event == "stop":
        status.setdefault("stop", value)
    else:
        status[event] = status.get(event, 0) + value
    write_json(status_path(run_path, shard), status)


def stop(run_path: Path, why: str, message: str) -> ShardStop:
    """Record why this shard stops (``use``, ``write``, ``end``) and return the exception to raise."""
    note(run_path, current(), "stop", why)
    return ShardStop(message)


def has_pending(run_path: Path) -> bool:
    """Whether this process, a shard, has handed out a `Pending` (so its results are partial)."""
    shard = current()
    return shard is not None and bool(read_status(run_path, shard).get("pending"))


class Pending:
    """The value of a grid point another shard computes; using it in any way stops the shard."""

    __slots__ = ("what", "run_path")

    def __init__(self, what: str, run_path: Path):
        object.__setattr__(self, "what", what)
        object.__setattr__(self, "run_path", run_path)

    def _stop(self, *args, **kwargs):
        raise stop(self.run_path, "use", f"{self.what} is computed by another shard")

    __getattr__ = __getitem__ = __iter__ = __len__ = __bool__ = __float__ = __int__ = __index__ = _stop
    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _stop
    __lt__ = __le__ = __gt__ = __ge__ = __contains__ = __call__ = __format__ = _stop

    def __repr__(self) -> str:
        return f"Pending({self.what})"
