# %% [markdown]
# # 22 · Pruning at initialisation beyond SNIP: GraSP, SynFlow and the controls that test them
#
# **Question.** On the attention LSTM translation model of the OBD/SNIP study (Multi30k), do the
# pruning-at-init methods that followed SNIP do better, and do they find anything a layer-wise
# ratio does not? Methods (`prunelab.at_init.METHODS`): SNIP (Lee et al. 2019), GraSP (Wang,
# Zhang & Grosse 2020; score -w * Hg, highest removed), SynFlow (Tanaka et al. 2020; data-free,
# `synflow_rounds` rounds with an exponential schedule; the all-ones input of the embedding model
# is defined in `prunelab.at_init`), OBD at init with the empirical Fisher and with Hutchinson's
# diagonal, random at ERK ratios and random at the layer-wise ratios of the best method
# (Liu et al. 2022). Every method prunes a fresh model (the NMT profile's `init`, per seed)
# class-blind over See et al.'s weight classes, which is then trained with the mask fixed for
# `pai_max_steps` steps x `pai_epochs`. Dense (the cached baseline) is the reference line.
#
# **Controls** (Frankle, Dziugaite, Roy & Carbin, ICLR 2021): for the `control_methods`, the mask
# shuffled within each weight matrix, and the mask kept with the weights reinitialised.
#
# **Claims checked.** (F1) shuffling within layers does not hurt SNIP, GraSP or SynFlow;
# (F2) every pruning-at-init method stays below magnitude pruning of the trained model with
# retraining at the same sparsity; (T1) at the highest sparsity SynFlow avoids layer collapse
# (a weight matrix pruned entirely) where SNIP and GraSP collapse; (G1) GraSP beats SNIP at high
# sparsity; (R1) random pruning at the best method's layer-wise ratios is within noise of that
# method. Comparisons are paired bootstraps over the test sentences (BLEU where both systems reach
# `bleu_floor`, else test perplexity), one per seed.
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
methods = None            # pruning-at-init methods (prunelab.at_init.METHODS)
control_methods = None    # methods that also get the shuffle and reinit controls
sparsities = None         # fractions of the classed weights removed
seeds = None              # seeds of the init draw, the saliency batches and the data order
saliency_batches = None   # batches scored by the data-driven methods
saliency_batch_size = None
synflow_rounds = None     # SynFlow's pruning rounds (the paper: 100)
synflow_length = None     # tokens of SynFlow's all-ones source and target (at least 2)
grasp_hvp = None          # GraSP's Hessian-gradient product: autograd, central or forward
obd_probes = None         # Hutchinson probes per batch
pai_epochs = None         # epochs of fixed-mask training after pruning at init
pai_max_steps = None      # cap on steps per epoch; 0 means whole epochs
retrain_epochs = None     # magnitude pruning of the trained baseline, then fixed-mask retraining
retrain_max_steps = None  # cap on retraining steps per epoch; 0 means whole epochs
retrain_lr_factor = None  # retraining learning rate is lr times this
eval_beam = None          # beam width of every BLEU in this notebook (1 is greedy), dense included
bleu_floor = None         # paired tests compare BLEU where both systems reach this, else perplexity
significance = None       # a paired difference is beyond noise where its bootstrap p-value is below this
bootstrap_samples = None  # resamples of the test sentences in every paired bootstrap
claims_min_bleu = None    # below this dense BLEU every claim is inconclusive
run_dir = ""              # set by `prunelab run`; "" derives the run folder from the parameters

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from tqdm.auto import tqdm

from prunelab import at_init, masks as M, nmt, obd_snip, results, runner
from prunelab.nmt.evaluate import better, paired_test
from prunelab.results import ordering_verdict, verdict

OWN = ("methods", "control_methods", "sparsities", "seeds", "saliency_batches", "saliency_batch_size", "synflow_rounds",
       "synflow_length", "grasp_hvp", "obd_probes", "pai_epochs", "pai_max_steps", "retrain_epochs", "retrain_max_steps",
       "retrain_lr_factor", "eval_beam", "bleu_floor", "significance", "bootstrap_samples", "claims_min_bleu")
