# %% [markdown]
# # 21 · SNIP ablations: the initialisation it scores, and how much data it scores on
#
# **Question.** SNIP (Lee, Ajanthan & Torr 2019) prunes once, at initialisation, by the
# connection sensitivity |g * w| measured on a few batches. How much do its results on the NMT
# model depend on (a) the initialisation used for scoring and training and (b) the amount of
# data the sensitivities are measured on?
#
# **Protocol.** At a fixed high `sparsity`, for every init scheme (uniform +-0.1 as in the NMT
# baseline, Kaiming uniform/normal, Xavier uniform/normal; see `prunelab.models.seq2seq.INITS`)
# and seed: initialise, score on `saliency_batches` batches, prune class-blind over See et al.'s
# weight classes, train with the mask fixed for `snip_epochs`, measure test BLEU. Then, with the
# baseline's init, vary the saliency data from one batch to a large fraction of the training
# set at several batch sizes: final BLEU, and the overlap of each mask with the mask from the
# most data.
#
# **Claims checked.** (1) The initialisation changes SNIP's result materially, and the
# variance-scaled inits (Kaiming, Xavier) do best. (2) Saliency from about 1/20 of the data is
# within noise of saliency from all of it (here: the largest fraction tried, named in the claim).
# Noise is the spread over seeds. The claims are judged on test BLEU where the SNIP models reach
# `claims_min_bleu`, else on test perplexity (a short training leaves them below usable BLEU; the
# claim's detail says which).
#
# The next cell holds the parameters (`None` takes the profile's value; the NMT data, model and
# training parameters come from `profiles/_nmt.toml`).

# %%
profile = ""              # smoke | default | paper; "" reads $PRUNELAB_PROFILE, else default
# The NMT study's parameters (profiles/_nmt.toml; they decide the cached baseline):
direction = None
folder = None
data_root = None
lowercase = None
min_freq = None
max_vocab = None
max_len = None
train_size = None
eval_size = None
layers = None
emb_size = None
hidden = None
dropout = None
input_feed = None
init = None
optimizer = None
lr = None
batch_size = None
max_epochs = None
patience = None
lr_decay = None
clip = None
seed = None
max_steps = None
amp = None
beam = None
alpha = None
device = None
threads = None
# This notebook's own:
sparsity = None           # fraction of the classed weights SNIP removes
inits = None              # init schemes compared (see prunelab.models.seq2seq.INITS)
seeds = None              # seeds of the init draw, the saliency batches and the data order
saliency_batches = None   # batches scored in the init ablation
saliency_batch_size = None
snip_epochs = None        # epochs of fixed-mask training after pruning
snip_max_steps = None     # cap on steps per epoch; 0 means whole epochs
data_batch_sizes = None   # batch sizes of the data ablation
data_fractions = None     # fractions of the training pairs scored; 0 means one batch
data_seeds = None         # seeds of the data ablation
claim_fraction = None     # the "about 1/20 of the data" point of claim 2
eval_beam = None          # beam width of every BLEU in this notebook (1 is greedy), dense included
claims_min_bleu = None    # below this dense BLEU the BLEU-based claims are inconclusive
run_dir = ""              # set by `prunelab run`; "" derives the run folder from the parameters

# %%
import math

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from tqdm.auto import tqdm

from prunelab import nmt, obd_snip, results, runner, train
from prunelab.results import significance_verdict, verdict
from prunelab.sparse_init import prune_at_init_

OWN = ("eval_beam", "claims_min_bleu", "sparsity", "inits", "seeds", "saliency_batches", "saliency_batch_size",
       "snip_epochs", "snip_max_steps", "data_batch_sizes", "data_fractions", "data_seeds", "claim_fraction")
P, run = runner.start("21_snip_ablations", profile=profile, run_dir=run_dir,
                      **{name: globals()[name] for name in (*nmt.PARAMS, *OWN)})
if P.threads:
    torch.set_num_threads(P.threads)
