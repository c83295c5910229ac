# %% [markdown]
# # 20 · Optimal Brain Damage and SNIP against magnitude pruning on the NMT model
#
# **Question.** On the attention LSTM translation model of the NMT study (Multi30k), how do two
# data-driven saliencies compare with the weight magnitude that See et al. prune by?
#
# **Papers.** LeCun, Denker & Solla (1989), *Optimal Brain Damage*: delete the weights with the
# smallest saliency 0.5 * h_kk * w_k^2 at a trained model, h_kk the Hessian diagonal (here the
# empirical Fisher of the same token-mean loss, from *per-sentence* gradients, or Hutchinson's
# estimator; see `prunelab.criteria.second_order`). OBD assumes a minimum, where h_kk >= 0; an
# estimate that comes out negative is used as |h_kk|, so no large weight is pruned first for it. Lee, Ajanthan & Torr (2019), *SNIP*: score the
# connections once, at initialisation, by |dL/dc| = |g * w| on a few batches, prune, and train
# the sparse network with the mask held fixed. See, Luong & Manning (2016): class-blind
# magnitude pruning; random pruning is the floor.
#
# **Protocol.** Magnitude, random and OBD prune the cached trained baseline, evaluated without
# retraining; SNIP prunes a fresh model at initialisation (the baseline's init scheme) and trains
# it with the mask fixed for `snip_epochs` (its "no retraining" point is its trained sparse
# model). Then the best `retrain_top` methods are retrained with the mask fixed (SNIP: trained
# further by the same amount). Every method prunes class-blind over See et al.'s weight classes;
# biases are never pruned.
#
# **Claims checked.** (1) SNIP is the best of the four at the most extreme sparsities, judged by
# paired bootstrap tests over the test sentences (BLEU where both systems compared reach
# `bleu_floor`, else test perplexity); (1b) the same after every retrained method gets the same
# fixed-mask retraining. (2) OBD and SNIP prune the embedding classes more than
# class-blind magnitude does (a count of the masks: no noise).
#
# The next cell holds the parameters (`None` takes the profile's value; the NMT data, model and
# training parameters come from `profiles/_nmt.toml`, so the cached baseline is reused).

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
methods = None            # subset of magnitude, random, obd, snip
sparsities = None         # fractions of the classed weights removed
obd_estimator = None      # fisher | hutchinson | exact (exact: tiny models only)
obd_probes = None         # Hutchinson probes per batch
saliency_batches = None   # training batches OBD and SNIP score on
saliency_batch_size = None
snip_init = None          # init scheme SNIP scores and trains from (the baseline's is "uniform")
snip_epochs = None        # epochs of fixed-mask training after SNIP prunes at init
snip_max_steps = None     # cap on steps per SNIP epoch; 0 means whole epochs
retrain_top = None        # retrain this many best methods (by mean BLEU without retraining)
retrain_sparsities = None
retrain_epochs = None
retrain_lr_factor = None  # retraining learning rate is lr times this
class_sparsities = None   # sparsities of the per-class table
eval_beam = None          # beam width of every BLEU in this notebook (1 is greedy), dense included
claims_min_bleu = None    # below this dense BLEU the BLEU-based claims are inconclusive
bleu_floor = None         # two systems are compared by BLEU when both reach this, else by test perplexity
significance = None       # a paired difference is beyond noise where its bootstrap p-value is below this
bootstrap_samples = None  # resamples of the test sentences in every paired bootstrap
run_dir = ""              # set by `prunelab run`; "" derives the run folder from the parameters

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from tqdm.auto import tqdm

from prunelab import masks as M
from prunelab import nmt, obd_snip, results, runner
from prunelab.nmt.evaluate import better, paired_test
from prunelab.results import ordering_verdict, verdict
from prunelab.sparse_init import prune_at_init_

OWN = ("eval_beam", "claims_min_bleu", "bleu_floor", "significance", "bootstrap_samples", "methods", "sparsities", "obd_estimator", "obd_probes",
       "saliency_batches", "saliency_batch_size", "snip_init", "snip_epochs", "snip_max_steps", "retrain_top",
       "retrain_sparsities", "retrain_epochs", "retrain_lr_factor", "class_sparsities")
