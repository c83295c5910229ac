# %% [markdown]
# # 31 · Iterative filter pruning: accuracy, FLOPs, measured speed and training time
#
# **Question.** Pruning whole filters makes a network really smaller; how much of its computation
# can go before target accuracy falls, which criterion keeps accuracy best, and does the measured
# speed follow the FLOP count?
#
# **Paper.** Molchanov et al. (ICLR 2017), Fig. 1 and Sec. 3: rank feature maps, remove the least
# important, fine-tune, repeat ("comparing levels of pruning in AlexNet" on Flowers-102). Removal
# is physical (Torch-Pruning's dependency graph: the next conv / linear lose their inputs).
# `default`: small AlexNet-style net, Fashion-MNIST -> digits; `paper`: ImageNet AlexNet -> Flowers-102.
# Any torchvision classifier or your own `package.module:factory` (`model`), on any torchvision data
# set or folder of images (`dataset`), runs the same way. `prune_linear` ranks and removes the hidden
# linear units too (same criteria, same removal; never the output layer), which the paper leaves whole.
#
# **Claims checked.** (1) a large share of FLOPs (>= 50%) goes with at most 1 point of target
# accuracy lost after fine-tuning (Taylor); (2) Taylor removes deeper-layer filters first;
# (3) fine-tuning time per epoch falls as filters are removed; (4) measured speedup stays below the
# FLOP reduction (the ratio is reported); (5) Taylor tries to empty layers, i.e. comes closer to
# emptying one than a random ranking (the poster: "it is not uncommon to try to prune all filters
# in a layer"), measured on each iteration's ranking whatever the step size: how few of its lowest scores would
# take every filter of some layer (`removal.empty_ranks`); the `min_filters` guard's overrides are
# counted too.
#
# Parameters: `None` takes the profile's value (`prunelab run 31_filter_pruning -p key=value`).

# %%
profile = ""         # smoke | default | paper; "" reads $PRUNELAB_PROFILE, else default
arch = None          # alexnet_small | tv_alexnet_imagenet (when model is "")
source = None        # fashion_mnist | imagenet
target = None        # digits | flowers102 (when dataset is "")
target_limit = None  # images per split of the target (or dataset); 0 keeps all
model = None         # "" keeps arch; else a torchvision model (resnet18) or package.module:factory
weights = None       # the torchvision model's weights (IMAGENET1K_V1, DEFAULT); "" or none for random
dataset = None       # "" keeps target; else digits, fashion_mnist, a torchvision data set (CIFAR10) or an image folder
test_fraction = None # share of each class held out when the data set has no test split
augment = None       # random crops and flips on the training images (model or dataset set)
workers = None       # DataLoader worker processes
widths = None        # filters of conv1..conv5 (alexnet_small)
hidden = None        # width of fc6/fc7 (alexnet_small)
image_size = None
source_train = None  # Fashion-MNIST training images used for pretraining
source_epochs = None
lr = None            # pretraining learning rate
batch_size = None
transfer_epochs = None
transfer_lr = None
seed = None
criteria = None      # filter criteria compared
filters_per_step = None  # filters removed per iteration
finetune_epochs = None   # fine-tuning epochs after each removal
finetune_lr = None
target_flops = None  # stop at this fraction of the original FLOPs
min_filters = None   # the fewest filters a layer keeps
score_examples = None
score_batch = None
latency_batch = None  # batch size of the latency measurement
latency_repeats = None
normalize = None     # l2 | none: layer-wise normalisation of every criterion's scores before the global ranking
prune_linear = None  # true: hidden linear units are ranked and removed with the filters (never the output layer)
run_dir = ""         # set by `prunelab run`

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from scipy.stats import mannwhitneyu, spearmanr
from tqdm.auto import tqdm

from prunelab import runner, structured, train, transfer
from prunelab.criteria import filters
from prunelab.results import significance_verdict, verdict

P, run = runner.start("31_filter_pruning", profile=profile, run_dir=run_dir, arch=arch, source=source, target=target,
                      target_limit=target_limit, model=model, weights=weights, dataset=dataset,
                      test_fraction=test_fraction, augment=augment, workers=workers, widths=widths, hidden=hidden, image_size=image_size,
                      source_train=source_train, source_epochs=source_epochs, lr=lr, batch_size=batch_size,
                      transfer_epochs=transfer_epochs, transfer_lr=transfer_lr, seed=seed, criteria=criteria,
                      filters_per_step=filters_per_step, finetune_epochs=finetune_epochs, finetune_lr=finetune_lr,
                      target_flops=target_flops, min_filters=min_filters, score_examples=score_examples,
                      score_batch=score_batch, latency_batch=latency_batch, latency_repeats=latency_repeats,
                      normalize=normalize, prune_linear=prune_linear)
