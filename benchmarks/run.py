"""Plain-script entry to the benchmarks: the same as ``prunelab bench`` (arguments identical).

    python benchmarks/run.py --quick                 # a few minutes on a laptop CPU
    python benchmarks/run.py --device cuda --rows 1,2,3,4

The measuring code lives in ``prunelab/bench/`` (one module per row); see its docstrings.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prunelab.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