P, run = runner.start("20_obd_snip", profile=profile, run_dir=run_dir,
                      **{name: globals()[name] for name in (*nmt.PARAMS, *OWN)})
if P.threads:
    torch.set_num_threads(P.threads)
METHODS = obd_snip.check_methods(P.methods)
print(f"profile {P.profile}; run folder {run.path}")

# %% [markdown]
# ## The cached baseline
# Trained once per NMT parameter set (by whichever notebook asks first) and loaded here.

# %%
base = nmt.baseline(P)
corpus = base.corpus
classes = nmt.weight_classes(base.model)
dense = run.memo("dense", {}, lambda: obd_snip.evaluate(base.model, corpus, P.eval_beam, P.alpha))
n_classed = sum(p.numel() for n, p in base.model.named_parameters() if n in obd_snip.class_names(classes))
print(f"dense baseline: test BLEU {dense['bleu']:.2f}, test perplexity {dense['ppl']:.2f}; {n_classed} classed weights")

# %% [markdown]
# ## Saliencies
# OBD scores the trained model on `saliency_batches` training batches; SNIP scores a fresh
# model at initialisation on the same number of batches. The table records how much data each
# saliency used and where it was computed.

# %%
batches = obd_snip.saliency_batches(corpus, P.saliency_batch_size, P.saliency_batches, seed=P.seed)
saliencies = {m: obd_snip.score_trained(m, base.model, classes, batches=batches, estimator=P.obd_estimator,
                                        probes=P.obd_probes, seed=P.seed)
              for m in tqdm([m for m in METHODS if m not in obd_snip.AT_INIT], desc="saliencies")}


def snip_at_init(sparsity):
    model = nmt.build_model(P, corpus, init=P.snip_init, seed=P.seed)
    masks, sal = prune_at_init_(model, sparsity, loss_fn=nmt.batch_loss, batches=batches,
                                names=obd_snip.class_names(classes), classes=classes)
    return model, masks, sal


if "snip" in METHODS:
    saliencies["snip"] = snip_at_init(min(P.sparsities))[2]
info = pd.DataFrame([s.info() for s in saliencies.values()])
run.save_table("saliency_info", info)
info

# %% [markdown]
# ## Pruning without retraining (SNIP: pruned at init, then trained with the mask fixed)
# Each grid point is cached in the run folder; SNIP's trained sparse models are kept there too,
# so the retraining step and an interrupted run reuse them.

# %%
def snip_model(sparsity):
    model, masks, _ = snip_at_init(sparsity)

    def trained():
        nmt.train_(model, corpus, nmt.TrainConfig.from_params(vars(P), max_epochs=P.snip_epochs, max_steps=P.snip_max_steps),
                   masks=masks, progress=False)
        return model.state_dict()

    state = run.tensors(f"models/snip-{sparsity}.pt", trained, map_location=next(model.parameters()).device)
    nmt.load_state_(model, state)
    return model, masks


def pruned_model(method, sparsity):
    if method == "snip":
        return snip_model(sparsity)
    model = base.fresh_copy()
    masks = obd_snip.masks_for(saliencies[method], sparsity, classes, seed=P.seed)
    M.apply_masks_(model, masks)
    return model, masks


def point(method, sparsity, retrain):
    model, masks = pruned_model(method, sparsity)
    if retrain:
        cfg = nmt.TrainConfig.from_params(vars(P), lr=P.lr * P.retrain_lr_factor, max_epochs=P.retrain_epochs)
        nmt.train_(model, corpus, cfg, masks=masks, progress=False)
    achieved = float(M.sparsity_report(model, masks).sparsity.iloc[-1])
    return dict(method=method, sparsity=sparsity, retrained=retrain, achieved=achieved,
                **obd_snip.evaluate(model, corpus, P.eval_beam, P.alpha, outputs=True))


