# %% [markdown]
# # 32 · Residual coupling: which ResNet filters can be removed, and how
#
# **Question.** In a residual network the output channels of a stage's stem or shortcut and of every
# block's last conv are *added* together. Can such a conv lose filters on its own, and what does
# a remover have to do instead?
#
# **Paper / notes.** Molchanov et al. (ICLR 2017) prune AlexNet/VGG chains; the seed poster noted that
# layers feeding a residual addition cannot be pruned independently. Torch-Pruning (Fang et al.,
# CVPR 2023, *DepGraph*) groups coupled channels; we prune a group together or leave it alone.
# A small CIFAR-style ResNet trained on scikit-learn's digits (upsampled) is the example.
#
# **Claims checked.** (1) Removing filters from a conv that feeds a residual addition, alone,
# breaks the network; (2) pruning each coupled group together keeps the network exactly equal to
# the masked one (eval mode, <= 1e-5).
#
# Parameters: `None` takes the profile's value (`prunelab run 32_resnet_coupling -p key=value`).

# %%
profile = ""          # smoke | default | paper; "" reads $PRUNELAB_PROFILE, else default
widths = None         # stage widths of the ResNet
image_size = None
epochs = None         # training epochs on digits
lr = None
batch_size = None
seed = None
prune_share = None    # share of each layer's (or coupled group's) filters removed
score_examples = None  # training examples for the Taylor scores
finetune_epochs = None
latency_batch = None
latency_repeats = None
run_dir = ""          # set by `prunelab run`

# %%
import copy

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from torch import nn

from prunelab import metrics, removal, runner, train
from prunelab.criteria import filters
from prunelab.data.images import load_digit_images
from prunelab.models.cnn import resnet_small
from prunelab.results import cached_checkpoint, verdict

P, run = runner.start("32_resnet_coupling", profile=profile, run_dir=run_dir, widths=widths, image_size=image_size,
                      epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, prune_share=prune_share,
                      score_examples=score_examples, finetune_epochs=finetune_epochs, latency_batch=latency_batch,
                      latency_repeats=latency_repeats)
print(f"profile {P.profile}; run folder {run.path}")

# %% [markdown]
# ## Train the ResNet on digits (cached by its parameters)

# %%
data = load_digit_images(size=P.image_size, seed=P.seed)
key = dict(widths=P.widths, image_size=P.image_size, epochs=P.epochs, lr=P.lr, batch_size=P.batch_size, seed=P.seed)

def fit():
    gen = train.seed_all(P.seed)
    net = resnet_small(10, 1, tuple(P.widths))
    hist = train.train_classifier_(net, data["x_train"], data["y_train"], epochs=P.epochs, lr=P.lr, batch_size=P.batch_size,
                                   generator=gen, progress=True)
    return {"state_dict": net.state_dict(), "history": hist}

model = resnet_small(10, 1, tuple(P.widths))
model.load_state_dict(cached_checkpoint("cnn-resnet", key, fit)["state_dict"])
model.eval()
x, y = data["x_test"], data["y_test"]
print(f"test accuracy {metrics.accuracy(model, x, y):.4f}")

# %% [markdown]
# ## Which convs are coupled?
# From Torch-Pruning's dependency graph: a conv's group holds every conv whose output channels are
# tied to its own.

# %%
layers = removal.filter_layers(model, x[:1])
groups = {}
for name, layer in layers.items():
    groups.setdefault(tuple(sorted((name, *layer.coupled))), []).append(name)
rows = []
for name, layer in layers.items():
    members = sorted((name, *layer.coupled))
    reason = ("independent: its feature maps feed only the next conv" if not layer.coupled else
              f"coupled: its channels are summed with those of {', '.join(layer.coupled)} at residual additions; "
              f"pruned together as one group")
    rows.append(dict(conv=name, point=layer.point, filters=layer.n_filters, group=" + ".join(members), coupled=bool(layer.coupled), reason=reason))
coupling = pd.DataFrame(rows)
run.save_table("coupling", coupling)
coupling[["conv", "point", "filters", "coupled", "group"]]

# %% [markdown]
# ## Removing filters from one coupled conv alone breaks the addition
# A naive remover slices `layers.0.0.conv2` and its batch-norm only; the block's residual addition
# then meets tensors of different widths.

# %%
def slice_alone(net, conv_name, bn_name, keep):
    conv, bn = net.get_submodule(conv_name), net.get_submodule(bn_name)
    new_conv = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, conv.stride, conv.padding, bias=False)
    new_conv.weight.data = conv.weight.data[keep].clone()
    new_bn = nn.BatchNorm2d(len(keep)).eval()
    for attr in ("weight", "bias", "running_mean", "running_var"):
        getattr(new_bn, attr).data = getattr(bn, attr).data[keep].clone()
    parent = net.get_submodule(conv_name.rpartition(".")[0])
    setattr(parent, conv_name.rpartition(".")[2], new_conv)
    setattr(parent, bn_name.rpartition(".")[2], new_bn)
    return net

