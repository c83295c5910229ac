"""prunelab: reproducible neural-network pruning studies."""
__version__ = "0.1.0"