def scores(row):
    """A point without its test outputs (kept in the cache for the paired tests of claim 1)."""
    return {k: v for k, v in row.items() if k not in obd_snip.OUTPUTS}


grid = [(m, s) for m in METHODS for s in P.sparsities]
systems = {(m, s): run.memo("system", dict(method=m, sparsity=s, retrain=False), lambda: point(m, s, False))
           for m, s in tqdm(grid, desc="prune + evaluate")}
table = pd.DataFrame([scores(r) for r in systems.values()])
run.save_table("no_retraining", table)
table.pivot(index="sparsity", columns="method", values="bleu").round(2)

# %% [markdown]
# ## Retraining the best methods
# The `retrain_top` methods with the highest mean BLEU above are retrained with their masks
# fixed for `retrain_epochs` at `lr * retrain_lr_factor`.

# %%
ranking = table.groupby("method").bleu.mean().sort_values(ascending=False)
best = list(ranking.index[:P.retrain_top])
print("mean BLEU without retraining:", ranking.round(2).to_dict(), "-> retraining", best)
grid = [(m, s) for m in best for s in P.retrain_sparsities]
retrained = pd.DataFrame([scores(run.memo("system", dict(method=m, sparsity=s, retrain=True), lambda: point(m, s, True)))
                          for m, s in tqdm(grid, desc="retrain")])
run.save_table("retrained", retrained)
both = pd.concat([table, retrained], ignore_index=True)
both.pivot_table(index="sparsity", columns=["retrained", "method"], values="bleu").round(2)

# %%
fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
for col, (retrain, part) in enumerate(both.groupby("retrained")):
    for row, metric in enumerate(["bleu", "ppl"]):
        ax = axes[row, col]
        sns.lineplot(data=part, x="sparsity", y=metric, hue="method", hue_order=METHODS, marker="o", ax=ax)
        ax.axhline(dense[metric], color="k", ls="--", lw=1, label="dense")
        ax.set_yscale("log" if metric == "ppl" else "linear")
        ax.set_title(("after fixed-mask retraining" if retrain else "without retraining (SNIP: trained from init)")
                     if row == 0 else "")
        ax.set_ylabel("test BLEU" if metric == "bleu" else "test perplexity")
        ax.set_xlabel("sparsity (fraction of classed weights removed)")
axes[0, 0].legend(fontsize=8)
fig.suptitle(f"OBD ({P.obd_estimator}) and SNIP vs class-blind magnitude and random, {P.direction} Multi30k")
run.save_figure(fig, "bleu_ppl_vs_sparsity")

# %% [markdown]
# ## Where does each method prune?
# Percentage of each weight class pruned at the `class_sparsities` (SNIP: its masks at init).

# %%
def method_masks(method, sparsity):
    if method == "snip":
        return snip_at_init(sparsity)[1]
    return obd_snip.masks_for(saliencies[method], sparsity, classes, seed=P.seed)


per_class = pd.concat([obd_snip.class_pruning(method_masks(m, s), classes).assign(method=m, sparsity=s)
                       for m in METHODS for s in P.class_sparsities], ignore_index=True)
run.save_table("pruned_per_class", per_class)
fig, axes = plt.subplots(1, len(P.class_sparsities), figsize=(6 * len(P.class_sparsities), 4.5), sharey=True,
                         squeeze=False)
for ax, (s, part) in zip(axes[0], per_class.groupby("sparsity")):
    sns.barplot(data=part, y="weight_class", x="pruned_pct", hue="method", hue_order=METHODS, ax=ax)
    ax.set_title(f"{s:.0%} of the classed weights pruned (class-blind)")
    ax.set_xlabel("% of the class pruned")
    ax.set_ylabel("")
run.save_figure(fig, "pruned_per_class")
per_class.pivot_table(index="weight_class", columns=["sparsity", "method"], values="pruned_pct", sort=False).round(1)

