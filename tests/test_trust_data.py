"""A corpus line that is not UTF-8, or an image file that cannot be decoded, is a one-line error naming the file."""
import gzip
import re

import numpy as np
import pytest
import torch

from prunelab.data import CorpusConfig, imagesets, images, load_corpus, multi30k, read_folder
from nmt_helpers import write_parallel


def _bad_line_17(folder, gz=False):
    """Replace ``train.de`` with 20 lines (CRLF, lone CR and LF ends) whose line 17 has 0xff at column 3."""
    lines = [f"ein hund {i} .".encode() for i in range(20)]
    lines[16] = b"ei\xffn hund ."
    raw = b"\r\n".join(lines[:5]) + b"\r" + b"\n".join(lines[5:]) + b"\n"  # lines 1-5 CRLF, 6 after a lone CR
    for old in folder.glob("train.de*"):
        old.unlink()
    path = folder / ("train.de.gz" if gz else "train.de")
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_corpus_line_not_utf8_names_file_line_and_column(tmp_path, gz):
    folder = write_parallel(tmp_path / "corpus", pairs=[(f"a dog {i} .", f"ein hund {i} .") for i in range(20)], gz=gz)
    path = _bad_line_17(folder, gz)
    with pytest.raises(ValueError) as err:
        load_corpus(CorpusConfig(direction="en-de", folder=str(folder), min_freq=1))
    assert str(err.value) == f"corpus file {path} line 17 is not UTF-8 (byte 0xff at column 3)"
    with pytest.raises(ValueError, match=re.escape(f"{path} line 17")):
        read_folder(folder, "train", "de-en")


def test_truncated_utf8_at_the_end_names_the_last_line(tmp_path):
    path = tmp_path / "test.en"
    path.write_bytes("one\ntwo\nzw\u00f6lf".encode()[:-3])  # the two-byte "ö" cut after its first byte
    with pytest.raises(ValueError, match=re.escape(f"corpus file {path} line 3 is not UTF-8 (byte 0xc3 at column 3)")):
        multi30k.read_lines(path)


def test_valid_corpus_lines_are_read_as_before(tmp_path):
    path = tmp_path / "valid.de"
    path.write_bytes("\ufeffa\r\nb\rc\nzw\u00f6lf \u2028x\n\nlast".encode())
    assert multi30k.read_lines(path) == ["\ufeffa", "b", "c", "zw\u00f6lf \u2028x", "", "last"]


def _write_image_folder(root):
    """``root/<class>/<i>.png|jpg``: two classes of four tiny images; returns one JPEG's bytes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return (root / "cat" / "0.jpg").read_bytes()


def _draw_all(data):
    return sum(len(y) for split in ("train", "test") for _, y in data.batches(split, 3, torch.Generator().manual_seed(0)))


def test_truncated_image_names_the_file_when_batches_are_drawn(tmp_path):
    jpeg = _write_image_folder(tmp_path / "pets")
    assert _draw_all(imagesets.open_images(str(tmp_path / "pets"), image_size=8, test_fraction=0.25)) == 8
    bad = tmp_path / "pets" / "cat" / "3.jpg"
    bad.write_bytes(jpeg[:30])
    data = imagesets.open_images(str(tmp_path / "pets"), image_size=8, test_fraction=0.25)
    with pytest.raises(ValueError, match=re.escape(f"image {bad} cannot be read (OSError: ")) as err:
        _draw_all(data)
    assert "\n" not in str(err.value)


def test_corrupt_flowers_image_names_the_file(tmp_path):
    from PIL import Image
    from scipy.io import savemat

    folder = tmp_path / "flowers-102"
    (folder / "jpg").mkdir(parents=True)
    Image.fromarray(np.full((12, 12, 3), 90, dtype=np.uint8)).save(folder / "jpg" / "image_00001.jpg")
    savemat(folder / "imagelabels.mat", {"labels": np.array([[1, 2]])})
    savemat(folder / "setid.mat", {"trnid": np.array([[1]]), "valid": np.array([[1]]), "tstid": np.array([[2]])})
    assert images.load_flowers102(tmp_path, size=8, splits=("train",))["x_train"].shape == (1, 3, 8, 8)
    bad = folder / "jpg" / "image_00002.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=re.escape(f"image {bad} cannot be read (UnidentifiedImageError: ")):
        images.load_flowers102(tmp_path, size=8, splits=("test",))
