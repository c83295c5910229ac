"""Exact "prune the k lowest scores" over many tensors, without concatenating them.

`prunelab.masks` prunes the k lowest of N scores spread over a class's tensors, ties broken
by position in the concatenation of the tensors (stable, so counts are exact).  Concatenating
See et al.'s 216M scores, running ``kthvalue`` (which sorts a working copy) and an int64
``cumsum`` for the ties costs four to five copies of the weights.  Here the scores are read in
chunks instead: a strided sample brackets the k-th value, one pass counts the bracket and
gathers the few values inside it for an exact ``kthvalue``, and one pass writes the masks.
A bracket holding too many values (heavy ties, an unlucky sample) is narrowed by bisection on
the float32 bit pattern, so the result is exact for any input.  Extra memory: the bool masks
plus a few chunks; the host reads a handful of scalars per call, never per chunk.
"""
from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

CAP = 1 << 22  # values gathered for the final kthvalue (16 MB of float32)
SAMPLE = 1 << 18  # strided sample that brackets the k-th value
CHUNK = {"cpu": 1 << 20, "cuda": 1 << 26}  # least elements per chunk
SPLIT = 64  # at most ~SPLIT chunks per pass: each op is a parallel region with a fixed cost


@dataclass(frozen=True)
class Stream:
    """The effective float32 scores of one class, in concatenation order.

    ``keeps[i]`` (a previous mask, or None) sends already-pruned weights to ``-inf`` so they
    go first; ``divisors[i]`` (or None) divides the float64 scores first (class-distribution).
    """

    flats: tuple[Tensor, ...]
    keeps: tuple[Tensor | None, ...]
    divisors: tuple[Tensor | None, ...]

    @property
    def numel(self) -> int:
        return sum(f.numel() for f in self.flats)

    def view(self, i: int, part: slice) -> Tensor:
        """Effective scores of ``flats[i][part]`` (a copy only where a conversion needs one)."""
        c = self.flats[i][part]
        if self.divisors[i] is not None:
            c = c.double() / self.divisors[i]
        c = c.float()
        if self.keeps[i] is not None:
            c = c.masked_fill(~self.keeps[i][part], float("-inf"))
        return c

    def chunks(self) -> Iterator[tuple[int, int, Tensor]]:
        """(tensor index, start, effective chunk) over every score, in order."""
        spread = self.numel // SPLIT
        for i, flat in enumerate(self.flats):
            size = max(CHUNK.get(flat.device.type, CHUNK["cuda"]), spread)
            for start in range(0, flat.numel(), size):
                yield i, start, self.view(i, slice(start, start + size))


def stream(scores: list[Tensor], keeps: list[Tensor | None], divisors: list[Tensor | None]) -> Stream:
    """A `Stream` over flat views of ``scores`` (masks moved to each score's device)."""
    flats = tuple(s.detach().reshape(-1) for s in scores)
    keeps_ = tuple(None if m is None else m.reshape(-1).to(f.device) for m, f in zip(keeps, flats))
    return Stream(flats, keeps_, tuple(divisors))


def _key(v: float) -> int:
    """Consecutive, order-preserving ints for float32 values; ``-0.0`` and ``0.0`` share key 0."""
    (bits,) = struct.unpack("<i", struct.pack("<f", v))
    return bits if bits >= 0 else (bits ^ 0x7FFFFFFF) + 1


def _value(key: int) -> float:
    bits = key if key >= 0 else (key - 1) ^ 0x7FFFFFFF
    return struct.unpack("<f", struct.pack("<i", bits))[0]


def _check_nan(nan: Tensor | int, what: str) -> None:
    if int(nan):
        raise ValueError(f"scores of {what} contain NaN")