# %% [markdown]
# ## Claim 1: SNIP is the best of the four at the most extreme sparsities
# Judged without retraining (SNIP trained from its init mask; the others pruned after training) at
# the two highest sparsities of the grid. At each, SNIP is compared with every other method by a
# paired bootstrap over the test sentences (`bootstrap_samples` resamples): by BLEU where both
# reach `bleu_floor`, else by test perplexity (a model below the floor translates nothing a BLEU
# difference could rank). SNIP is best there when it beats every other method beyond noise
# (p < `significance`), fails when any method beats it beyond noise, else is within noise; the claim
# is `not reproduced` where it fails at either sparsity, `reproduced` where it is best at one or both
# and fails at neither, else `within noise`; inconclusive when the dense baseline is below
# `claims_min_bleu`. The comparisons are in the table `paired_tests`.

# %%
refs, lowercase = corpus["test"].tgt_raw, corpus.config.lowercase
extreme = sorted(P.sparsities)[-2:]
tests, outcomes = [], {}
if "snip" in METHODS and len(METHODS) > 1:
    for s in extreme:
        for m in [m for m in METHODS if m != "snip"]:
            key = dict(a="snip", b=m, sparsity=s, floor=P.bleu_floor, n_samples=P.bootstrap_samples)
            row = run.memo("paired", key, lambda: paired_test(systems["snip", s], systems[m, s], refs, P.bleu_floor,
                                                              lowercase, P.bootstrap_samples).row())
            ahead = better(row, P.significance)
            tests.append(dict(sparsity=s, a="snip", b=m, **row,
                              outcome="holds" if ahead == "a" else "fails" if ahead == "b" else "within noise"))
        steps = [t["outcome"] for t in tests if t["sparsity"] == s]
        outcomes[s] = "fails" if "fails" in steps else "holds" if set(steps) == {"holds"} else "within noise"
paired_tests = pd.DataFrame(tests)
run.save_table("paired_tests", paired_tests)


def rival(s):
    """SNIP's closest rival at sparsity s: the comparison least beyond noise (largest p-value)."""
    return max((t for t in tests if t["sparsity"] == s), key=lambda t: t["p_value"])


margins = {s: rival(s) for s in outcomes}
run.record_claim("snip-best-at-extreme-sparsity", "SNIP gives the highest BLEU of OBD, SNIP, magnitude and random at the most extreme sparsities",
                 f"at sparsities {extreme}: SNIP minus its closest rival, by BLEU where both reach {P.bleu_floor}, "
                 f"else by test perplexity (paired bootstrap, beyond noise at p < {P.significance}); no retraining",
                 "; ".join(f"{s}: {t['metric']} {t['delta']:+.2f} vs {t['b']}" for s, t in margins.items()) or "nan",
                 ordering_verdict(outcomes) if outcomes and dense["bleu"] >= P.claims_min_bleu else "inconclusive",
                 "; ".join(f"{s}: {outcomes[s]} (" + ", ".join(
                     f"vs {t['b']}: {t['metric']} {t['score_a']:.2f} vs {t['score_b']:.2f}, 95% CI [{t['ci_lo']:+.2f}, "
                     f"{t['ci_hi']:+.2f}], p={t['p_value']:.3f}" for t in tests if t["sparsity"] == s) + ")" for s in outcomes))
paired_tests

# %% [markdown]
# ## Claim 1, after the same retraining
# Claim 1 follows the seed study: SNIP is trained from its init mask while the others are pruned
# from the trained model and not retrained, which at 98-99% leaves them broken and favours SNIP.
# Here every retrained method (the `retrain_top` best) gets the same `retrain_epochs` of
# fixed-mask retraining at `lr * retrain_lr_factor` (SNIP on top of its `snip_epochs`), and SNIP
# is compared with each at the extreme sparsities that were retrained, by the same paired tests
# and rule; inconclusive where SNIP was not retrained or no extreme sparsity was.