bad = [i for i in P.inits if i not in nmt.INITS]
if bad:
    raise ValueError(f"unknown init scheme {bad[0]!r}; choose from {', '.join(nmt.INITS)}")
print(f"profile {P.profile}; run folder {run.path}")

# %% [markdown]
# ## Data and the dense reference
# The cached NMT baseline (dense, `init` of the NMT profile) is the reference line.

# %%
base = nmt.baseline(P)
corpus = base.corpus
dense = run.memo("dense", {}, lambda: obd_snip.evaluate(base.model, corpus, P.eval_beam, P.alpha))
train_cfg = nmt.TrainConfig.from_params(vars(P), max_epochs=P.snip_epochs, max_steps=P.snip_max_steps)
n_train = len(corpus["train"])
print(f"dense baseline test BLEU {dense['bleu']:.2f}; {n_train} training pairs; SNIP at sparsity {P.sparsity}")


def snip_point(init, seed, batch_size, n_batches, reference=None):
    """Prune at init, train with the mask fixed, evaluate; overlap of the mask with ``reference``."""
    batches = obd_snip.saliency_batches(corpus, batch_size, n_batches, seed=seed)
    cfg = nmt.TrainConfig.from_params(vars(train_cfg), seed=seed)
    model, masks, sal, history = obd_snip.snip_run(P, corpus, sparsity=P.sparsity, init=init, seed=seed,
                                                   batches=batches, train_config=cfg)
    overlap = obd_snip.mask_overlap(masks, reference) if reference is not None else float("nan")
    return dict(init=init, seed=seed, batch_size=batch_size, batches=sal.batches, examples=sal.examples,
                epochs=len(history) - 1, overlap_with_most=overlap, **obd_snip.evaluate(model, corpus, P.eval_beam, P.alpha))


# %% [markdown]
# ## (a) The initialisation used for scoring and training

# %%
grid = [(i, s) for i in P.inits for s in P.seeds]
rows = [run.memo("init", dict(init=i, seed=s), lambda: snip_point(i, s, P.saliency_batch_size, P.saliency_batches))
        for i, s in tqdm(grid, desc="inits x seeds")]
by_init = pd.DataFrame(rows)
run.save_table("init_ablation", by_init)
summary = by_init.groupby("init").bleu.agg(["mean", "std", "min", "max"]).reindex(P.inits)
summary.round(2)

# %%
fig, ax = plt.subplots(figsize=(7, 3.8))
sns.pointplot(data=by_init, x="init", y="bleu", order=P.inits, errorbar=("pi", 100), capsize=0.2, ax=ax,
              linestyle="none")
sns.stripplot(data=by_init, x="init", y="bleu", order=P.inits, color="0.4", size=4, ax=ax)
ax.axhline(dense["bleu"], color="k", ls="--", lw=1, label="dense baseline")
ax.set_ylabel("test BLEU after fixed-mask training")
ax.set_title(f"SNIP at {P.sparsity:.0%} sparsity by initialisation ({len(P.seeds)} seeds; bars = min..max)")
ax.legend()
run.save_figure(fig, "bleu_by_init")

# %% [markdown]
# ## (b) The amount of data scored
# A fraction f of the training pairs at batch size b is `ceil(f * N / b)` batches; f = 0 means
# one batch. Each mask is compared (Jaccard overlap of the kept weights) with the mask scored
# on the most data at the same seed.

# %%
def n_batches_for(fraction, batch_size):
    return 1 if fraction == 0 else max(1, math.ceil(fraction * n_train / batch_size))


def n_examples(fraction, batch_size):
    return min(n_train, n_batches_for(fraction, batch_size) * batch_size)


# The reference: the mask scored on the most data, at the batch size scoring the most examples.
b_most = max(P.data_batch_sizes, key=lambda b: n_examples(max(P.data_fractions), b))


