"""Models used by the studies."""
from prunelab.models.mlp import mlp

__all__ = ["mlp"]
