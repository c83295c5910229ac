"""Saliency criteria: name -> function returning `Scores` (higher is kept).

Every criterion is called as ``fn(model, names=None, **context)`` where ``names`` picks the
scored parameters (default: `prunable`) and ``context`` holds what the criterion needs
(batches, a loss function, a generator).  Scores live on the parameters' device.
"""
from __future__ import annotations

from collections.abc import Callable

from prunelab.criteria.second_order import HESSIAN_ESTIMATORS, Saliency, obd, obd_saliency, snip, snip_saliency
from prunelab.criteria.unstructured import magnitude, prunable, random_scores
from prunelab.criteria.flow import grasp, grasp_saliency, ones_flow, synflow, synflow_saliency, synflow_scores
from prunelab.criteria.filters import FILTER_CRITERIA, get_filter_criterion  # noqa: F401 (per-filter, structured)

Criterion = Callable[..., dict]

CRITERIA: dict[str, Criterion] = {
    "magnitude": magnitude,
    "random": random_scores,
    "obd": obd,
    "snip": snip,
    "grasp": grasp,
    "synflow": synflow,
}


def get_criterion(name: str) -> Criterion:
    """The criterion registered as ``name``; a clear error lists the ones offered."""
    try:
        return CRITERIA[name]
    except KeyError:
        raise KeyError(f"unknown criterion {name!r}; choose one of {', '.join(sorted(CRITERIA))}") from None


__all__ = ["CRITERIA", "Criterion", "HESSIAN_ESTIMATORS", "Saliency", "get_criterion", "magnitude", "obd",
           "obd_saliency", "prunable", "random_scores", "snip", "snip_saliency", "grasp", "grasp_saliency",
           "ones_flow", "synflow", "synflow_saliency", "synflow_scores"]
