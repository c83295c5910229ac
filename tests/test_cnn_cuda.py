"""GPU checks of filter removal (skipped without CUDA)."""
import copy

import pytest
import torch
import torchvision

from prunelab import removal

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.cuda
@cuda
def test_removal_equals_masking_on_cuda():
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=10).cuda().eval()
    x = torch.randn(8, 3, 64, 64, device="cuda")
    layers = removal.filter_layers(model, x)
    plan = {"layer1.0.conv1": [0, 3, 5], "layer2.0.conv2": list(range(0, 128, 3))}
    with torch.no_grad(), removal.masked_filters(model, plan, layers):
        masked = model(x)
    pruned = removal.remove_filters_(copy.deepcopy(model), plan, x).eval()
    with torch.no_grad():
        out = pruned(x)
    assert out.is_cuda and torch.allclose(out, masked, atol=1e-4, rtol=0)
    assert pruned.layer2[0].downsample[0].out_channels == 128 - len(plan["layer2.0.conv2"])


@pytest.mark.cuda
@cuda
def test_pruned_alexnet_is_faster_on_cuda():
    from prunelab import metrics

    model = torchvision.models.alexnet(weights=None).cuda().eval()
    x = torch.randn(128, 3, 224, 224, device="cuda")
    layers = removal.filter_layers(model, x)
    plan = {n: list(range(l.n_filters // 2)) for n, l in layers.items()}
    pruned = removal.remove_filters_(copy.deepcopy(model), plan, x).eval()
    assert metrics.latency(pruned, x, repeats=10) < metrics.latency(model, x, repeats=10)
