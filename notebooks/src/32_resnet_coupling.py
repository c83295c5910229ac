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
# the masked one (eval mode, <= 1e-5); (3) training time per epoch falls with the pruning level on
# each architecture, this ResNet and notebook 31's AlexNet-style net (Molchanov et al. 2017: "compare
# training time on various model"), beyond the timing noise of repeated measurements.
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
alexnet_widths = None  # filters of conv1..conv5 of the AlexNet-style net timed beside the ResNet (31's)
alexnet_hidden = None  # width of its fc6/fc7
timing_shares = None   # pruning levels timed: share of every layer's filters removed
timing_steps = None    # timed training steps per level and repeat (their median is taken)
timing_repeats = None  # repeats of every level's timing (the median is plotted; the range is the noise)
timing_threads = None  # CPU threads of the timed steps; 0 keeps torch's default
run_dir = ""          # set by `prunelab run`

# %%
import copy

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from scipy.stats import spearmanr
from torch import nn
from tqdm.auto import tqdm

from prunelab import metrics, removal, runner, structured, train, transfer
from prunelab.criteria import filters
from prunelab.data.images import load_digit_images
from prunelab.models.cnn import resnet_small
from prunelab.results import cached_checkpoint, significance_verdict, verdict

P, run = runner.start("32_resnet_coupling", profile=profile, run_dir=run_dir, widths=widths, image_size=image_size,
                      epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, prune_share=prune_share,
                      score_examples=score_examples, finetune_epochs=finetune_epochs, latency_batch=latency_batch,
                      latency_repeats=latency_repeats, alexnet_widths=alexnet_widths, alexnet_hidden=alexnet_hidden,
                      timing_shares=timing_shares, timing_steps=timing_steps, timing_repeats=timing_repeats,
                      timing_threads=timing_threads)
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
# ## Training time per epoch against pruning level, on two architectures
# Each level removes `timing_shares` of every prunable layer's (or coupled group's) filters at once
# (`structured.prune_to_share`, lowest weight norm: the shape, and so the time, is the same for any
# criterion), from this ResNet and from notebook 31's AlexNet-style net (`alexnet_widths`,
# `alexnet_hidden`, random weights). A measurement is the median of `timing_steps` Adam steps on one
# batch of `batch_size` training images, on `timing_threads` CPU thread(s), times the batches of one
# epoch. Every point is measured `timing_repeats` times, each repeat running the levels in the opposite
# order to the last, so a slow spell of the shared machine is not read as a level's cost; the figure
# shows the median and, as error bars, the range of the repeats.

# %%
torch.manual_seed(P.seed)
nets = {"resnet_small": model,
        "alexnet_small": transfer.build_model("alexnet_small", 10, P.image_size, 1, P.alexnet_widths, P.alexnet_hidden)}
pruned = {(a, s): structured.prune_to_share(net, x[:1], s) for a, net in nets.items() for s in P.timing_shares}
shape = {k: dict(params=metrics.count_params(net), flops_fraction=metrics.flops(net, x[:1]) / metrics.flops(nets[k[0]], x[:1]))
         for k, net in pruned.items()}
