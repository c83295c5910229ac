"""Filter removal through option-A shortcuts is exact (issue 25): Torch-Pruning, taught by
`ChannelPadPruner`, removes the same channels that a masked network zeroes, at every stage boundary."""
import copy

import pytest
import torch
import torch_pruning as tp

from prunelab.models import cifar_resnet as C

# The convs whose outputs carry each stage's residual stream (the group's leader), and every layer
# that reads that stream: the masked reference zeroes a removed channel at each reader's input.
STREAM = {"conv1": "layer1", "layer2.0.conv2": "layer2", "layer3.0.conv2": "layer3"}
NEXT = {"layer1": "layer2", "layer2": "layer3", "layer3": None}


def _readers(net, stage):
    first = 0 if stage == "layer1" else 1  # a later stage's first block reads the stage before
    readers = [f"{stage}.{i}.conv1" for i in range(first, len(getattr(net, stage)))]
    after = NEXT[stage]
    return readers + ([f"{after}.0.conv1", f"{after}.0.shortcut"] if after else ["linear"])


def _net(name):
    torch.manual_seed(0)
    net = C.build(name).eval()
    for m in net.modules():  # BN statistics that are not the identity, so a wrong channel shows
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    return net


def _masked(net, plan):
    """A copy of ``net`` whose readers see the planned channels of each stream as zeros."""
    ref = copy.deepcopy(net)
    modules = dict(ref.named_modules())

    def zero(idxs):
        def hook(_module, args):
            x = args[0].clone()
            x[:, idxs] = 0
            return (x,)
        return hook

    for leader, idxs in plan.items():
        for reader in _readers(ref, STREAM[leader]):
            modules[reader].register_forward_pre_hook(zero(idxs))
    return ref


def _remove_(net, plan, x):
    graph = tp.DependencyGraph().build_dependency(net, example_inputs=x,
                                                  customized_pruners={C.ChannelPadShortcut: C.ChannelPadPruner()})
    modules = dict(net.named_modules())
    for leader, idxs in plan.items():
        graph.get_pruning_group(modules[leader], tp.prune_conv_out_channels, idxs=idxs).prune()


# Channels in the padded zone of a stage's output (layer2: 0-7 and 24-31) and channels placed from the
# stage before (layer2: 8-23 <- 0-15), removed on each side of each boundary.
PLANS = {
    "stage 1 only": {"conv1": [0, 5, 15]},
    "stage 2, padded and placed": {"layer2.0.conv2": [0, 8, 10, 31]},
    "stage 3, padded and placed": {"layer3.0.conv2": [3, 16, 40, 63]},
    "every stage": {"conv1": [0, 5], "layer2.0.conv2": [0, 10, 31], "layer3.0.conv2": [3, 40]},
}


@pytest.mark.parametrize("name", ["cifar_resnet20", "cifar_resnet32"])
@pytest.mark.parametrize("plan", PLANS.values(), ids=PLANS.keys())
def test_removal_equals_masking_through_option_a_shortcuts(name, plan):
    torch.set_num_threads(1)
    net = _net(name)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        masked = _masked(net, plan)(x)
    _remove_(net, plan, x)
    with torch.no_grad():
        removed = net(x)
    assert (removed - masked).abs().max() <= 1e-6 * masked.abs().max()
    removed_channels = {STREAM[leader]: len(idxs) for leader, idxs in plan.items()}
    widths = {"layer1": 16, "layer2": 32, "layer3": 64}
    for stage, width in widths.items():
        assert getattr(net, stage)[-1].conv2.out_channels == width - removed_channels.get(stage, 0)


def test_removal_twice_renumbers_the_placement():
    """A second round prunes the renumbered channels: still the masked network's function."""
    torch.set_num_threads(1)
    net = _net("cifar_resnet20")
    x = torch.randn(4, 3, 32, 32)
    first, second = {"conv1": [1, 2], "layer2.0.conv2": [9, 30]}, {"conv1": [0, 3], "layer2.0.conv2": [5, 20]}
    # the second round's indices number the channels left after the first: map them back for the reference
    left = {k: [i for i in range(16 if k == "conv1" else 32) if i not in v] for k, v in first.items()}
    both = {k: sorted(first[k] + [left[k][i] for i in second[k]]) for k in first}
    with torch.no_grad():
        masked = _masked(net, both)(x)
    _remove_(net, first, x)
    _remove_(net, second, x)
    with torch.no_grad():
        removed = net(x)
    assert (removed - masked).abs().max() <= 1e-6 * masked.abs().max()
    shortcut = net.layer2[0].shortcut
    assert (shortcut.in_channels, shortcut.out_channels) == (12, 28)
    assert shortcut.src.numel() == shortcut.dst.numel() <= 12


def test_drop_channels_keeps_an_unplaced_output_zero():
    sc = C.ChannelPadShortcut(4, 8, 1)  # dst = 2..5
    sc.drop_channels_([1], "in")  # the output channel that read input 1 stays, zero
    x = torch.arange(1.0, 4.0).view(1, 3, 1, 1)
    assert sc(x).flatten().tolist() == [0, 0, 1, 0, 2, 3, 0, 0]
    sc.drop_channels_([0, 3], "out")
    assert sc(x).flatten().tolist() == [0, 1, 2, 3, 0, 0] and sc.out_channels == 6
