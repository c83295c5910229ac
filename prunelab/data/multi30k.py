"""Multi30k task 1 (Elliott et al., 2016) and user folders of plain parallel text.

Where the raw files come from, in order:

1. a local mirror folder: the ``root`` argument, else ``$PRUNELAB_MULTI30K``;
2. the download cache ``<project>/data/multi30k/``;
3. a download of ``data/task1/raw/<file>.gz`` from the public ``multi30k/dataset`` GitHub
   repository into that cache.

Every ``.gz`` file is checked against the SHA-256 sums below (copied from the mirror's
``SHA256SUMS``), whichever way it arrived.  A folder of plain parallel text in the IWSLT'14
style (``train.de``/``train.en``, ``valid.*`` or ``val.*`` or ``dev.*``, ``test.*``; plain or
``.gz``) is read by `read_folder` without checksums.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import re
import urllib.request
from pathlib import Path

URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/{name}"
ENV_VAR = "PRUNELAB_MULTI30K"
LANGUAGES = ("de", "en")
SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}
SHA256 = {
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
}
# Sizes of the published splits, checked after reading.
PAIRS = {"train": 29000, "val": 1014, "test": 1000}
FOLDER_SPLITS = {"train": ("train",), "val": ("valid", "val", "dev"), "test": ("test",)}


def check_direction(direction: str, languages: tuple[str, ...] = LANGUAGES) -> tuple[str, str]:
    """Split ``"en-de"`` into ``("en", "de")``; a clear error for anything not in the data.

    >>> check_direction("de-en")
    ('de', 'en')
    """
    allowed = [f"{a}-{b}" for a in languages for b in languages if a != b]
    if direction not in allowed:
        raise ValueError(f"direction {direction!r} is not in the data; choose one of {', '.join(allowed)}")
    src, tgt = direction.split("-")
    return src, tgt


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path) -> Path:
    """Raise if ``path`` does not have the published SHA-256 of its file name."""
    path = Path(path)
    expected = SHA256[path.name]
    actual = sha256(path)
    if actual != expected:
        raise ValueError(f"checksum mismatch for {path}: SHA-256 {actual}, expected {expected}; "
                         f"the file is corrupt or not the Multi30k original: delete it and provide it again")
    return path


def cache_dir() -> Path:
    from prunelab.results import project_root

    return project_root() / "data" / "multi30k"


def _download(name: str, dest: Path) -> Path:
    from prunelab.results import atomic_path

    url = URL.format(name=name)
    with atomic_path(dest) as tmp:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            out.write(response.read())
        if sha256(tmp) != SHA256[name]:
            raise ValueError(f"checksum mismatch for {name} downloaded from {url}; try again later")
    return dest


def locate(name: str, root: str | Path | None = None, download: bool = True) -> Path:
    """Path of the verified raw file ``name`` (e.g. ``train.en.gz``), downloading it if needed.

    Raises:
        KeyError: ``name`` is not a Multi30k task-1 raw file.
        FileNotFoundError: no copy anywhere and the download failed (or ``download=False``).
        ValueError: a copy whose checksum does not match.
    """
    if name not in SHA256:
        raise KeyError(f"{name!r} is not a Multi30k file; known: {', '.join(sorted(SHA256))}")
    mirror = root or os.environ.get(ENV_VAR) or None
    places = ([Path(mirror)] if mirror else []) + [cache_dir()]
    for place in places:
        if (place / name).is_file():
            return verify(place / name)
    error = "download disabled"
    if download:
        try:
            return _download(name, cache_dir() / name)
        except OSError as err:
            error = f"download from {URL.format(name=name)} failed ({err})"
    looked = ", ".join(str(p) for p in places)
    raise FileNotFoundError(
        f"Multi30k file {name} not found (looked in {looked}; {error}). Put the raw files "
        f"{', '.join(sorted(SHA256))} in a folder and pass it as root= or set ${ENV_VAR}, or copy them "
        f"into {cache_dir()}, or connect to the internet once so they can be downloaded there.")


def read_lines(path: Path) -> list[str]:
    """The lines of a UTF-8 text file (gzipped when its name ends in ``.gz``), line ends removed.

    Raises:
        ValueError: the file is not UTF-8; the message names it, the line and the column of the first bad byte.
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            return [line.rstrip("\n").rstrip("\r") for line in f]
    except UnicodeDecodeError:
        with opener(path, "rb") as f:
            raw = f.read()
        try:
            raw.decode("utf-8")  # the same strict decoding, now with the offset in the whole file
        except UnicodeDecodeError as err:
            before = raw[:err.start]
            line = len(re.findall(rb"\r\n|\r|\n", before)) + 1  # the line ends text mode splits at
            column = err.start - max(before.rfind(b"\n"), before.rfind(b"\r"))
            raise ValueError(f"corpus file {path} line {line} is not UTF-8 "
                             f"(byte 0x{raw[err.start]:02x} at column {column})") from None
        raise