device = train.pick_device()
print(f"profile {P.profile}; device {device}; run folder {run.path}")
model, data, info = transfer.transferred_model(vars(P), device, progress=True)
print(f"{info['model']} on {info['dataset']} ({data.num_classes} classes): source accuracy {info['source_accuracy']}, "
      f"target accuracy {info['target_accuracy']:.4f}")

# %% [markdown]
# ## Prune with each criterion until the FLOPs target
# Every criterion's scores are normalised per layer as `normalize` says before the global ranking;
# with `prune_linear`, the hidden linear layers' units are ranked with the filters.
# Every level is cached in the run folder, so an interrupted run resumes by criterion.

# %%
def prune(criterion):
    cfg = structured.PruneConfig(criterion=criterion, normalize=P.normalize, filters_per_step=P.filters_per_step, finetune_epochs=P.finetune_epochs,
                                 lr=P.finetune_lr, batch_size=P.batch_size, target_flops=P.target_flops,
                                 min_filters=P.min_filters, score_examples=P.score_examples, score_batch=P.score_batch,
                                 latency_batch=P.latency_batch, latency_repeats=P.latency_repeats, seed=P.seed,
                                 prune_linear=P.prune_linear)
    levels, per_layer = structured.prune_iteratively(model, data, cfg, progress=True)
    return dict(levels=levels, per_layer=per_layer)

# per_layer="empty_rank": a cache written before the loop recorded how close each ranking came to emptying a layer lacks it.
results = {c: run.memo("criterion", dict(criterion=c, per_layer="empty_rank"), lambda: prune(c))
           for c in tqdm(P.criteria, desc="criteria")}
levels = pd.concat([pd.DataFrame(r["levels"]) for r in results.values()], ignore_index=True)
per_layer = pd.concat([pd.DataFrame(r["per_layer"]) for r in results.values()], ignore_index=True)
base = levels[levels.level == 0].iloc[0]
levels["flop_reduction"] = base.flops / levels.flops
levels["speedup_cpu"] = levels.groupby("criterion").latency_cpu_s.transform("first") / levels.latency_cpu_s
# Every criterion's level 0 is the same unpruned net: the spread of its timings measures the machine's noise.
level0 = levels[levels.level == 0]
noise = {c: float(level0[c].max() / level0[c].min()) for c in ("latency_cpu_s", "finetune_s_per_epoch")}
print(f"max/min of the unpruned net's timings over {len(level0)} repeats: {noise}")
run.save_table("levels", levels)
run.save_table("filters_per_layer", per_layer)
levels[["criterion", "level", "removed", "accuracy", "accuracy_before_finetune", "params", "flops_fraction",
        "latency_cpu_s", "finetune_s_per_epoch"]].round(4)

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
sns.lineplot(data=levels, x="flops_fraction", y="accuracy", hue="criterion", marker="o", ax=axes[0])
sns.lineplot(data=levels, x="params", y="accuracy", hue="criterion", marker="o", ax=axes[1], legend=False)
axes[0].invert_xaxis(); axes[1].invert_xaxis()
axes[0].set_xlabel("FLOPs remaining (fraction of the unpruned net)"); axes[1].set_xlabel("parameters remaining")
axes[0].set_ylabel("target test accuracy after fine-tuning")
fig.suptitle(f"{info['model']} on {info['dataset']}: pruning levels per criterion ({P.filters_per_step} filters per step)\n"
             f"{filters.describe_normalization(P.normalize)}")
run.save_figure(fig, "accuracy_vs_flops_params")

# %%
grid = sns.relplot(data=per_layer, x="level", y="filters", hue="layer", col="criterion", kind="line", marker="o",
                   col_wrap=min(3, len(P.criteria)), height=2.8, aspect=1.2)
grid.figure.suptitle(f"filters remaining per layer as pruning proceeds ({filters.describe_normalization(P.normalize)})", y=1.02)
run.save_figure(grid.figure, "filters_per_layer")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4))
sns.scatterplot(data=levels, x="flop_reduction", y="speedup_cpu", hue="criterion", ax=axes[0])
top = float(levels.flop_reduction.max())
axes[0].plot([1, top], [1, top], "k--", lw=1, label="speedup = FLOP reduction")
axes[0].set_xlabel("FLOP reduction (x)"); axes[0].set_ylabel(f"measured CPU speedup (x), batch {P.latency_batch}")
axes[0].legend(fontsize=7)
sns.lineplot(data=levels, x="flops_fraction", y="finetune_s_per_epoch", hue="criterion", marker="o", ax=axes[1])
axes[1].invert_xaxis(); axes[1].set_xlabel("FLOPs remaining (fraction)"); axes[1].set_ylabel("fine-tuning seconds per epoch")
run.save_figure(fig, "speedup_and_training_time")

