"""CIFAR-10 as JPEG files, offline: the shared archive checked by SHA-256 and unpacked once, atomically.

The archive ``cifar10-jpeg.tar.gz`` (60,000 32x32 JPEG re-encodings of CIFAR-10 in ``ImageFolder``
layout: ``cifar10-jpeg/{train,test}/<class>/NNNN.jpg``, 5,000 / 1,000 a class) lives in the folder
``$PRUNELAB_CIFAR10`` names, or in ``data/``. `cifar10_folder` checks its digest and unpacks it
into ``data/cifar10-jpeg/`` the first time: into a temporary folder beside it, renamed into place
only when every image is there, so an interrupted or failed unpack (a full disk) leaves nothing a
later run trusts. Users with internet can take torchvision's ``CIFAR10(download=True)`` instead
(the original pixels: a few points more accuracy before fine-tuning than these JPEGs).

>>> root = cifar10_folder()  # doctest: +SKIP
>>> sorted(p.name for p in root.iterdir())  # doctest: +SKIP
['test', 'train']
"""
from __future__ import annotations

import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from prunelab.data.images import _sha256
from prunelab.results import project_root

ENV = "PRUNELAB_CIFAR10"
ARCHIVE = "cifar10-jpeg.tar.gz"
SHA256 = "b379c20532d0d7113e4257fb4fe37c05481e5a503319cd10c2de3889728c9e18"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
COUNTS = {"train": 50_000, "test": 10_000}
_MARKER = ".unpacked.json"  # written last inside the unpacked folder: which archive it came from


def find_archive(folder: str | Path | None = None) -> Path:
    """The archive in ``folder``, else in ``$PRUNELAB_CIFAR10``, else in ``data/``.

    Raises:
        FileNotFoundError: one line naming where it looked (a folder named but missing is an error,
            never silently replaced by another).
    """
    given = folder or os.environ.get(ENV)
    places = [Path(given)] if given else [project_root() / "data"]
    for place in places:
        if (place / ARCHIVE).is_file():
            return place / ARCHIVE
    where = f"{places[0]} (from {'the argument' if folder else '$' + ENV})" if given else str(places[0])
    raise FileNotFoundError(f"CIFAR-10 archive {ARCHIVE} not found in {where}; set ${ENV} to the folder holding it, "
                            "or use dataset=CIFAR10 (torchvision downloads the original pixels)")


def check_archive(path: str | Path) -> None:
    """Raises ValueError naming ``path`` and both digests when it is not the known archive."""
    st = Path(path).stat()
    actual = _sha256(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)
    if actual != SHA256:
        raise ValueError(f"CIFAR-10 archive {path} has SHA-256 {actual}, expected {SHA256}: it is corrupt or "
                         "another file; fetch it again")


def cifar10_folder(archive: str | Path | None = None, dest: str | Path | None = None) -> Path:
    """The unpacked ``ImageFolder`` root (holding ``train/`` and ``test/``), unpacking it if needed.

    Args:
        archive: the archive (default: `find_archive`).
        dest: where it is unpacked (default ``data/cifar10-jpeg``).

    Raises:
        FileNotFoundError, ValueError: no archive, a wrong digest, or a ``dest`` that holds something
            else than a complete unpack of this archive (one line each, naming the path).
    """
    archive = Path(archive) if archive else find_archive()
    dest = Path(dest) if dest else project_root() / "data" / "cifar10-jpeg"
    if _unpacked(dest):
        return dest
    if os.path.lexists(dest):
        raise ValueError(f"{dest} exists but is not a complete unpack of {ARCHIVE}; move it away and rerun")
    check_archive(archive)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.unpacking-"))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            tar.extractall(tmp, filter="data")  # no absolute paths, links out or device files
        root = tmp / "cifar10-jpeg"
        _check_counts(root, archive)
        (root / _MARKER).write_text(json.dumps({"archive": ARCHIVE, "sha256": SHA256}) + "\n")
        os.rename(root, dest)
    except OSError as err:
        if _unpacked(dest):  # another process unpacked it first
            return dest
        raise OSError(err.errno, f"unpacking {archive} into {dest} failed ({err.strerror or err}); nothing was "
                      "kept", str(dest)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _unpacked(dest: Path) -> bool:
    try:
        return json.loads((dest / _MARKER).read_text()).get("sha256") == SHA256 and not dest.is_symlink()
    except (OSError, ValueError):
        return False


def _check_counts(root: Path, archive: Path) -> None:
    for split, expected in COUNTS.items():
        found = {c: sum(1 for _ in (root / split / c).glob("*.jpg")) for c in CLASSES}
        if sum(found.values()) != expected:
            raise ValueError(f"{archive} unpacked {sum(found.values())} {split} images into {root / split}, "
                             f"expected {expected} ({expected // len(CLASSES)} a class)")
