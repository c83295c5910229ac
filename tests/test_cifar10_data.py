"""CIFAR-10 from the shared JPEG archive: checked by SHA-256, unpacked once, atomically (issue 25)."""
import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from prunelab.data import cifar10

SHARED = Path(os.environ.get(cifar10.ENV) or Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10")


def _jpeg(colour):
    out = io.BytesIO()
    Image.new("RGB", (32, 32), colour).save(out, format="JPEG")
    return out.getvalue()


@pytest.fixture
def small(tmp_path, monkeypatch):
    """A ten-class archive in the shared one's layout (2 train and 1 test image a class), made known."""
    path = tmp_path / "src" / cifar10.ARCHIVE
    path.parent.mkdir()
    with tarfile.open(path, "w:gz") as tar:
        for split, n in (("train", 2), ("test", 1)):
            for k, name in enumerate(cifar10.CLASSES):
                for i in range(n):
                    data = _jpeg((25 * k, 10 * i, 0))
                    info = tarfile.TarInfo(f"cifar10-jpeg/{split}/{name}/{i:04d}.jpg")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    monkeypatch.setattr(cifar10, "SHA256", hashlib.sha256(path.read_bytes()).hexdigest())
    monkeypatch.setattr(cifar10, "COUNTS", {"train": 20, "test": 10})
    return path


def _leftovers(folder):
    return [p.name for p in folder.iterdir() if ".unpacking-" in p.name]


def test_unpacks_once_into_an_image_folder(small, tmp_path, monkeypatch):
    dest = tmp_path / "data" / "cifar10-jpeg"
    assert cifar10.cifar10_folder(small, dest) == dest
    assert sorted(p.name for p in (dest / "train").iterdir()) == list(cifar10.CLASSES)
    assert len(list(dest.glob("test/*/*.jpg"))) == 10 and _leftovers(dest.parent) == []

    def no_unpack(*a, **k):
        raise AssertionError("unpacked again")

    monkeypatch.setattr(tarfile, "open", no_unpack)
    assert cifar10.cifar10_folder(small, dest) == dest  # the second call trusts the finished unpack


def test_a_wrong_digest_is_named_and_nothing_is_unpacked(small, tmp_path, monkeypatch):
    monkeypatch.setattr(cifar10, "SHA256", "0" * 64)
    dest = tmp_path / "data" / "cifar10-jpeg"
    with pytest.raises(ValueError, match=f"CIFAR-10 archive {small} has SHA-256 [0-9a-f]{{64}}, expected 0{{64}}"):
        cifar10.cifar10_folder(small, dest)
    assert not dest.exists()


def test_an_interrupted_unpack_leaves_nothing_trusted(small, tmp_path, monkeypatch):
    dest = tmp_path / "data" / "cifar10-jpeg"
    real = tarfile.TarFile.extractall

    def full_disk(self, path, *a, **k):
        real(self, path, *a, **k)  # most of it written, then the disk fills
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tarfile.TarFile, "extractall", full_disk)
    with pytest.raises(OSError, match=f"unpacking {small} into {dest} failed \\(No space left on device\\)"):
        cifar10.cifar10_folder(small, dest)
    assert not dest.exists() and _leftovers(dest.parent) == []
    monkeypatch.setattr(tarfile.TarFile, "extractall", real)
    assert cifar10.cifar10_folder(small, dest) == dest  # the next run unpacks it whole


def test_a_foreign_folder_and_a_missing_archive_are_one_line(small, tmp_path, monkeypatch):
    dest = tmp_path / "data" / "cifar10-jpeg"
    dest.mkdir(parents=True)
    with pytest.raises(ValueError, match=f"{dest} exists but is not a complete unpack"):
        cifar10.cifar10_folder(small, dest)
    monkeypatch.setenv(cifar10.ENV, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match=f"not found in {tmp_path / 'nowhere'} \\(from \\$PRUNELAB_CIFAR10\\)"):
        cifar10.find_archive()


@pytest.mark.skipif(not (SHARED / cifar10.ARCHIVE).is_file(), reason="no shared CIFAR-10 archive here")
def test_the_shared_archive_unpacks_to_sixty_thousand_images(tmp_path):
    dest = cifar10.cifar10_folder(SHARED / cifar10.ARCHIVE, tmp_path / "cifar10-jpeg")
    assert len(list(dest.glob("train/*/*.jpg"))) == 50_000 and len(list(dest.glob("test/*/*.jpg"))) == 10_000
    with Image.open(next(dest.glob("test/cat/*.jpg"))) as img:
        assert img.size == (32, 32) and img.mode == "RGB"