# %% [markdown]
# ## Where the loop stopped a criterion from emptying a layer
# Each iteration removes the k = `filters_per_step` lowest scores over all layers, but a layer keeps
# `min_filters`: where the criterion's k lowest take more of a layer than that allows (`wanted_now` >
# `removed_now`), the loop's guard overrides it and removes the next-lowest filters elsewhere. One
# row per iteration and layer where that happened; `would_empty` marks a choice of every filter left.
#
# The guard only fires when k is large against a layer, so its count depends on the step size and
# on how far the loop goes. The ranking itself says more: removing filters one at a time in the
# criterion's order (the paper's protocol, without re-scoring), layer l is empty after `empty_rank`
# removals. `empty_share`, the smallest of these over layers as a share of all filters left, is how
# far down its own ranking a criterion would empty a layer: near 1 when every layer keeps some
# well-ranked filters (random ranks give ~m/(m+1) for a layer of m), small when one layer's filters
# are all among the lowest. Counting reads the scores only: the pruned nets are the same as without it.

# %%
per_layer["filters_before"] = per_layer.filters + per_layer.removed_now
guard = per_layer[per_layer.wanted_now > per_layer.removed_now].assign(
    would_empty=lambda d: d.wanted_now >= d.filters_before)[
    ["criterion", "level", "layer", "kind", "filters_before", "wanted_now", "removed_now", "would_empty"]]
run.save_table("guard_overrides", guard)
iterations = levels[levels.level > 0].groupby("criterion").size().reindex(P.criteria, fill_value=0)
by_level = guard.groupby(["criterion", "level"]).would_empty.any().reset_index()
guard_summary = pd.DataFrame(dict(
    criterion=P.criteria, iterations=iterations.to_numpy(),
    overridden=by_level.groupby("criterion").size().reindex(P.criteria, fill_value=0).to_numpy(),
    would_empty=by_level.groupby("criterion").would_empty.sum().reindex(P.criteria, fill_value=0).to_numpy(),
    layers=[", ".join(dict.fromkeys(guard[guard.criterion == c].layer.astype(str))) for c in P.criteria]))
guard_summary["overridden_share"] = guard_summary.overridden / guard_summary.iterations.clip(lower=1)
run.save_table("guard_by_criterion", guard_summary)

ranked = per_layer[per_layer.level > 0].assign(filters_before=per_layer.filters + per_layer.removed_now)
empty = ranked.groupby(["criterion", "level"]).apply(
    lambda d: pd.Series(dict(empty_share=d.empty_rank.min() / d.filters_before.sum(),
                             layer=d.layer.iloc[int(d.empty_rank.argmin())])), include_groups=False).reset_index()
run.save_table("empty_share", empty)
guard_summary.merge(empty.groupby("criterion").empty_share.median().rename("median_empty_share").reset_index())

# %% [markdown]
# ## Claims
# Judged on this run's own numbers. "Deeper first": the mean depth (conv index / last index) of
# the filters Taylor removes in its first quarter of levels, against the mean depth of all filters
# of the unpruned net (conv filters only: hidden linear units, when pruned, are not feature maps).
# "Tries to empty a layer": Taylor's `empty_share` over its iterations against a random ranking's,
# the ranking with no preference for any layer (one-sided Mann-Whitney U, p < 0.05: the iterations
# are the noise); reproduced if Taylor's is lower beyond noise (its lowest scores gather in one layer
# more than chance), not reproduced if higher beyond noise, within noise otherwise; inconclusive
# without Taylor and random, or with fewer than 3 iterations of either. The other criteria's tests
# are in the detail.

# %%
taylor = levels[levels.criterion == "taylor"] if "taylor" in P.criteria else levels[levels.criterion == P.criteria[0]]
ok = taylor[taylor.accuracy >= base.accuracy - 0.01]
kept_share = float(1 - ok.flops_fraction.min())
run.record_claim("flops-within-1pt", f"A large share (>= 50%) of FLOPs goes with at most 1 point of target accuracy lost ({taylor.criterion.iloc[0]})",
                 "largest FLOP share removed with accuracy >= unpruned - 0.01, after fine-tuning", f"{kept_share:.3f}",
                 verdict(kept_share >= 0.5), detail=f"unpruned accuracy {base.accuracy:.4f}; target_flops {P.target_flops}")

