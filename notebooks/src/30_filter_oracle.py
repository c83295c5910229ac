# %% [markdown]
# # 30 · Which filter criterion tracks the oracle? (Molchanov et al. 2017, Table 1)
#
# **Question.** When ranking the feature maps (filters) of a transferred AlexNet-style network, which
# cheap criterion orders them most like the *oracle*, the true loss change when each filter alone
# is removed?
#
# **Paper.** Molchanov, Tyree, Karras, Aila & Kautz (ICLR 2017), *Pruning Convolutional Neural
# Networks for Resource Efficient Inference*: AlexNet/VGG-16 fine-tuned on Flowers-102/Birds-200;
# Taylor first-order criterion (Eq. 8) against minimum weight, mean activation, APoZ, OBD and
# random, scored by Spearman rank correlation with the oracle. Every criterion gets the same
# layer-wise normalisation (`normalize`: the paper's Sec. 2.3 L2 by default, or raw scores); the
# oracle stays raw, as the paper's reference.
# `default` transfers a small AlexNet-style net from Fashion-MNIST to scikit-learn's digits;
# `paper` fine-tunes torchvision's ImageNet AlexNet on Flowers-102. `model` and `dataset` run the
# same study on any torchvision classifier or your own `package.module:factory`, and any torchvision
# data set or folder of images (`prunelab run 30_filter_oracle -p model=resnet18 -p dataset=path/to/images`).
#
# **Claim checked.** Taylor correlates with the oracle better than weight norm, mean activation and
# APoZ (across layers, as the paper's Table 1).
#
# Parameters: `None` takes the profile's value (`prunelab run 30_filter_oracle -p key=value`).

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
criteria = None      # filter criteria compared with the oracle
first_share = None   # share of filters each criterion would remove first
score_examples = None  # held training examples used by every criterion and the oracle
score_batch = None
obd_examples = None  # per-example gradients used by OBD's empirical Fisher
normalize = None     # l2 | none: layer-wise normalisation applied to every criterion (the oracle stays raw)
run_dir = ""         # set by `prunelab run`

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from tqdm.auto import tqdm

from prunelab import removal, runner, train, transfer
from prunelab.criteria import filters
from prunelab.results import verdict

P, run = runner.start("30_filter_oracle", profile=profile, run_dir=run_dir, arch=arch, source=source, target=target,
                      target_limit=target_limit, model=model, weights=weights, dataset=dataset,
                      test_fraction=test_fraction, augment=augment, workers=workers, widths=widths, hidden=hidden, image_size=image_size,
                      source_train=source_train, source_epochs=source_epochs, lr=lr, batch_size=batch_size,
                      transfer_epochs=transfer_epochs, transfer_lr=transfer_lr, seed=seed, criteria=criteria,
                      first_share=first_share, score_examples=score_examples, score_batch=score_batch,
                      obd_examples=obd_examples, normalize=normalize)
device = train.pick_device()
print(f"profile {P.profile}; device {device}; run folder {run.path}")

# %% [markdown]
# ## The transferred model
# Pretrained on the source once per parameter set and fine-tuned on the target (both cached); or
# `model` (torchvision's, or your own factory) fine-tuned on `dataset`, its head replaced for its classes.

# %%
model, data, info = transfer.transferred_model(vars(P), device, progress=True)
layers = removal.filter_layers(model, data.example())
names = removal.rankable(layers)  # dependency groups, each named by its first conv; never the output layer
summary = pd.DataFrame([dict(model=info["model"], dataset=info["dataset"], classes=data.num_classes,
                             source_accuracy=info["source_accuracy"], target_accuracy=info["target_accuracy"],
                             filters=sum(layers[n].n_filters for n in names), layers=len(names))])
run.save_table("model", summary)
summary

# %% [markdown]
# ## Every criterion and the oracle on the same held batches
# The oracle masks each filter alone (zeroed where removal acts, equal to physical removal in eval
# mode) and records the loss change: `oracle` = |dC| (the paper's oracle-abs), `oracle_loss` = dC.
# Every criterion is normalised per layer as `normalize` says; the oracle stays raw.

