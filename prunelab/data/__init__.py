"""Data loaders. Each keeps its real download path for users and reads local copies first."""
from prunelab.data.digits import load_digits

__all__ = ["load_digits"]
