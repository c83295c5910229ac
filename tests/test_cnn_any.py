"""Any model, any images: notebook 31 on a user's nn.Module factory and an image folder the test
writes; one-line errors for every bad model, weights or data set, before any work; streamed data;
heads found and replaced on any classifier; hidden linear units pruned like filters."""
import copy
import json
import sys
import textwrap

import pandas as pd
import pytest
import torch
from torch import nn

from prunelab import cli, removal, runner, structured
from prunelab.data import imagesets, imagesources
from prunelab.models import cnn, zoo
from prunelab.params import ParameterError

FACTORY = textwrap.dedent("""
    from torch import nn

    def small(num_classes=10):
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                             nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                             nn.Linear(48, 16), nn.ReLU(), nn.Linear(16, num_classes))

    def grey():  # no num_classes argument: its head is replaced
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7))

    def not_a_model():
        return 42
""")


def write_images(root, classes=3, per_class=12, size=16, seed=0):
    """``root/<class>/<i>.png``: tiny RGB images, one tint per class so they can be told apart."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    for c in range(classes):
        (root / f"class{c}").mkdir(parents=True)
        tint = np.zeros(3)
        tint[c % 3] = 150
        for i in range(per_class):
            pixels = (rng.random((size, size, 3)) * 100 + tint).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture
def user(tmp_path, monkeypatch):
    """A folder holding the module ``mynets``, the folder ``prunelab run`` starts from: ``model=mynets:...``
    imports from it (here and, via the inherited $PRUNELAB_CALLER_DIR, in the kernel), nothing else does."""
    (tmp_path / "mynets.py").write_text(FACTORY)
    monkeypatch.setenv("PRUNELAB_CALLER_DIR", str(tmp_path))  # also restores what `prunelab run` sets
    sys.modules.pop("mynets", None)
    yield tmp_path
    sys.modules.pop("mynets", None)


def test_31_runs_on_a_user_model_and_an_image_folder(user, runs, monkeypatch):
    write_images(user / "images")
    monkeypatch.chdir(user)  # relative folder and module, as a user types them
    code = cli.main(["run", "31_filter_pruning", "--profile", "smoke", "--quiet", "-p", "model=mynets:small",
                     "-p", "dataset=images", "-p", "prune_linear=true"])
    assert code == 0
    (folder,) = [p for p in (runs / "31_filter_pruning").iterdir() if p.is_dir()]
    params = json.loads((folder / "params.json").read_text())
    assert params["dataset"] == str(user / "images") and params["model"] == "mynets:small"
    levels = pd.read_csv(folder / "tables" / "levels.csv")
    assert set(levels.criterion) == {"taylor", "weight_norm", "random"}
    for _, part in levels.groupby("criterion"):
        assert part.flops_fraction.iloc[0] == 1.0 and part.flops_fraction.iloc[-1] <= 0.6
    per_layer = pd.read_csv(folder / "tables" / "filters_per_layer.csv")
    assert set(per_layer.kind) == {"conv", "linear"} and set(per_layer.layer.astype(str)) == {"0", "4", "8"}  # never "10", the output
    claims = pd.read_csv(folder / "claims.csv")
    assert set(claims.id) == {"flops-within-1pt", "taylor-deeper-first", "finetune-time-falls", "speedup-below-flop-reduction",
                              "taylor-tries-to-empty-layers"}
    assert (folder / "figures" / "accuracy_vs_flops_params.png").exists() and (folder / "complete.json").exists()


@pytest.mark.parametrize("overrides, message", [
    ({"model": "resnet81"}, 'parameter model="resnet81" is not a torchvision classification model (close matches: resnet18'),
    ({"model": "nosuchpkg.nets:small"}, "names module 'nosuchpkg.nets', which cannot be imported (ModuleNotFoundError"),
    ({"model": "mynets:large"}, "parameter model=\"mynets:large\" names no callable 'large' in module 'mynets'"),
    ({"model": "resnet18", "weights": "IMAGENET1K_V9"},
     "parameter weights=\"IMAGENET1K_V9\" is not among resnet18's weights (IMAGENET1K_V1, DEFAULT; or none"),
    ({"weights": "DEFAULT"}, 'parameter weights="DEFAULT" needs model set to a torchvision model name'),
    ({"dataset": "cifar"}, 'parameter dataset="cifar" is neither a folder nor a known data set (close matches: CIFAR10'),
    ({"dataset": "./no/such/folder"}, "names no folder (no/such/folder does not exist)"),
    ({"dataset": "FLAT"}, "which has no class sub-folders (ImageFolder layout: <folder>/<class>/<image>"),
    ({"dataset": "SPLIT"}, "which has no class sub-folders"),
])
def test_bad_models_and_data_sets_are_refused_in_one_line(user, overrides, message):
    flat = user / "flat"  # images but no class sub-folders
    flat.mkdir()
    (flat / "a.png").write_bytes(b"")
    split = user / "split"  # train/ with classes, test/ without
    write_images(split / "train", classes=2, per_class=1)
    (split / "test").mkdir()
    given = {k: {"FLAT": str(flat), "SPLIT": str(split)}.get(v, v) for k, v in overrides.items()}
    with pytest.raises(ParameterError) as err:
        runner.resolve("31_filter_pruning", "smoke", given)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_good_names_pass_the_checks(user):
    p = runner.resolve("30_filter_oracle", "smoke", {"model": "mobilenet_v3_small", "weights": "none", "dataset": "cifar10"})
    assert (p["model"], p["weights"], p["dataset"]) == ("mobilenet_v3_small", "none", "cifar10")
    assert runner.resolve("30_filter_oracle", "smoke", {"model": "mynets:small"})["model"] == "mynets:small"
    assert imagesources.dataset_kind("Flowers102") == ("torchvision", "Flowers102")


def test_image_folder_layouts_are_streamed_and_split(tmp_path):
    flat = write_images(tmp_path / "flat")
    data = imagesets.open_images(str(flat), image_size=8, test_fraction=0.25, seed=1)
    assert (len(data.train), len(data.test), data.num_classes, data.classes) == (27, 9, 3, ("class0", "class1", "class2"))
    assert not isinstance(data.train, torch.utils.data.TensorDataset)  # decoded batch by batch, not held
    x, y = next(data.batches("train", 10, torch.Generator().manual_seed(0)))
    assert x.shape == (10, 3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.long
    assert data.head(6, 6)[0][1].unique().numel() > 1  # the first images (what criteria score) mix the classes
    test_labels = torch.cat([y for _, y in data.batches("test", 4)])
    assert test_labels.bincount().tolist() == [3, 3, 3]  # held out per class
    grey = imagesets.open_images(str(flat), image_size=8, channels=1, stats=((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)))
    assert grey.shape == (1, 8, 8) and grey.example().min() < 0  # normalised

    tv = tmp_path / "tv"  # train/ + val/ + test/: val joins training
    for split, n in (("train", 4), ("val", 2), ("test", 3)):
        write_images(tv / split, classes=2, per_class=n)
    data = imagesets.open_images(str(tv), image_size=8, limit=5)
    assert (len(data.train), len(data.test)) == (5, 5)
    assert (len(imagesets.open_images(str(tv), image_size=8).train), len(imagesets.open_images(str(tv), image_size=8).test)) == (12, 6)

    odd = tmp_path / "odd"  # a class missing from the test split
    write_images(odd / "train", classes=3, per_class=2)
    write_images(odd / "test", classes=2, per_class=2)
    with pytest.raises(ValueError, match=r"has classes class0, class1; .*train has class0, class1, class2"):
        imagesets.open_images(str(odd), image_size=8)


def test_torchvision_data_set_by_name_and_builtins():
    data = imagesets.open_images("fakedata", image_size=16, limit=12, augment=True)  # no download needed
    assert (data.name, data.num_classes, len(data.train), len(data.test)) == ("FakeData", 10, 12, 12)
    x, _ = next(data.batches("train", 6, torch.Generator().manual_seed(0)))
    assert x.shape == (6, 3, 16, 16)
    digits = imagesets.open_images("digits", image_size=16, channels=3)
    assert (len(digits.train), len(digits.test), digits.shape) == (1347, 450, (3, 16, 16))


def test_heads_found_and_replaced_on_any_classifier(user):
    squeeze = zoo.build("squeezenet1_1", 4, image_size=32)  # the head is a conv
    assert zoo.head_name(squeeze, torch.zeros(1, 3, 32, 32)) == "classifier.1" and squeeze.classifier[1].out_channels == 4
    assert squeeze(torch.zeros(2, 3, 32, 32)).shape == (2, 4)
    g1, g2 = (torch.Generator().manual_seed(3) for _ in range(2))
    a, b = zoo.build("resnet18", 5, image_size=32, generator=g1), zoo.build("resnet18", 5, image_size=32, generator=g2)
    assert a.fc.out_features == 5 and torch.equal(a.fc.weight, b.fc.weight)
    assert zoo.build("mynets:small", 3, image_size=16)[-1].out_features == 3  # built for 3 classes: its own head
    grey = zoo.build("mynets:grey", 3, image_size=16)
    assert grey[-1].out_features == 3 and zoo.in_channels(grey) == 1
    with pytest.raises(ValueError, match="model 'mynets:not_a_model' returned int, not an nn.Module"):
        zoo.build("mynets:not_a_model", 3)
    with pytest.raises(ValueError, match=r"images of shape \(3, 16, 16\) do not fit AlexNet"):
        zoo.build("alexnet", 3, image_size=16)
    assert zoo.input_stats("resnet18", "IMAGENET1K_V1") == zoo.IMAGENET_STATS  # from the weights' own transforms (no download)


def test_hidden_units_removed_like_filters_and_never_the_output():
    net = cnn.alexnet_small(widths=(4, 4, 4, 4, 4), hidden=8).eval()
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert "fc6" not in removal.filter_layers(net, x[:1])  # off unless asked for
    layers = removal.filter_layers(net, x[:1], linear=True)
    assert removal.rankable(layers) == ["conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7"]
    assert layers["fc6"].kind == "linear" and "model's output" in layers["fc8"].reason
    plan = {"fc6": [1, 5], "conv5": [0]}
    with removal.masked_filters(net, plan, layers):
        masked = net(x)
    pruned = removal.remove_filters_(copy.deepcopy(net), plan, x[:1], linear=True)
    assert pruned.fc6.out_features == 6 and pruned.fc7.in_features == 6 and pruned.fc8.out_features == 10
    assert torch.allclose(pruned(x), masked, atol=1e-6)
    with pytest.raises(ValueError, match="fc8' cannot be pruned: its channels are the model's output"):
        removal.remove_filters_(copy.deepcopy(net), {"fc8": [0]}, x[:1], linear=True)


def test_loop_prunes_hidden_units_with_the_filters():
    torch.manual_seed(0)
    model = cnn.alexnet_small(image_size=16, widths=(6, 6, 8, 8, 6), hidden=16)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 16, 16, generator=gen), torch.randint(0, 10, (64,), generator=gen)
    data = {"x_train": x[:48], "y_train": y[:48], "x_test": x[48:], "y_test": y[48:]}
    cfg = structured.PruneConfig(criterion="taylor", filters_per_step=8, batch_size=16, target_flops=0.5, min_filters=2,
                                 score_examples=16, latency_batch=2, latency_repeats=1, prune_linear=True)
    levels, per_layer = structured.prune_iteratively(model, data, cfg)
    table = pd.DataFrame(per_layer)
    assert set(table[table.kind == "linear"].layer) == {"fc6", "fc7"} and table.filters.min() >= 2
    assert table.groupby("level").removed_now.sum().tolist()[1:] == [8] * (len(levels) - 1)
    assert levels[-1]["flops_fraction"] <= 0.5