def reference_masks(seed):
    """SNIP's mask at init from the most data (scoring only; saved in the run folder)."""
    def scored():
        batches = obd_snip.saliency_batches(corpus, b_most, n_batches_for(max(P.data_fractions), b_most), seed=seed)
        model = nmt.build_model(P, corpus, init=P.init, seed=seed)
        classes = nmt.weight_classes(model)
        masks, _ = prune_at_init_(model, P.sparsity, loss_fn=nmt.batch_loss, batches=batches,
                                  names=obd_snip.class_names(classes), classes=classes)
        return masks

    return run.tensors(f"masks/reference-s{seed}.pt", scored, map_location=train.pick_device(P.device))


grid = [(b, f, s) for b in P.data_batch_sizes for f in P.data_fractions for s in P.data_seeds]
data_rows = [{**run.memo("data", dict(batch_size=b, fraction=f, seed=s, init=P.init),
                         lambda: snip_point(P.init, s, b, n_batches_for(f, b), reference_masks(s))), "fraction": f}
             for b, f, s in tqdm(grid, desc="data amount")]
by_data = pd.DataFrame(data_rows).drop(columns=["init"])
by_data["scored_fraction"] = by_data.examples / n_train
run.save_table("data_ablation", by_data)
by_data.groupby(["batch_size", "fraction"])[["examples", "bleu", "overlap_with_most"]].mean().round(3)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
for ax, metric, label in zip(axes, ["bleu", "overlap_with_most"], ["test BLEU after training", "mask overlap (Jaccard) with most-data mask"]):
    sns.lineplot(data=by_data, x="scored_fraction", y=metric, hue="batch_size", marker="o", errorbar=("pi", 100),
                 palette="viridis", ax=ax)
    ax.set_xscale("log")
    ax.set_xlabel("fraction of the training pairs scored")
    ax.set_ylabel(label)
    if metric == "bleu":
        ax.axhline(dense["bleu"], color="k", ls="--", lw=1, label="dense")
        ax.axvline(P.claim_fraction, color="r", ls=":", lw=1)
fig.suptitle(f"SNIP at {P.sparsity:.0%}: how much data the saliency needs ({len(P.data_seeds)} seed(s); band = min..max)")
run.save_figure(fig, "bleu_vs_saliency_data")

# %% [markdown]
# ## The metric the claims are judged on
# BLEU where the dense baseline and the best mean SNIP BLEU of the init ablation reach
# `claims_min_bleu`; else test perplexity, which still separates models that translate nothing a
# BLEU difference could rank (inconclusive when the dense baseline itself is below it). "Better"
# is higher BLEU or lower perplexity.

# %%
inconclusive = dense["bleu"] < P.claims_min_bleu
on_bleu = by_init.groupby("init").bleu.mean().max() >= P.claims_min_bleu
metric, sign = ("bleu", 1) if on_bleu else ("ppl", -1)
name = "test BLEU" if on_bleu else "test perplexity"
why = (f"judged on {name}" + ("" if on_bleu else f": best mean SNIP BLEU {by_init.groupby('init').bleu.mean().max():.2f} "
                                              f"< {P.claims_min_bleu} after {P.snip_max_steps or 'whole'} steps x {P.snip_epochs} epoch(s)"))
stats = by_init.groupby("init")[metric].agg(["mean", "min", "max"]).reindex(P.inits)
stats["range"] = stats["max"] - stats["min"]
print(why)
stats.round(2)

# %% [markdown]
# ## Claim 1: the initialisation matters, and variance-scaled inits do best
# "Materially": the best and worst init (by mean over seeds) differ by more than the seed range
# (max - min over seeds) of either, else the claim is `within noise`. "Best": the best
# variance-scaled init (Kaiming or Xavier) against uniform: `reproduced` if it is better by more
# than the seed ranges of both, `not reproduced` if uniform is better by more than that, else
# `within noise`. Both need two or more seeds.