# %%
batches = data.head(P.score_examples, P.score_batch)  # the first training images, fixed (shuffled once by seed)
held = sum(len(y) for _, y in batches)  # score_examples, or every training image when there are fewer
context = dict(batches=batches, layers=layers, generator=torch.Generator().manual_seed(P.seed), max_examples=P.obd_examples)
scores = {c: filters.FILTER_CRITERIA[c](model, names, **context, normalize=P.normalize) for c in tqdm(P.criteria, desc="criteria")}
reference = {r: filters.FILTER_CRITERIA[r](model, names, **context, normalize="none", progress=True) for r in ("oracle", "oracle_loss")}
corr = pd.concat([filters.oracle_correlation(scores, reference[r]).assign(reference=r) for r in reference], ignore_index=True)
corr["normalize"] = P.normalize
scored = f"{filters.describe_normalization(P.normalize)}; oracle raw"
run.save_table("correlation", corr)
corr[corr.reference == "oracle"].pivot(index="criterion", columns="layer", values="spearman").loc[P.criteria].round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 0.5 * len(P.criteria) + 2), sharey=True)
for ax, (ref, part) in zip(axes, corr.groupby("reference")):
    grid = part.pivot(index="criterion", columns="layer", values="spearman").loc[P.criteria, [*names, "all layers"]]
    sns.heatmap(grid, annot=True, fmt=".2f", cmap="RdBu_r", vmin=-1, vmax=1, ax=ax, cbar=ax is axes[-1])
    ax.set_title(f"Spearman correlation with {ref}")
fig.subplots_adjust(top=0.8)  # room for the two-line title above the panels' own
fig.suptitle(f"{info['model']} on {info['dataset']}: criteria vs oracle ({held} held examples)\n{scored}")
run.save_figure(fig, "oracle_correlation")

# %% [markdown]
# ## Which layers would each criterion prune first?
# The `first_share` lowest-ranked filters of a global ranking (every criterion normalised as
# `normalize` says), as a share of each layer's filters.

# %%
total = sum(layers[n].n_filters for n in names)
rows = []
for crit, s in {**scores, "oracle": reference["oracle"]}.items():
    plan = removal.plan_from_scores(s, int(P.first_share * total), min_filters=1)
    rows += [dict(criterion=crit, layer=n, depth=i, removed=len(plan.get(n, [])), share=len(plan.get(n, [])) / layers[n].n_filters)
             for i, n in enumerate(names)]
first = pd.DataFrame(rows).assign(normalize=P.normalize)
run.save_table("pruned_first", first)
fig, ax = plt.subplots(figsize=(9, 3.5))
sns.barplot(data=first, x="layer", y="share", hue="criterion", ax=ax)
ax.set_ylabel(f"share of layer's filters among the first {P.first_share:.0%}")
ax.set_title(scored, fontsize=9)
run.save_figure(fig, "pruned_first")
first.pivot(index="criterion", columns="layer", values="share").round(2)

# %% [markdown]
# ## Claim: Taylor tracks the oracle better than weight norm, activation and APoZ
# Judged on the across-layer Spearman correlation with oracle-abs (the paper's Table 1 measure).

# %%
pooled = corr[(corr.reference == "oracle") & (corr.layer == "all layers")].set_index("criterion").spearman
rivals = [c for c in ("weight_norm", "activation", "apoz") if c in pooled]
holds = bool(all(pooled["taylor"] > pooled[c] for c in rivals)) if "taylor" in pooled and rivals else None
run.record_claim("taylor-best-oracle-correlation",
                 "Taylor correlates with the oracle better than weight norm, mean activation and APoZ",
                 "Spearman with oracle-abs, all layers pooled: " + ", ".join(f"{c}" for c in ["taylor", *rivals]),
                 "; ".join(f"{c}={pooled[c]:.3f}" for c in ["taylor", *rivals] if c in pooled), verdict(holds),
                 detail=f"{scored}; per-layer mean: taylor={corr[(corr.reference == 'oracle') & (corr.criterion == 'taylor') & (corr.layer != 'all layers')].spearman.mean():.3f}")

# %%
run.finish()
