"""The CIFAR-10 ResNets: sizes, the option-A shortcut, and the shared pretrained weights."""
import hashlib
import io
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from prunelab.data import cifar10
from prunelab.models import cifar_resnet as cr

SHARED = Path(os.environ.get(cr.ENV) or Path(__file__).resolve().parents[2] / "shared/data/cifar10")
needs_shared = pytest.mark.skipif(not (SHARED / "SHA256SUMS").is_file(),
                                  reason=f"shared CIFAR-10 weights not found at {SHARED} (set ${cr.ENV})")
CLASSES = cifar10.CLASSES  # alphabetical: CIFAR-10's label order


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("name", "millions"), [("cifar_resnet20", 0.27), ("cifar_resnet32", 0.46),
                                                 ("cifar_resnet44", 0.66), ("cifar_resnet56", 0.85)])
def test_parameter_counts_match_the_paper(name, millions):
    net = cr.build(name)
    assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - millions) < 0.01
    assert len(net.layer1) == len(net.layer2) == len(net.layer3) == (cr.DEPTHS[name] - 2) // 6
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(("c_in", "c_out"), [(16, 32), (32, 64)])
def test_shortcut_equals_the_pad_reference_exactly(c_in, c_out):
    x = torch.randn(3, c_in, 9, 8, generator=torch.Generator().manual_seed(0))
    p = c_out // 4
    expected = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))
    assert torch.equal(cr.ChannelPadShortcut(c_in, c_out, 2)(x), expected)


def test_shortcut_follows_its_index_buffers():
    sc = cr.ChannelPadShortcut(16, 32, 2)
    assert {"src", "dst"} <= dict(sc.named_buffers()).keys() and not sc.state_dict()
    keep = torch.tensor([i for i in range(16) if i != 5])
    sc.src, sc.dst = sc.src[keep], sc.dst[keep]
    out = sc(torch.ones(1, 16, 4, 4))
    assert out.shape == (1, 32, 2, 2)
    assert out.sum(dim=(0, 2, 3)).nonzero().flatten().tolist() == [8 + i for i in range(16) if i != 5]


def test_network_shortcuts_are_modules_at_stage_boundaries():
    net = cr.build("cifar_resnet20")
    pads = [n for n, m in net.named_modules() if isinstance(m, cr.ChannelPadShortcut)]
    assert pads == ["layer2.0.shortcut", "layer3.0.shortcut"]


def test_unknown_name_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="cifar_resnet56") as err:
        cr.build("cifar_resnet50")
    assert all(name in str(err.value) for name in cr.DEPTHS) and "\n" not in str(err.value)


def test_missing_file_names_where_it_looked_and_the_download(tmp_path, monkeypatch):
    monkeypatch.delenv(cr.ENV, raising=False)
    with pytest.raises(FileNotFoundError) as err:
        cr.load_pretrained_(cr.build("cifar_resnet20"), "cifar_resnet20", tmp_path)
    message = str(err.value)
    assert str(tmp_path / "resnet20-12fca82f.th") in message and cr.URLS["cifar_resnet20"] in message
    assert "\n" not in message
    with pytest.raises(FileNotFoundError, match=cr.ENV):
        cr.load_pretrained_(cr.build("cifar_resnet20"), "cifar_resnet20")


@needs_shared
def test_digests_in_the_module_match_the_shared_sums():
    sums = dict(line.split()[::-1] for line in (SHARED / "SHA256SUMS").read_text().splitlines())
    assert {cr.FILES[name]: cr.SHA256[name] for name in cr.DEPTHS} == {f: sums[f] for f in cr.FILES.values()}


@needs_shared
@pytest.mark.parametrize("name", list(cr.DEPTHS))
def test_shared_weights_load_strictly(name, monkeypatch):
    monkeypatch.setenv(cr.ENV, str(SHARED))
    net = cr.build(name)
    before = net.linear.weight.clone()
    assert cr.load_pretrained_(net, name) is net
    saved = torch.load(SHARED / cr.FILES[name], weights_only=True, map_location="cpu")["state_dict"]
    assert not torch.equal(net.linear.weight, before)
    assert torch.equal(net.layer3[-1].conv2.weight, saved["module.layer3.%d.conv2.weight" % (len(net.layer3) - 1)])


@needs_shared
def test_a_changed_byte_is_refused_naming_the_file_and_both_digests(tmp_path):
    copy = tmp_path / cr.FILES["cifar_resnet20"]
    shutil.copyfile(SHARED / copy.name, copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(data)
    actual = hashlib.sha256(data).hexdigest()
    with pytest.raises(ValueError) as err:
        cr.load_pretrained_(cr.build("cifar_resnet20"), "cifar_resnet20", tmp_path)
    message = str(err.value)
    assert str(copy) in message and actual in message and cr.SHA256["cifar_resnet20"] in message
    assert "\n" not in message


def _test_images(per_class: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``per_class`` test images of each class, streamed from the archive (not unpacked)."""
    found = {c: [] for c in CLASSES}
    with tarfile.open(SHARED / "cifar10-jpeg.tar.gz", "r:gz") as archive:
        for member in archive:
            parts = member.name.split("/")
            if len(parts) != 4 or parts[1] != "test" or not member.isfile() or len(found[parts[2]]) >= per_class:
                continue
            found[parts[2]].append(Image.open(io.BytesIO(archive.extractfile(member).read())).convert("RGB"))
            if all(len(v) == per_class for v in found.values()):
                break
    assert all(len(v) == per_class for v in found.values())
    pixels = np.stack([np.asarray(im) for c in CLASSES for im in found[c]])
    images = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    mean, std = (torch.tensor(s).view(1, 3, 1, 1) for s in cr.STATS)
    return (images - mean) / std, torch.arange(len(CLASSES)).repeat_interleave(per_class)


@needs_shared
def test_pretrained_resnet20_classifies_real_test_images():
    x, y = _test_images(30)
    assert x.shape == (300, 3, 32, 32)
    net = cr.load_pretrained_(cr.build("cifar_resnet20"), "cifar_resnet20", SHARED).eval()
    with torch.no_grad():
        accuracy = (net(x).argmax(1) == y).float().mean().item()
    print(f"resnet20 accuracy on 300 shared CIFAR-10 test JPEGs: {accuracy:.1%}")
    assert accuracy >= 0.70