xb, yb = data["x_train"][:P.batch_size], data["y_train"][:P.batch_size]
epoch_batches = -(-len(data["x_train"]) // P.batch_size)

def time_level(a, s):
    return dict(step_s=metrics.train_step_seconds(pruned[a, s], xb, yb, steps=P.timing_steps, lr=P.lr, threads=P.timing_threads))

rows = []
for r in tqdm(range(P.timing_repeats), desc="timing repeats"):
    for a in nets:
        for s in (P.timing_shares if r % 2 == 0 else P.timing_shares[::-1]):
            step_s = run.memo("train_step", dict(arch=a, share=s, repeat=r), lambda: time_level(a, s))["step_s"]
            rows.append(dict(arch=a, share=s, repeat=r, step_s=step_s, s_per_epoch=step_s * epoch_batches, **shape[a, s]))
timing = pd.DataFrame(rows).sort_values(["arch", "share", "repeat"], ignore_index=True)
run.save_table("training_time", timing)
per_level = timing.groupby(["arch", "share"]).agg(s_per_epoch=("s_per_epoch", "median"), low=("s_per_epoch", "min"),
                                                  high=("s_per_epoch", "max"), flops_fraction=("flops_fraction", "first"),
                                                  params=("params", "first")).reset_index()
per_level["relative_time"] = per_level.s_per_epoch / per_level.groupby("arch").s_per_epoch.transform("first")
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
for (a, part), color in zip(per_level.groupby("arch"), ("tab:blue", "tab:orange")):
    axes[0].errorbar(part.share, part.s_per_epoch, yerr=[part.s_per_epoch - part.low, part.high - part.s_per_epoch],
                     marker="o", capsize=3, color=color, label=a)
    axes[1].plot(part.share, part.relative_time, marker="o", color=color, label=f"{a}: time")
    axes[1].plot(part.share, part.flops_fraction, ls="--", color=color, label=f"{a}: FLOPs")
axes[0].set_xlabel("pruning level (share of every layer's filters removed)")
axes[0].set_ylabel(f"training seconds per epoch ({epoch_batches} batches of {P.batch_size})")
axes[1].set_xlabel("pruning level (share of every layer's filters removed)"); axes[1].set_ylabel("fraction of the unpruned net")
axes[0].legend(fontsize=8); axes[1].legend(fontsize=7)
fig.suptitle(f"training time per epoch against pruning level: median of {P.timing_repeats} repeats (bars: range), "
             f"{P.timing_steps} timed steps each, {P.timing_threads or torch.get_num_threads()} CPU thread(s)")
run.save_figure(fig, "training_time_vs_level")
per_level.round(4)

# %% [markdown]
# ## Claims

# %%
run.record_claim("coupled-conv-alone-breaks", "A conv feeding a residual addition cannot be pruned independently",
                 f"forward pass after slicing {coupled_conv} alone", naive_error or "no error", verdict(bool(naive_error)))
worst = float(equivalence.max_abs_diff.max())
run.record_claim("coupled-groups-pruned-together", "Pruning coupled channels together keeps the net equal to the masked one",
                 "max |pruned - masked| over test images, all variants (eval mode)", f"{worst:.2e}", verdict(worst <= 1e-5),
                 detail=f"'both' keeps {equivalence.set_index('variant').flops_fraction['both']:.3f} of the FLOPs")

by_arch = {}
for a, part in per_level.groupby("arch"):
    rho, p = spearmanr(part.share, part.s_per_epoch)
    first, last = timing[(timing.arch == a) & (timing.share == part.share.min())], timing[(timing.arch == a) & (timing.share == part.share.max())]
    apart = bool(first.s_per_epoch.max() < last.s_per_epoch.min() or last.s_per_epoch.max() < first.s_per_epoch.min())
    spread = float((part.high / part.low).median())
    by_arch[a] = dict(rho=float(rho), p=float(p), apart=apart, spread=spread,
                      verdict=significance_verdict(bool(rho < 0), beyond_noise=bool(p < 0.05 and apart)))
verdicts = {v["verdict"] for v in by_arch.values()}
overall = ("reproduced" if verdicts == {"reproduced"} else "not reproduced" if "not reproduced" in verdicts else "within noise")
run.record_claim("training-time-falls-per-arch", "Training time per epoch falls with pruning level on each architecture",
                 f"Spearman(level, median seconds per epoch over {P.timing_repeats} repeats) per architecture; beyond noise when "
                 f"p < 0.05 and the repeats' ranges at the first and last level do not overlap",
                 "; ".join(f"{a}: rho={v['rho']:.3f} (p={v['p']:.2g})" for a, v in by_arch.items()), overall,
                 detail="; ".join(f"{a}: {v['verdict']}, first/last level ranges {'apart' if v['apart'] else 'overlap'}, "
                                  f"repeats vary {v['spread']:.2f}x (median max/min per level)" for a, v in by_arch.items()))
pd.read_csv(run.path / "claims.csv")[["id", "value", "verdict"]]

# %%
run.finish()
