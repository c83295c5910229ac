"""Sparsity schedules: each answers ``sparsity_at(step)``.

Steps count pruning rounds (or training steps for `Polynomial`); step 0 is dense unless a
schedule says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

from prunelab.masks import check_sparsity


def _check_step(step: int) -> int:
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step={step!r} must be a non-negative int")
    return step


@dataclass(frozen=True)
class OneShot:
    """Prune to ``target`` at ``step`` (default 0) and stay there.

    >>> OneShot(0.8).sparsity_at(0)
    0.8
    """

    target: float
    step: int = 0

    def __post_init__(self):
        check_sparsity(self.target)

    def sparsity_at(self, step: int) -> float:
        return self.target if _check_step(step) >= self.step else 0.0


@dataclass(frozen=True)
class Iterative:
    """``rounds`` pruning rounds to ``target``: equal steps, or (``geometric``) the same fraction
    of the remaining weights each round (as in iterative magnitude pruning, Frankle & Carbin 2019).

    >>> Iterative(0.8, 4).sparsity_at(2)
    0.4
    """

    target: float
    rounds: int
    geometric: bool = False

    def __post_init__(self):
        check_sparsity(self.target)
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ValueError(f"rounds={self.rounds!r} must be an int >= 1")

    def sparsity_at(self, step: int) -> float:
        i = min(_check_step(step), self.rounds)
        if self.geometric:
            return 1.0 - (1.0 - self.target) ** (i / self.rounds)
        return self.target * i / self.rounds


@dataclass(frozen=True)
class Polynomial:
    """Automated gradual pruning (Zhu & Gupta 2017, Eq. 1).

    s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n * dt)) ** power for t in [t0, t0 + n*dt],
    updated every ``frequency`` (dt) steps; s_i before t0 and s_f after.  Zhu & Gupta's last
    update falls on t0 + n*dt, where s_f is reached; here that step is ``end`` even when
    ``end - begin`` is not a multiple of ``frequency``: the updates fall on begin + k*dt before
    ``end`` and on ``end`` itself (a shorter last interval), so s_f is never reached late;
    when the interval divides, these are exactly Zhu & Gupta's update steps.

    >>> Polynomial(0.9, begin=0, end=100).sparsity_at(100)
    0.9
    >>> Polynomial(0.9, begin=0, end=100, frequency=30).sparsity_at(100)
    0.9
    """

    target: float
    begin: int
    end: int
    initial: float = 0.0
    power: float = 3.0
    frequency: int = 1

    def __post_init__(self):
        check_sparsity(self.target)
        check_sparsity(self.initial)
        if self.end <= self.begin:
            raise ValueError(f"end={self.end} must be > begin={self.begin}")
        if self.frequency < 1:
            raise ValueError(f"frequency={self.frequency} must be >= 1")

    def sparsity_at(self, step: int) -> float:
        t = _check_step(step)
        if t >= self.end:
            return self.target
        updates = max(0, t - self.begin) // self.frequency
        if updates == 0:  # s_i exactly: the formula gives it only up to rounding
            return self.initial
        progress = updates * self.frequency / (self.end - self.begin)
        return self.target + (self.initial - self.target) * (1.0 - progress) ** self.power


SCHEDULES = {"one-shot": OneShot, "iterative": Iterative, "polynomial": Polynomial}