convs = per_layer[per_layer.kind == "conv"]
layer_names = list(dict.fromkeys(convs.layer))
depth = {n: i / max(len(layer_names) - 1, 1) for i, n in enumerate(layer_names)}
pl = convs.assign(depth=convs.layer.map(depth))
start = pl[(pl.level == 0) & (pl.criterion == taylor.criterion.iloc[0])]
all_depth = float((start.depth * start.filters).sum() / start.filters.sum())
quarter = max(1, int(taylor["level"].max()) // 4)
early = pl[(pl.criterion == taylor.criterion.iloc[0]) & (pl.level >= 1) & (pl.level <= quarter)]
early_depth = float((early.depth * early.removed_now).sum() / max(early.removed_now.sum(), 1))
run.record_claim("taylor-deeper-first", "The Taylor criterion removes deeper-layer filters first",
                 f"mean depth of filters removed in levels 1..{quarter} vs mean depth of all filters (0 = conv1, 1 = last conv)",
                 f"{early_depth:.3f} vs {all_depth:.3f}", verdict(early_depth > all_depth))

rho, pvalue = spearmanr(levels.flops_fraction, levels.finetune_s_per_epoch)
last = levels.loc[levels.groupby("criterion")["level"].idxmax()]
time_ratio = float(last.finetune_s_per_epoch.mean() / base.finetune_s_per_epoch)
run.record_claim("finetune-time-falls", "Fine-tuning time per epoch falls as filters are removed",
                 "Spearman(FLOPs fraction, seconds per epoch) over all levels; mean last/first seconds",
                 f"rho={rho:.3f} (p={pvalue:.2g}); last/first={time_ratio:.3f}",
                 verdict(None if noise["finetune_s_per_epoch"] > 1.5 else bool(rho > 0 and pvalue < 0.05 and time_ratio < 1)),
                 detail=f"unpruned net's seconds per epoch vary {noise['finetune_s_per_epoch']:.2f}x between repeats (inconclusive above 1.5x)")

ratio = last.speedup_cpu / last.flop_reduction
run.record_claim("speedup-below-flop-reduction", "Measured speedup stays below the FLOP reduction",
                 f"CPU speedup / FLOP reduction at each criterion's last level (batch {P.latency_batch}, {int(base.threads)} threads)",
                 "; ".join(f"{c}={r:.3f}" for c, r in zip(last.criterion, ratio)),
                 verdict(None if noise["latency_cpu_s"] > 1.5 else bool((ratio < 1).all())),
                 detail=f"unpruned latency varies {noise['latency_cpu_s']:.2f}x between repeats (inconclusive above 1.5x); " + "; ".join(f"{c}: {s:.2f}x speed for {f:.2f}x fewer FLOPs" for c, s, f in zip(last.criterion, last.speedup_cpu, last.flop_reduction)))
shares = {c: empty[empty.criterion == c].empty_share.to_numpy() for c in P.criteria}
median = {c: float(pd.Series(v).median()) if len(v) else float("nan") for c, v in shares.items()}
tests = {}
if "taylor" in P.criteria and len(shares["taylor"]) >= 3:
    for c in P.criteria:
        if c != "taylor" and len(shares[c]) >= 3:
            lower = mannwhitneyu(shares["taylor"], shares[c], alternative="less").pvalue
            higher = mannwhitneyu(shares["taylor"], shares[c], alternative="greater").pvalue
            tests[c] = (float(lower), float(higher))
if "random" not in tests:
    empties, result = verdict(None), "no Taylor and random runs of 3 iterations or more to compare"
else:
    lower, higher = tests["random"]
    empties = significance_verdict(lower < 0.05, beyond_noise=lower < 0.05 or higher < 0.05)
    result = "closer than random" if lower < 0.05 else "farther than random" if higher < 0.05 else "within noise of random"
run.record_claim("taylor-tries-to-empty-layers", "Taylor comes closer to emptying a layer than a random ranking does",
                 "median over pruning iterations of the share of its ranking after which a layer would be empty "
                 "(removal.empty_ranks; lower = closer to emptying a layer), Taylor vs random, "
                 "one-sided Mann-Whitney U over iterations, p < 0.05",
                 "; ".join(f"{c}={m:.3f}" for c, m in median.items()),
                 empties,
                 detail=f"Taylor {result}; " + "; ".join(f"vs {c}: p(lower)={lo:.3g}, p(higher)={hi:.3g}" for c, (lo, hi) in tests.items())
                 + "; layer emptied first: " + "; ".join(f"{c}: {', '.join(dict.fromkeys(empty[empty.criterion == c].layer.astype(str)))}" for c in P.criteria)
                 + "; min_filters guard overrides: " + "; ".join(f"{r.criterion} {r.overridden} of {r.iterations}"
                                                                 for r in guard_summary.itertuples()))
pd.read_csv(run.path / "claims.csv")[["id", "value", "verdict"]]

# %%
run.finish()
