"""Small shared pieces of the NMT tests: where the Multi30k copy is, tiny corpora."""
import os
from pathlib import Path

import pytest

from prunelab import results


def multi30k_root() -> Path:
    """The shared Multi30k copy ($PRUNELAB_MULTI30K, else ../shared/data/multi30k); skip without one."""
    for place in (os.environ.get("PRUNELAB_MULTI30K"), results.project_root().parent / "shared" / "data" / "multi30k"):
        if place and (Path(place) / "SHA256SUMS").is_file():
            return Path(place)
    pytest.skip("no Multi30k copy: set PRUNELAB_MULTI30K")


TINY = [
    ("a dog runs .", "ein hund rennt ."),
    ("a man sits .", "ein mann sitzt ."),
    ("two dogs play .", "zwei hunde spielen ."),
    ("a woman reads a book .", "eine frau liest ein buch ."),
    ("the man runs .", "der mann rennt ."),
    ("two women sit .", "zwei frauen sitzen ."),
    ("a child plays .", "ein kind spielt ."),
    ("the dog sits .", "der hund sitzt ."),
]


def write_parallel(folder: Path, pairs=TINY, gz: bool = False) -> Path:
    """train/valid/test .en/.de files (all the same pairs) in ``folder``."""
    import gzip

    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        for side, lang in enumerate(("en", "de")):
            text = "\n".join(p[side] for p in pairs) + "\n"
            path = folder / f"{split}.{lang}{'.gz' if gz else ''}"
            if gz:
                with gzip.open(path, "wt", encoding="utf-8") as f:
                    f.write(text)
            else:
                path.write_text(text, encoding="utf-8")
    return folder