# %%
seeded = len(P.seeds) > 1 and not inconclusive
best, worst = (stats["mean"] * sign).idxmax(), (stats["mean"] * sign).idxmin()
spread = abs(stats.loc[best, "mean"] - stats.loc[worst, "mean"])
noise = max(stats.loc[best, "range"], stats.loc[worst, "range"])
means = ", ".join(f"{i} {m:.2f} (seeds {lo:.2f}..{hi:.2f})" for i, m, lo, hi in stats[["mean", "min", "max"]].itertuples())
run.record_claim("snip-init-matters", "The initialisation used for scoring and training changes SNIP's result materially",
                 f"best - worst init in mean {name} over {len(P.seeds)} seeds (noise: the larger seed range of the two)",
                 f"{spread:.2f} vs noise {noise:.2f}", significance_verdict(True, bool(spread > noise)) if seeded else "inconclusive",
                 f"{why}; best {best}, worst {worst}; {means}")
scaled = [i for i in P.inits if i != "uniform"]
if "uniform" in stats.index and scaled and seeded:
    top = (stats.loc[scaled, "mean"] * sign).idxmax()
    lead = sign * (stats.loc[top, "mean"] - stats.loc["uniform", "mean"])
    noise = max(stats.loc[top, "range"], stats.loc["uniform", "range"])
    best_vs = significance_verdict(bool(lead > 0), bool(abs(lead) > noise))
else:
    top, lead, noise, best_vs = "", float("nan"), float("nan"), "inconclusive"
run.record_claim("snip-variance-scaled-best", "Variance-scaled initialisations (Kaiming, Xavier) give SNIP its best results",
                 f"how much better the best variance-scaled init is than uniform in mean {name} (noise: the larger seed range of the two)",
                 f"{lead:.2f} vs noise {noise:.2f}", best_vs, f"{why}; best variance-scaled init {top}; {means}")

# %% [markdown]
# ## Claim 2: about 1/20 of the data is within noise of the most data
# At the batch size with the most points, SNIP scored on `claim_fraction` of the training pairs
# against the largest fraction tried (said in the claim: not the whole set unless it is 1):
# `reproduced` where the gap in the mean is within the larger of the two seed ranges, or where the
# smaller amount does better (more data did not help); `not reproduced` where it does worse by more
# than that. Needs two or more seeds.

# %%
b0 = P.saliency_batch_size if P.saliency_batch_size in P.data_batch_sizes else P.data_batch_sizes[0]
part = by_data[by_data.batch_size == b0]
most = part.fraction.max()
a, z = part[part.fraction == P.claim_fraction][metric], part[part.fraction == most][metric]
if len(P.data_seeds) > 1 and len(a) and len(z) and P.claim_fraction != most and not inconclusive:
    gap = sign * (a.mean() - z.mean())  # > 0: the claim fraction does better
    noise = max(a.max() - a.min(), z.max() - z.min())
    holds = verdict(bool(gap >= -noise))
else:
    gap, noise, holds = float("nan"), float("nan"), "inconclusive"
run.record_claim("snip-1-20-of-data-enough", "Saliency from about 1/20 of the training data is within noise of saliency from all of it",
                 f"mean {name} with fraction {P.claim_fraction} minus with the largest fraction tried, {most} "
                 f"({'the whole set' if most >= 1 else 'not the whole set'}), at batch size {b0}, signed so > 0 is better "
                 "(noise: the larger seed range)", f"{gap:.2f} vs noise {noise:.2f}", holds,
                 f"{why}; {len(P.data_seeds)} seeds; mean {name} {a.mean():.2f} (seeds {a.min():.2f}..{a.max():.2f}) vs "
                 f"{z.mean():.2f} (seeds {z.min():.2f}..{z.max():.2f}); mean mask overlap with the largest fraction's "
                 f"{part[part.fraction == P.claim_fraction].overlap_with_most.mean():.3f}")
pd.read_csv(run.path / "claims.csv")[["id", "value", "verdict"]]

# %%
run.finish()
