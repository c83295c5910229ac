# %% [markdown]
# # 00 · A tour of prunelab: the four See et al. schemes on a digits MLP
#
# **Question.** How much of a small classifier can be pruned, in one shot and without retraining,
# before accuracy falls, and does the choice of scheme matter?
#
# **Paper.** See, Luong & Manning (2016), *Compression of Neural Machine Translation Models via
# Pruning*, define three magnitude schemes (class-blind, class-uniform, class-distribution) and
# compare them with random pruning. Here the "classes" are the layers of an MLP trained on
# scikit-learn's bundled digits, so the whole loop (train, score, mask, measure, plot, record a
# claim) runs in seconds.
#
# **Claim checked.** Magnitude pruning (class-blind) keeps accuracy better than random pruning at
# every sparsity of 50% and above.
#
# The next cell holds the parameters. `None` takes the profile's value (`smoke`, `default`,
# `paper`; set `profile`, or the environment variable `PRUNELAB_PROFILE`). `prunelab run 00_tour
# -p key=value` or papermill inject values here.

# %%
profile = ""        # smoke | default | paper; "" reads $PRUNELAB_PROFILE, else default
seeds = None        # list of seeds; one model per seed
hidden = None       # hidden layer widths of the MLP
epochs = None       # dense training epochs
lr = None           # Adam learning rate
batch_size = None
sparsities = None   # fractions of weights removed
schemes = None      # subset of class-blind, class-uniform, class-distribution, random
retrain_epochs = None  # masked retraining epochs for the retrain curve
run_dir = ""        # set by `prunelab run`; "" derives the run folder from the parameters

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from tqdm.auto import tqdm

from prunelab import criteria, masks, metrics, models, runner, train
from prunelab.data import load_digits
from prunelab.results import verdict

P, run = runner.start("00_tour", profile=profile, run_dir=run_dir, seeds=seeds, hidden=hidden, epochs=epochs,
                      lr=lr, batch_size=batch_size, sparsities=sparsities, schemes=schemes,
                      retrain_epochs=retrain_epochs)
print(f"profile {P.profile}; run folder {run.path}")

# %% [markdown]
# ## Train one dense model per seed
# Seeding comes first, so the model, the data order and random pruning are all reproducible.

# %%
data = load_digits()
dense = {}
for seed in tqdm(P.seeds, desc="dense models"):
    gen = train.seed_all(seed)
    model = models.mlp([64, *P.hidden, 10])
    train.train_classifier_(model, data["x_train"], data["y_train"], epochs=P.epochs, lr=P.lr,
                            batch_size=P.batch_size, generator=gen)
    dense[seed] = model.state_dict()
    print(f"seed {seed}: dense test accuracy {metrics.accuracy(model, data['x_test'], data['y_test']):.4f}")

# %% [markdown]
# ## Prune with each scheme at each sparsity
# Scores are weight magnitudes; the classes are the layers' weight matrices (biases are not
# pruned, as in See et al.). Each grid point is cached in the run folder, so an interrupted run
# resumes where it stopped.

# %%
def evaluate(seed, scheme, sparsity, retrain):
    model = models.mlp([64, *P.hidden, 10])
    model.load_state_dict(dense[seed])
    scores = criteria.magnitude(model)
    m = masks.masks_from_scores(scores, sparsity, scheme, generator=torch.Generator().manual_seed(seed),
                                weights=dict(model.named_parameters()))
    masks.apply_masks_(model, m)
    if retrain:
        train.train_classifier_(model, data["x_train"], data["y_train"], epochs=P.retrain_epochs, lr=P.lr / 10,
                                batch_size=P.batch_size, masks=m, generator=torch.Generator().manual_seed(seed))
    report = masks.sparsity_report(model, m)
    return dict(seed=seed, scheme=scheme, sparsity=sparsity, retrained=retrain,
                achieved=float(report.sparsity.iloc[-1]),
                accuracy=metrics.accuracy(model, data["x_test"], data["y_test"]))

grid = [(seed, scheme, s, r) for seed in P.seeds for scheme in P.schemes for s in P.sparsities for r in (False, True)]
rows = [run.memo("point", dict(seed=a, scheme=b, sparsity=c, retrain=d), lambda: evaluate(a, b, c, d))
        for a, b, c, d in tqdm(grid, desc="grid")]
table = pd.DataFrame(rows)
run.save_table("accuracy", table)
table.groupby(["retrained", "scheme", "sparsity"]).accuracy.mean().unstack("scheme").round(4)

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
for ax, (retrained, part) in zip(axes, table.groupby("retrained")):
    sns.lineplot(data=part, x="sparsity", y="accuracy", hue="scheme", marker="o", ax=ax, errorbar=("pi", 100))
    ax.set_title("after masked retraining" if retrained else "no retraining")
    ax.set_xlabel("sparsity (fraction of weights removed)")
axes[0].set_ylabel("test accuracy")
fig.suptitle(f"Digits MLP {P.hidden}: accuracy vs sparsity ({len(P.seeds)} seed(s), band = min..max)")
run.save_figure(fig, "accuracy_vs_sparsity")

# %% [markdown]
# ## Where did class-blind pruning remove weights?
# The sparsity report counts the actual zeros in each parameter at the largest sparsity tried.

# %%
model = models.mlp([64, *P.hidden, 10])
model.load_state_dict(dense[P.seeds[0]])
m = masks.masks_from_scores(criteria.magnitude(model), max(P.sparsities), "class-blind")
masks.apply_masks_(model, m)
report = masks.sparsity_report(model, m)
run.save_table("sparsity_report", report)
report

# %% [markdown]
# ## Claim: class-blind magnitude pruning beats random pruning at sparsity >= 50%
# Compared on the mean over seeds, without retraining.

# %%
mean = table[~table.retrained].groupby(["scheme", "sparsity"]).accuracy.mean().unstack("scheme")
high = mean[mean.index >= 0.5]
if {"class-blind", "random"} <= set(mean.columns) and len(high):
    margin = (high["class-blind"] - high["random"]).min()
    holds = bool(margin > 0)
else:
    margin, holds = float("nan"), None
run.record_claim("tour-blind-beats-random", "Class-blind magnitude pruning keeps more accuracy than random pruning at every sparsity >= 50%",
                 "min over sparsities >= 0.5 of accuracy(class-blind) - accuracy(random), no retraining",
                 f"{margin:.4f}", verdict(holds))

# %%
run.finish()