P, run = runner.start("22_pruning_at_init", profile=profile, run_dir=run_dir,
                      **{name: globals()[name] for name in (*nmt.PARAMS, *OWN)})
if P.threads:
    torch.set_num_threads(P.threads)
METHODS = at_init.check_methods(P.methods)
CONTROLLED = at_init.check_methods(P.control_methods)
SCORED = [m for m in METHODS if not m.startswith("random")]
print(f"profile {P.profile}; run folder {run.path}")

# %% [markdown]
# ## Data, the dense reference and magnitude pruning with retraining
# Magnitude (class-blind) prunes the cached trained baseline, which is then retrained with the mask
# fixed for `retrain_max_steps` x `retrain_epochs` at `lr * retrain_lr_factor`: the reference of F2.

# %%
base = nmt.baseline(P)
corpus = base.corpus
classes = nmt.weight_classes(base.model)
dense = run.memo("dense", {}, lambda: obd_snip.evaluate(base.model, corpus, P.eval_beam, P.alpha, outputs=True))
refs, lowercase = corpus["test"].tgt_raw, corpus.config.lowercase


def magnitude_retrained(sparsity):
    model = base.fresh_copy()
    masks = nmt.prune_masks(model, sparsity, "class-blind")
    M.apply_masks_(model, masks)
    cfg = nmt.TrainConfig.from_params(vars(P), lr=P.lr * P.retrain_lr_factor, max_epochs=P.retrain_epochs,
                                      max_steps=P.retrain_max_steps)
    nmt.train_(model, corpus, cfg, masks=masks, progress=False)
    return dict(method="magnitude+retrain", control="none", sparsity=sparsity, seed=P.seed,
                pruned_per_class=obd_snip.class_pruning(masks, classes).to_dict("records"),
                collapsed=at_init.collapsed(masks), seconds=0.0,
                **obd_snip.evaluate(model, corpus, P.eval_beam, P.alpha, outputs=True))


magnitude = {s: run.memo("magnitude", dict(sparsity=s, retrain_epochs=P.retrain_epochs, steps=P.retrain_max_steps,
                                           lr_factor=P.retrain_lr_factor), lambda: magnitude_retrained(s))
             for s in tqdm(P.sparsities, desc="magnitude + retrain")}
print(f"dense test BLEU {dense['bleu']:.2f}, perplexity {dense['ppl']:.1f}")

# %% [markdown]
# ## Pruning at init, then fixed-mask training
# One point per (method, control, sparsity, seed), cached. `random_ratios` takes the layer-wise
# ratios of the best scored method (lowest mean test perplexity at the highest sparsity; "best"
# needs those points first), re-derived from that method's mask at the point's sparsity and seed.

# %%
def build(seed):
    return nmt.build_model(P, corpus, init=P.init, seed=seed)


def masks_at_init(method, sparsity, seed, ratios_of=None):
    """The mask ``method`` prunes the seed's fresh model to (kept in the run folder: the controls and
    random_ratios reuse it) and its scoring time."""
    def scored():
        batches = obd_snip.saliency_batches(corpus, P.saliency_batch_size, P.saliency_batches, seed=seed)
        ratios = None if ratios_of is None else M.layer_ratios(masks_at_init(ratios_of, sparsity, seed)["masks"])
        masks, info = at_init.prune_(build(seed), method, sparsity, classes, batches=batches, seed=seed, ratios=ratios,
                                     **options)
        return dict(masks={n: m.cpu() for n, m in masks.items()}, seconds=info["seconds"])

    return run.tensors(f"masks/{method}-{ratios_of or ''}-{sparsity}-s{seed}.pt", scored)


