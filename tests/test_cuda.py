"""CUDA paths: masks, criteria, masked training, schedules and removal on the GPU agree with the CPU.

Marked ``cuda``: skipped without a GPU.  ``PRUNELAB_TEST_DEVICE=cpu`` runs the same checks
with the CPU standing in for the GPU (a dry run of this file on machines without one).
"""
import copy
import os
import warnings

import pytest
import torch
from torch import nn

from prunelab import masks, selection, train
from prunelab.criteria import magnitude, second_order
from prunelab.criteria.filters import taylor
from prunelab.models.cnn import alexnet_small
from prunelab.models.seq2seq import Seq2Seq, Seq2SeqConfig
from prunelab.schedules import Iterative, Polynomial

DEVICE = os.environ.get("PRUNELAB_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.cuda] if DEVICE == "cuda" else []


@pytest.fixture(autouse=True)
def exact_float32():
    """No TF32 on the GPU, so device and CPU results compare at fp32 tolerances."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def on(device, tensors):
    return {k: v.to(device) for k, v in tensors.items()}


def scores_with_ties(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {"a": torch.randn(64, 33, generator=g).abs(), "b": torch.randint(0, 50, (4000,), generator=g).float(),
            "c": torch.randn(7, 5, 3, generator=g).abs()}


@pytest.fixture(params=["whole", "streamed"])
def path(request, monkeypatch):
    """Both selection paths: one kthvalue, and the chunked sample/bracket/bisection."""
    if request.param == "streamed":
        monkeypatch.setattr(selection, "CAP", 256)
        monkeypatch.setattr(selection, "SAMPLE", 128)
        monkeypatch.setattr(selection, "CHUNK", {"cpu": 300, "cuda": 300})
    return request.param


@pytest.mark.parametrize("scheme", ["class-blind", "class-uniform", "class-distribution"])
def test_masks_identical_on_device(path, scheme):
    scores = scores_with_ties()
    classes = {"x": ["a", "c"], "y": ["b"]}
    weights = {n: s - s.mean() / 2 for n, s in scores.items()}  # a non-zero mean: sigma_c is not the RMS
    prev_cpu = masks.masks_from_scores(scores, 0.3, scheme, classes, weights=weights)
    prev_dev = masks.masks_from_scores(on(DEVICE, scores), 0.3, scheme, classes, weights=on(DEVICE, weights))
    for s in (0.3, 0.55, 0.9):
        cpu = masks.masks_from_scores(scores, s, scheme, classes, previous=prev_cpu, weights=weights)
        dev = masks.masks_from_scores(on(DEVICE, scores), s, scheme, classes, previous=prev_dev,
                                      weights=on(DEVICE, weights))
        assert all(m.device.type == DEVICE and m.dtype == torch.bool for m in dev.values())
        assert all(torch.equal(cpu[n], dev[n].cpu()) for n in cpu)


def test_random_masks_on_device_have_exact_counts():
    scores = on(DEVICE, scores_with_ties())
    g = torch.Generator(device=DEVICE).manual_seed(0)
    got = masks.masks_from_scores(scores, 0.4, "random", generator=g)
    n = sum(s.numel() for s in scores.values())
    assert all(m.device.type == DEVICE for m in got.values())
    assert sum(int((~m).sum()) for m in got.values()) == masks.n_to_prune(n, 0.4)


def test_iterative_schedule_masks_match_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    gpu_model = copy.deepcopy(model).to(DEVICE)
    schedule = Iterative(0.9, 3, geometric=True)
    prev_c = prev_g = None
    for step in range(1, 4):
        prev_c = masks.masks_from_scores(magnitude(model), schedule.sparsity_at(step), previous=prev_c)
        prev_g = masks.masks_from_scores(magnitude(gpu_model), schedule.sparsity_at(step), previous=prev_g)
        masks.apply_masks_(model, prev_c)
        masks.apply_masks_(gpu_model, prev_g)
        assert all(torch.equal(prev_c[n], prev_g[n].cpu()) for n in prev_c)
    assert Polynomial(0.9, 0, 10).sparsity_at(10) == pytest.approx(0.9)


@pytest.mark.parametrize("amp", [False, True])
def test_masked_training_keeps_zeros_on_device(amp):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(256, 20, generator=g), torch.randint(0, 5, (256,), generator=g)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))
    found = masks.masks_from_scores(magnitude(model), 0.7)
    dev_model = copy.deepcopy(model).to(DEVICE)
    hist = train.train_classifier_(dev_model, x.to(DEVICE), y.to(DEVICE), epochs=3, lr=1e-2, masks=on(DEVICE, found),
                                   generator=torch.Generator().manual_seed(1), amp=amp)
    params = dict(dev_model.named_parameters())
    assert all(p.device.type == DEVICE and p.dtype == torch.float32 for p in params.values())
    assert all(bool((params[n][~found[n].to(DEVICE)] == 0).all()) for n in found)
    if not amp:  # fp32 on the device follows the CPU run closely
        cpu_model = copy.deepcopy(model)
        cpu_hist = train.train_classifier_(cpu_model, x, y, epochs=3, lr=1e-2, masks=found, generator=torch.Generator().manual_seed(1))
        assert hist[-1]["loss"] == pytest.approx(cpu_hist[-1]["loss"], rel=1e-3)


def test_masked_step_on_lstm_keeps_zeros_and_flat_weights():
    torch.manual_seed(0)
    model = Seq2Seq(Seq2SeqConfig(50, 50, layers=2, emb_size=16, hidden=16, dropout=0.0)).to(DEVICE)
    found = masks.masks_from_scores(magnitude(model), 0.8)
    pairs = masks.bind_masks(model, found)
    masks.apply_masks_(pairs)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    src, lengths = torch.randint(4, 50, (8, 6), device=DEVICE), torch.full((8,), 6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            opt.zero_grad()
            model(src, lengths, src).sum().backward()
            masks.masked_step_(opt, pairs)
    assert all(bool((p[~m] == 0).all()) for p, m in pairs)
    # The LSTMs' flat weights (the list handed to their kernels) are the masked parameters themselves and,
    # on cuDNN, still views of one flat buffer: re-binding a parameter's .data would split that buffer
    # (cuDNN then warns and copies every weight at each forward).
    for lstm in (model.encoder, model.decoder):
        params = dict(lstm.named_parameters())
        for name, flat in zip(lstm._flat_weights_names, lstm._flat_weights):
            assert flat.device.type == DEVICE and flat.data_ptr() == params[name].data_ptr(), name
        if DEVICE == "cuda" and torch.backends.cudnn.enabled:
            assert len({w.untyped_storage().data_ptr() for w in lstm._flat_weights}) == 1
    assert not [w for w in caught if "contiguous chunk" in str(w.message)]
    # The same output as a freshly built CPU model given the masked weights; the zeros matter (0.01 instead
    # of each pruned weight changes it).
    state = {k: v.cpu() for k, v in model.state_dict().items()}
    filled = {k: torch.where(found[k].cpu(), v, 1e-2) if k in found else v for k, v in state.items()}
    with torch.no_grad():
        out = model.eval()(src, lengths, src).cpu()
        on_cpu = [Seq2Seq(model.config).eval() for _ in range(2)]
        for net, weights in zip(on_cpu, (state, filled)):
            net.load_state_dict(weights)
        torch.testing.assert_close(out, on_cpu[0](src.cpu(), lengths, src.cpu()), rtol=1e-4, atol=1e-5)
        assert not torch.allclose(out, on_cpu[1](src.cpu(), lengths, src.cpu()), atol=1e-3)


def test_criteria_match_cpu():
    torch.manual_seed(0)
    net = alexnet_small().eval()
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(8, 1, 32, 32, generator=g), torch.randint(0, 10, (8,), generator=g))]
    dev_net = copy.deepcopy(net).to(DEVICE)
    cpu_t = taylor(net, batches=batches)
    dev_t = taylor(dev_net, batches=[(x.to(DEVICE), y.to(DEVICE)) for x, y in batches])
    assert all(dev_t[n].device.type == DEVICE and torch.allclose(cpu_t[n], dev_t[n].cpu(), rtol=1e-3, atol=1e-5) for n in cpu_t)

    def loss(m, b):
        return nn.functional.cross_entropy(m(b[0]), b[1])
    for fn in (second_order.snip, second_order.obd):
        cpu_s = fn(net, loss_fn=loss, batches=batches)
        dev_s = fn(dev_net, loss_fn=loss, batches=batches)
        assert all(dev_s[n].device.type == DEVICE for n in dev_s)
        assert all(torch.allclose(cpu_s[n], dev_s[n].cpu(), rtol=1e-2, atol=1e-6) for n in cpu_s)
    dev_batches = [(x.to(DEVICE), y.to(DEVICE)) for x, y in batches]
    h = second_order.obd(dev_net, loss_fn=loss, batches=dev_batches, estimator="hutchinson", probes=2)
    assert all(v.device.type == DEVICE and bool(torch.isfinite(v).all()) for v in h.values())
    # Same probes on the device: exact (double backward) and central-difference products agree on
    # a smooth network (with ReLU and max-pooling they need not: see hutchinson_diagonal).
    smooth = nn.Sequential(nn.Flatten(), nn.Linear(32 * 32, 16), nn.Tanh(), nn.Linear(16, 10)).to(DEVICE)
    est = {hvp: second_order.hessian_diagonal(smooth, loss_fn=loss, batches=dev_batches, estimator="hutchinson", probes=2,
                                              hvp=hvp, generator=torch.Generator(device=DEVICE).manual_seed(0))[0]
           for hvp in ("autograd", "central")}
    for n, v in est["autograd"].items():
        assert est["central"][n].device.type == DEVICE
        assert torch.allclose(est["central"][n], v, rtol=1e-2, atol=1e-3 * float(v.abs().max()))


def test_structured_removal_on_device_matches_cpu():
    from prunelab.bench.structured import prunelab_pruned

    torch.manual_seed(0)
    net = alexnet_small().eval()
    example = torch.zeros(1, 1, 32, 32)
    cpu_pruned = prunelab_pruned(net, example, 0.5)
    dev_pruned = prunelab_pruned(copy.deepcopy(net).to(DEVICE), example.to(DEVICE), 0.5)
    x = torch.rand(4, 1, 32, 32)
    with torch.no_grad():
        assert torch.allclose(cpu_pruned(x), dev_pruned(x.to(DEVICE)).cpu(), rtol=1e-3, atol=1e-4)
    assert next(dev_pruned.parameters()).device.type == DEVICE