# %%
retrained_at = [s for s in extreme if s in P.retrain_sparsities]
tests_rt, outcomes_rt = [], {}
if "snip" in best and len(best) > 1:
    for s in retrained_at:
        snip_rt = run.memo("system", dict(method="snip", sparsity=s, retrain=True), lambda: point("snip", s, True))
        for m in [m for m in best if m != "snip"]:
            other = run.memo("system", dict(method=m, sparsity=s, retrain=True), lambda: point(m, s, True))
            key = dict(a="snip", b=m, sparsity=s, retrained=True, floor=P.bleu_floor, n_samples=P.bootstrap_samples)
            row = run.memo("paired", key, lambda: paired_test(snip_rt, other, refs, P.bleu_floor, lowercase,
                                                              P.bootstrap_samples).row())
            ahead = better(row, P.significance)
            tests_rt.append(dict(sparsity=s, a="snip", b=m, **row,
                                 outcome="holds" if ahead == "a" else "fails" if ahead == "b" else "within noise"))
        steps = [t["outcome"] for t in tests_rt if t["sparsity"] == s]
        outcomes_rt[s] = "fails" if "fails" in steps else "holds" if set(steps) == {"holds"} else "within noise"
paired_tests_retrained = pd.DataFrame(tests_rt)
if tests_rt:  # no comparison (SNIP not retrained), no table: an empty CSV has no columns to read back
    run.save_table("paired_tests_retrained", paired_tests_retrained)
rivals_rt = {s: max((t for t in tests_rt if t["sparsity"] == s), key=lambda t: t["p_value"]) for s in outcomes_rt}
why = ("" if outcomes_rt else f"SNIP not among the retrained {best}" if "snip" not in best
       else f"no extreme sparsity {extreme} among retrain_sparsities {list(P.retrain_sparsities)}")
run.record_claim("snip-best-at-extreme-sparsity-retrained",
                 "SNIP stays the best at the most extreme sparsities when every method gets the same retraining",
                 f"at sparsities {retrained_at}: SNIP minus its closest retrained rival ({', '.join(m for m in best if m != 'snip')}), "
                 f"each retrained {P.retrain_epochs} epoch(s) at lr x {P.retrain_lr_factor} with its mask fixed; by BLEU where both "
                 f"reach {P.bleu_floor}, else by test perplexity (paired bootstrap, beyond noise at p < {P.significance})",
                 "; ".join(f"{s}: {t['metric']} {t['delta']:+.2f} vs {t['b']}" for s, t in rivals_rt.items()) or "nan",
                 ordering_verdict(outcomes_rt) if outcomes_rt and dense["bleu"] >= P.claims_min_bleu else "inconclusive",
                 why or "; ".join(f"{s}: {outcomes_rt[s]} (" + ", ".join(
                     f"vs {t['b']}: {t['metric']} {t['score_a']:.2f} vs {t['score_b']:.2f}, 95% CI [{t['ci_lo']:+.2f}, "
                     f"{t['ci_hi']:+.2f}], p={t['p_value']:.3f}" for t in tests_rt if t["sparsity"] == s) + ")" for s in outcomes_rt))
paired_tests_retrained

# %% [markdown]
# ## Claim 2: OBD and SNIP prune the embeddings more than class-blind magnitude
# The embedding classes (source and target together), at every sparsity of the per-class table.

# %%
emb = per_class[per_class.weight_class.str.contains("embedding")]
emb_pct = emb.groupby(["sparsity", "method"]).apply(lambda d: 100 * d.pruned.sum() / d.numel.sum(),
                                                    include_groups=False).unstack("method")
others = [m for m in ("obd", "snip") if m in emb_pct.columns]
if "magnitude" in emb_pct.columns and others:
    gap = min((emb_pct[m] - emb_pct["magnitude"]).min() for m in others)
    holds = bool(gap > 0)
else:
    gap, holds = float("nan"), None
run.record_claim("obd-snip-prune-embeddings-more", "OBD and SNIP remove more of the embedding weights than class-blind magnitude pruning",
                 f"min over {others} and sparsities {list(P.class_sparsities)} of % embeddings pruned minus magnitude's",
                 f"{gap:.1f}", verdict(holds), emb_pct.round(1).to_dict())
emb_pct.round(1)

# %%
run.finish()