def pai_point(method, control, sparsity, seed, ratios_of=None):
    model = build(seed)
    found = masks_at_init(method, sparsity, seed, ratios_of)
    device = next(model.parameters()).device
    masks, info = {n: m.to(device) for n, m in found["masks"].items()}, dict(seconds=found["seconds"])
    M.apply_masks_(model, masks)
    masks = at_init.control_(model, masks, control, build, seed)
    cfg = nmt.TrainConfig.from_params(vars(P), max_epochs=P.pai_epochs, max_steps=P.pai_max_steps, seed=seed)
    nmt.train_(model, corpus, cfg, masks=masks, progress=False)
    return dict(method=method, control=control, sparsity=sparsity, seed=seed, ratios_of=ratios_of or "",
                pruned_per_class=obd_snip.class_pruning(masks, classes).to_dict("records"),
                collapsed=at_init.collapsed(masks), seconds=info["seconds"],
                **obd_snip.evaluate(model, corpus, P.eval_beam, P.alpha, outputs=True))


options = dict(rounds=P.synflow_rounds, hvp=P.grasp_hvp, probes=P.obd_probes, flow_length=P.synflow_length)
key_of = lambda m, c, s, seed, r=None: dict(method=m, control=c, sparsity=s, seed=seed, ratios_of=r, **options)  # noqa: E731
grid = [(m, "none", s, seed) for m in METHODS if m != "random_ratios" for s in P.sparsities for seed in P.seeds]
grid += [(m, c, s, seed) for m in CONTROLLED for c in ("shuffle", "reinit") for s in P.sparsities for seed in P.seeds]
systems = {g: run.memo("pai", key_of(*g), lambda: pai_point(*g)) for g in tqdm(grid, desc="prune at init + train")}

top = max(P.sparsities)
scored_here = [m for m in SCORED if (m, "none", top, P.seeds[0]) in systems]
best = min(scored_here, key=lambda m: sum(systems[m, "none", top, sd]["ppl"] for sd in P.seeds)) if scored_here else ""
if "random_ratios" in METHODS and best:
    for s in P.sparsities:
        for sd in P.seeds:
            systems["random_ratios", "none", s, sd] = run.memo("pai", key_of("random_ratios", "none", s, sd, best),
                                                               lambda: pai_point("random_ratios", "none", s, sd, best))
OUT = set(obd_snip.OUTPUTS) | {"pruned_per_class", "collapsed"}
table = pd.DataFrame([{k: v for k, v in r.items() if k not in OUT} | {"collapsed": len(r["collapsed"])}
                      for r in [*systems.values(), *magnitude.values()]])
run.save_table("results", table)
print(f"best scored method at {top}: {best}")
table.pivot_table(index=["method", "control"], columns="sparsity", values=["bleu", "ppl"]).round(2)

# %% [markdown]
# ## BLEU and perplexity against sparsity

# %%
plain = table[table.control == "none"]
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharex=True)
for ax, metric in zip(axes, ["bleu", "ppl"]):
    sns.lineplot(data=plain, x="sparsity", y=metric, hue="method", marker="o", errorbar=("pi", 100), ax=ax)
    ax.axhline(dense[metric], color="k", ls="--", lw=1, label="dense")
    ax.set_ylabel("test BLEU" if metric == "bleu" else "test perplexity")
    if metric == "ppl":
        ax.set_yscale("log")
fig.suptitle(f"pruned at init, trained {P.pai_max_steps or 'whole'} steps x {P.pai_epochs} epoch(s) with the mask fixed; "
             "magnitude: trained baseline pruned + retrained")
run.save_figure(fig, "bleu_ppl_vs_sparsity")

# %% [markdown]
# ## Where each method prunes, and layer collapse
# Percentage of each weight class pruned (first seed), and the weight matrices pruned entirely.

# %%
per_class = pd.DataFrame([dict(method=m, control=c, sparsity=s, seed=sd, **row)
                          for (m, c, s, sd), r in systems.items() for row in r["pruned_per_class"]]
                         + [dict(method=r["method"], control="none", sparsity=s, seed=P.seed, **row)
                            for s, r in magnitude.items() for row in r["pruned_per_class"]])