def read_multi30k(split: str, direction: str = "en-de", root: str | Path | None = None,
                  download: bool = True) -> tuple[list[str], list[str]]:
    """Raw (source, target) sentences of one Multi30k split.

    Args:
        split: ``train``, ``val`` or ``test`` (= ``test_2016_flickr``).
        direction: ``en-de`` (See et al.'s direction) or ``de-en``.
        root: mirror folder; default ``$PRUNELAB_MULTI30K``, then the download cache.
        download: allow downloading missing files.

    Returns:
        Two lists of equal length, source and target sentences.

    >>> src, tgt = read_multi30k("val", "en-de")  # doctest: +SKIP
    >>> len(src), len(tgt)  # doctest: +SKIP
    (1014, 1014)
    """
    if split not in SPLITS:
        raise ValueError(f"split {split!r} is unknown; choose one of {', '.join(SPLITS)}")
    src, tgt = check_direction(direction)
    sides = [read_lines(locate(f"{SPLITS[split]}.{lang}.gz", root, download)) for lang in (src, tgt)]
    for lang, lines in zip((src, tgt), sides):
        if len(lines) != PAIRS[split]:
            raise ValueError(f"{SPLITS[split]}.{lang}.gz has {len(lines)} lines, expected {PAIRS[split]}")
    return sides[0], sides[1]


def _folder_file(folder: Path, split: str, lang: str) -> Path:
    candidates = [folder / f"{stem}.{lang}{gz}" for stem in FOLDER_SPLITS[split] for gz in ("", ".gz")]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"no {split} file for language {lang!r} in {folder}; "
                            f"expected one of {', '.join(p.name for p in candidates)}")


def read_folder(folder: str | Path, split: str, direction: str) -> tuple[list[str], list[str]]:
    """Raw (source, target) sentences of ``split`` from a folder of plain parallel text.

    The folder holds ``train.<lang>``, ``valid.<lang>`` (or ``val``/``dev``) and ``test.<lang>``,
    one sentence per line, optionally gzipped (e.g. IWSLT'14 De-En).

    >>> read_folder("iwslt14", "train", "de-en")  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"parallel-text folder {folder} does not exist")
    if split not in FOLDER_SPLITS:
        raise ValueError(f"split {split!r} is unknown; choose one of {', '.join(FOLDER_SPLITS)}")
    langs = sorted({p.name.split(".")[1] for p in folder.glob("train.*") if len(p.name.split(".")) >= 2})
    src, tgt = check_direction(direction, tuple(langs))
    sides = [read_lines(_folder_file(folder, split, lang)) for lang in (src, tgt)]
    if len(sides[0]) != len(sides[1]):
        raise ValueError(f"{split} of {folder}: {len(sides[0])} {src} lines but {len(sides[1])} {tgt} lines")
    return sides[0], sides[1]