coupled_conv = next(n for n, layer in layers.items() if layer.coupled and n.endswith("conv2"))
naive = slice_alone(copy.deepcopy(model), coupled_conv, coupled_conv[:-5] + "bn2", list(range(1, layers[coupled_conv].n_filters)))
try:
    naive(x[:2])
    naive_error = ""
except RuntimeError as err:
    naive_error = str(err).splitlines()[0]
print(f"{coupled_conv} pruned alone -> {naive_error or 'no error'}")

# %% [markdown]
# ## Prune with Taylor: independent convs, coupled groups, both
# Each independent conv loses its `prune_share` lowest-Taylor filters; each coupled group loses the
# channels with the lowest *summed* Taylor score over its members, removed from all of them.

# %%
xs, ys = data["x_train"][:P.score_examples], data["y_train"][:P.score_examples]
scores = filters.taylor(model, removal.rankable(layers), batches=[(xs, ys)], layers=layers)  # one vector per group

def layer_plan(s):
    return removal.plan_from_scores({"l": s}, int(P.prune_share * len(s)), min_filters=1).get("l", [])

plan_independent = {n: layer_plan(scores[n]) for n in removal.independent(layers)}
plan_coupled = {n: layer_plan(scores[n]) for n in removal.rankable(layers) if layers[n].coupled}
base_flops, base_params = metrics.flops(model, x[:1]), metrics.count_params(model)
lat_x = torch.zeros(P.latency_batch, *x.shape[1:])
metrics.latency(model, lat_x, repeats=P.latency_repeats)  # throwaway: the first timed passes in a process run slow
base_latency = metrics.latency(model, lat_x, repeats=P.latency_repeats)
rows, pruned_models = [], {}
for variant, plan in {"independent convs": plan_independent, "coupled groups": plan_coupled,
                      "both": {**plan_independent, **plan_coupled}}.items():
    with torch.no_grad(), removal.masked_filters(model, plan, layers):
        masked = model(x)
    pruned = removal.remove_filters_(copy.deepcopy(model), plan, x[:1]).eval()
    with torch.no_grad():
        out = pruned(x)
    pruned_models[variant] = pruned
    rows.append(dict(variant=variant, filters_removed=sum(len(v) for v in plan.values()),
                     max_abs_diff=float((out - masked).abs().max()), accuracy_masked=float((masked.argmax(1) == y).float().mean()),
                     accuracy_pruned=metrics.accuracy(pruned, x, y), params=metrics.count_params(pruned),
                     params_fraction=metrics.count_params(pruned) / base_params, flops_fraction=metrics.flops(pruned, x[:1]) / base_flops,
                     speedup_cpu=base_latency / metrics.latency(pruned, lat_x, repeats=P.latency_repeats)))
equivalence = pd.DataFrame(rows)
run.save_table("equivalence", equivalence)
equivalence.round(6)

# %% [markdown]
# ## Fine-tune the fully pruned ResNet
# Filters per conv before and after, and accuracy recovered by `finetune_epochs` of fine-tuning.

# %%
both = pruned_models["both"]
before_ft = metrics.accuracy(both, x, y)
train.train_classifier_(both, data["x_train"], data["y_train"], epochs=P.finetune_epochs, lr=P.lr / 3, batch_size=P.batch_size,
                        generator=torch.Generator().manual_seed(P.seed))
after = removal.filter_layers(both, x[:1])
filters_table = pd.DataFrame([dict(conv=n, coupled=bool(layers[n].coupled), before=layers[n].n_filters, after=after[n].n_filters)
                              for n in layers])
finetune = pd.DataFrame([dict(accuracy_unpruned=metrics.accuracy(model, x, y), accuracy_pruned=before_ft,
                              accuracy_finetuned=metrics.accuracy(both, x, y))])
run.save_table("filters", filters_table)
run.save_table("finetune", finetune)
fig, ax = plt.subplots(figsize=(10, 3.5))
long = filters_table.melt(id_vars=["conv", "coupled"], value_vars=["before", "after"], var_name="when", value_name="filters")
sns.barplot(data=long, x="conv", y="filters", hue="when", ax=ax)
for label in ax.get_xticklabels():
    label.set_rotation(60); label.set_ha("right")
    if coupling.set_index("conv").coupled[label.get_text()]:
        label.set_color("tab:red")
ax.set_title("ResNet filters per conv before/after pruning (red: coupled by residual additions, pruned as groups)")
run.save_figure(fig, "resnet_filters")
finetune.round(4)

# %% [markdown]
# ## Claims

# %%
run.record_claim("coupled-conv-alone-breaks", "A conv feeding a residual addition cannot be pruned independently",
                 f"forward pass after slicing {coupled_conv} alone", naive_error or "no error", verdict(bool(naive_error)))
worst = float(equivalence.max_abs_diff.max())
run.record_claim("coupled-groups-pruned-together", "Pruning coupled channels together keeps the net equal to the masked one",
                 "max |pruned - masked| over test images, all variants (eval mode)", f"{worst:.2e}", verdict(worst <= 1e-5),
                 detail=f"'both' keeps {equivalence.set_index('variant').flops_fraction['both']:.3f} of the FLOPs")
pd.read_csv(run.path / "claims.csv")[["id", "value", "verdict"]]

# %%
run.finish()