run.save_table("pruned_per_class", per_class)
collapse = pd.DataFrame([dict(method=m, control=c, sparsity=s, seed=sd, collapsed=len(r["collapsed"]),
                              matrices=" ".join(r["collapsed"])) for (m, c, s, sd), r in systems.items()])
run.save_table("collapse", collapse)
shown = per_class[(per_class.control == "none") & (per_class.seed == per_class.seed.min())]
fig, axes = plt.subplots(1, len(P.sparsities), figsize=(6 * len(P.sparsities), 4.8), sharey=True, squeeze=False)
for ax, (s, part) in zip(axes[0], shown.groupby("sparsity")):
    sns.barplot(data=part, y="weight_class", x="pruned_pct", hue="method", ax=ax)
    ax.set_title(f"{s:.0%} of the classed weights pruned (class-blind)")
    ax.set_xlabel("% of the class pruned")
    ax.set_ylabel("")
run.save_figure(fig, "pruned_per_class")
collapse[collapse.control == "none"].pivot_table(index="method", columns="sparsity", values="collapsed", aggfunc="max")

# %% [markdown]
# ## The controls beside their originals

# %%
ctl = table[table.method.isin(CONTROLLED)]
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
for ax, metric in zip(axes, ["bleu", "ppl"]):
    sns.barplot(data=ctl, x="method", y=metric, hue="control", hue_order=list(at_init.CONTROLS), errorbar=("pi", 100),
                ax=ax)
    ax.set_ylabel("test BLEU" if metric == "bleu" else "test perplexity")
    ax.set_title(f"at sparsities {list(P.sparsities)} together" if len(P.sparsities) > 1 else f"at {P.sparsities[0]}")
run.save_figure(fig, "controls")
ctl.pivot_table(index=["method", "sparsity"], columns="control", values=["bleu", "ppl"]).round(2)

# %% [markdown]
# ## Paired tests and claims
# Every comparison is a paired bootstrap over the test sentences (`bootstrap_samples`
# resamples, per seed): BLEU where both systems reach `bleu_floor`, else test perplexity. A
# comparison's outcome is `a`, `b` (better beyond noise, p < `significance`) or `noise`. All are in
# the table `paired_tests`. Every claim is `inconclusive` when the dense baseline is below
# `claims_min_bleu`.

# %%
def compare(claim, a, b, sparsity, seed):
    sa = magnitude[sparsity] if a == "magnitude+retrain" else systems[a[0], a[1], sparsity, seed]
    sb = systems[b[0], b[1], sparsity, seed]
    key = dict(a=str(a), b=str(b), sparsity=sparsity, seed=seed, floor=P.bleu_floor, n_samples=P.bootstrap_samples,
               **options)
    row = run.memo("paired", key, lambda: paired_test(sa, sb, refs, P.bleu_floor, lowercase, P.bootstrap_samples).row())
    return dict(claim=claim, a=str(a), b=str(b), sparsity=sparsity, seed=seed, **row,
                outcome=better(row, P.significance) or "noise")


tests = []
for s in P.sparsities:
    for sd in P.seeds:
        tests += [compare("F1", (m, "none"), (m, "shuffle"), s, sd) for m in ("snip", "grasp", "synflow") if m in CONTROLLED]
        tests += [compare("F2", "magnitude+retrain", (m, "none"), s, sd) for m in METHODS]
        if {"snip", "grasp"} <= set(METHODS):
            tests.append(compare("G1", ("grasp", "none"), ("snip", "none"), s, sd))
        if "random_ratios" in METHODS and best:
            tests.append(compare("R1", (best, "none"), ("random_ratios", "none"), s, sd))
paired = pd.DataFrame(tests)
run.save_table("paired_tests", paired)
ok = dense["bleu"] >= P.claims_min_bleu


def claim_tests(claim):
    return paired[paired.claim == claim] if len(paired) else paired


def describe(part):
    return "; ".join(f"{t.sparsity}/s{t.seed} {t.a} vs {t.b}: {t.metric} {t.score_a:.2f} vs {t.score_b:.2f}, "
                     f"p={t.p_value:.3f} -> {t.outcome}" for t in part.itertuples())