def _sample_bracket(s: Stream, k: int, n: int) -> tuple[float, float]:
    """Values bracketing the k-th smallest with high probability (checked by the caller)."""
    stride = max(1, n // SAMPLE)
    sample = torch.cat([s.view(i, slice(None, None, stride)) for i in range(len(s.flats))])
    m = sample.numel()
    j, d = k / n * m, 3.0 * math.sqrt(m) + 8  # d: ~6 standard deviations of the sample rank
    lo = sample.kthvalue(max(1, math.floor(j - d))).values.item()
    hi = sample.kthvalue(min(m, math.ceil(j + d))).values.item()
    return lo, hi


def _count_and_gather(s: Stream, lo: float, hi: float, what: str) -> tuple[int, int, list[Tensor] | None]:
    """count(x < lo), count(x <= hi) and, if they fit under `CAP`, the values in [lo, hi]."""
    below = at_most = nan = 0
    found, size = [], 0
    for _, _, c in s.chunks():
        lt, le = c < lo, c <= hi
        below = below + torch.count_nonzero(lt)
        at_most = at_most + torch.count_nonzero(le)
        nan = nan + torch.count_nonzero(torch.isnan(c))
        if found is not None:
            found.append(c[le ^ lt])  # lo <= c <= hi, as lt implies le
            size += found[-1].numel()  # host sync only for the gathered sizes (small copies)
            found = found if size <= CAP else None
    _check_nan(nan, what)
    return int(below), int(at_most), found


def _count_at_most(s: Stream, v: float) -> int:
    return int(sum(torch.count_nonzero(c <= v) for _, _, c in s.chunks()))


def _gather(s: Stream, lo: float, hi: float) -> Tensor:
    return torch.cat([c[(c >= lo) & (c <= hi)] for _, _, c in s.chunks()])


def scan(s: Stream, what: str = "the class") -> int:
    """Count the ``-inf`` effective scores (pruned before); ValueError on NaN."""
    neg = nan = 0
    for _, _, c in s.chunks():
        neg = neg + torch.count_nonzero(torch.isneginf(c))
        nan = nan + torch.count_nonzero(torch.isnan(c))
    _check_nan(nan, what)
    return int(neg)


def kth_smallest(s: Stream, k: int, what: str = "the class") -> tuple[float, int, int]:
    """The k-th smallest effective score t (1-based, as ``kthvalue``), count(x < t), count(x == t).

    Raises:
        ValueError: a score is NaN.
    """
    n = s.numel
    if n <= CAP:
        flat = torch.cat([c for _, _, c in s.chunks()])
        _check_nan(torch.isnan(flat).sum(), what)
        t = flat.kthvalue(k).values.item()
        return t, int(torch.count_nonzero(flat < t)), int(torch.count_nonzero(flat == t))
    lo, hi = _sample_bracket(s, k, n)
    below, at_most, found = _count_and_gather(s, lo, hi, what)
    if k <= below:  # the k-th value lies below the bracket
        lo, hi, below, at_most, found = float("-inf"), _value(_key(lo) - 1), 0, below, None
    elif k > at_most:  # ... or above it
        lo, hi, below, at_most, found = _value(_key(hi) + 1), float("inf"), at_most, n, None
    # Invariant: count(x < lo) = below < k <= at_most = count(x <= hi).
    while found is None and at_most - below > CAP and lo < hi:
        mid = _value((_key(lo) + _key(hi)) // 2)
        count = _count_at_most(s, mid)
        if count >= k:
            hi, at_most = mid, count
        else:
            lo, below = _value(_key(mid) + 1), count
    if lo >= hi:
        return hi, below, at_most - below
    values = torch.cat(found) if found is not None else _gather(s, lo, hi)
    t = values.kthvalue(k - below).values.item()
    return t, below + int(torch.count_nonzero(values < t)), int(torch.count_nonzero(values == t))


def keep_masks(s: Stream, k: int, what: str = "the class") -> list[Tensor]:
    """Flat bool masks, False on the k lowest effective scores (ties: lowest position first).

    Raises:
        ValueError: a score is NaN.
    """
    if k <= 0 or k >= s.numel:
        scan(s, what)
        return [torch.full_like(f, k <= 0, dtype=torch.bool) for f in s.flats]
    t, below, tied = kth_smallest(s, k, what)
    need = k - below  # ties at t to prune, lowest positions first; 1 <= need <= tied
    out = [torch.empty(f.shape, dtype=torch.bool, device=f.device) for f in s.flats]
    places, ties = [], []
    for i, start, c in s.chunks():
        torch.gt(c, t, out=out[i][start:start + c.numel()])
        if need < tied:  # some ties are kept: count them per chunk to find which
            places.append((i, start, c.numel()))
            ties.append(torch.count_nonzero(c == t))
    if not ties:
        return out
    for (i, start, size), n_eq in zip(places, torch.stack(ties).tolist()):
        if n_eq and need < n_eq:
            part = slice(start, start + size)
            eq = s.view(i, part) == t
            out[i][part] |= eq & (eq.cumsum(0) > max(need, 0))
        need -= n_eq
    return out