# F1: not reproduced where an unshuffled original beats its shuffle beyond noise anywhere.
part = claim_tests("F1")
f1 = verdict(bool((part.outcome != "a").all())) if ok and len(part) else "inconclusive"
run.record_claim("pai-shuffle-does-not-hurt", "Shuffling the mask within each layer does not hurt SNIP, GraSP or SynFlow",
                 "comparisons (method, sparsity, seed) where the original beats its shuffled mask beyond noise",
                 f"{int((part.outcome == 'a').sum()) if len(part) else 0} of {len(part)}", f1, describe(part))

# F2: an ordering at every (method, sparsity, seed) point: holds where magnitude+retrain is better beyond noise.
part = claim_tests("F2")
outcomes = {(t.b, t.sparsity, t.seed): {"a": "holds", "b": "fails"}.get(t.outcome, "within noise") for t in part.itertuples()}
run.record_claim("pai-below-magnitude-retrain", "Every pruning-at-init method stays below magnitude pruning of the trained model (with retraining) at the same sparsity",
                 "points (method, sparsity, seed) where magnitude+retrain is better beyond noise",
                 f"{list(outcomes.values()).count('holds')} of {len(outcomes)}",
                 ordering_verdict(outcomes) if ok else "inconclusive", describe(part))

# T1: layer collapse at the highest sparsity, every seed (exact counts: no noise).
at_top = collapse[(collapse.sparsity == top) & (collapse.control == "none")].groupby("method").collapsed.agg(["min", "max"])
have = {"snip", "grasp", "synflow"} <= set(at_top.index)
t1 = (verdict(bool(at_top.loc["synflow", "max"] == 0 and at_top.loc["snip", "min"] > 0 and at_top.loc["grasp", "min"] > 0))
      if have else "inconclusive")
run.record_claim("synflow-avoids-layer-collapse", "At extreme sparsity SynFlow prunes no weight matrix entirely, where SNIP and GraSP do",
                 f"weight matrices pruned entirely at sparsity {top} (min..max over seeds), per method",
                 "; ".join(f"{m} {r['min']}..{r['max']}" for m, r in at_top.iterrows()), t1,
                 "; ".join(f"{r.method} s{r.seed}: {r.matrices or 'none'}" for r in collapse[
                     (collapse.sparsity == top) & (collapse.control == "none")].itertuples()))

# G1: GraSP beats SNIP at high sparsity (the highest two sparsities of the grid), as an ordering.
high = sorted(P.sparsities)[-2:]
part = claim_tests("G1")
part = part[part.sparsity.isin(high)] if len(part) else part
outcomes = {(t.sparsity, t.seed): {"a": "holds", "b": "fails"}.get(t.outcome, "within noise") for t in part.itertuples()}
run.record_claim("grasp-beats-snip-high-sparsity", "GraSP beats SNIP at high sparsity",
                 f"points (sparsity in {high}, seed) where GraSP is better than SNIP beyond noise",
                 f"{list(outcomes.values()).count('holds')} of {len(outcomes)}",
                 ordering_verdict(outcomes) if ok else "inconclusive", describe(part))

# R1: within noise everywhere -> reproduced; the method beating its random counterpart beyond noise anywhere -> not.
part = claim_tests("R1")
r1 = verdict(bool((part.outcome != "a").all())) if ok and len(part) else "inconclusive"
run.record_claim("random-at-best-ratios-within-noise", "Random pruning at the best method's layer-wise ratios is within noise of that method",
                 f"comparisons (sparsity, seed) where {best or 'the best method'} beats random at its ratios beyond noise",
                 f"{int((part.outcome == 'a').sum()) if len(part) else 0} of {len(part)}", r1,
                 f"best scored method by mean test perplexity at {top}: {best}; " + describe(part))
pd.read_csv(run.path / "claims.csv")[["id", "value", "verdict"]]

# %%
run.finish()
