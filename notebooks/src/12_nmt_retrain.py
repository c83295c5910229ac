# %% [markdown]
# # 12 · Pruning with retraining (See et al. 2016, section 5.3)
#
# **Question.** After magnitude pruning, how much does masked retraining recover; is the
# pruned-and-retrained model better than the same sparse network trained from scratch on the same
# total budget; and does pruning gradually (iteratively, or AGP) beat pruning in one shot?
#
# **Paper.** See, Luong & Manning (2016) retrain class-blind-pruned models with a reduced
# learning rate, keeping pruned weights at zero: an 80%-pruned model recovers (and can exceed) the
# baseline BLEU, with training accuracy falling while validation accuracy rises (pruning acts as a
# regulariser); a sparse model with the same mask trained from its initial weights does worse;
# and "results are far better when you start with the original model, train it completely, and
# then iteratively prune". Iterative pruning follows Han et al. (2015), gradual pruning Zhu & Gupta
# (2017, AGP). Random pruning followed by the same retraining is the control.
#
# **Methods at each sparsity.** `pruned` (class-blind, no retraining); `prune+retrain` (one-shot
# class-blind, then `retrain_epochs` at lr x `retrain_lr_factor`); `iterative` (`iterative_rounds`
# equal pruning rounds) and `gradual` (AGP, cubic, updated every `gradual_every` steps), both
# reaching the final sparsity after the first `prune_span` of the same retraining budget and
# pruning on top of the previous mask; `random+retrain` (random mask, same retraining);
# `sparse-from-scratch` (the class-blind mask on the baseline's initial weights, trained at the
# full learning rate for the baseline's epochs plus `retrain_epochs`, the same total budget). All
# sparse models train in `nmt.train_sparse_` (fixed budget; the best validation epoch at the final
# sparsity is kept). The baseline comes from the cache of notebook 10. BLEU is sacreBLEU with beam
# `eval_beam` on the test set; differences are judged by sacreBLEU's paired bootstrap
# (`nmt.paired_bleu`: p-value and 95% interval of the difference, `bootstrap_samples` resamples).
#
# **Claims checked.** (S4) with retraining an 80%-pruned model is within 0.5 BLEU of the baseline
# or better (reproduced when the 95% interval of retrained - baseline lies above -0.5, not
# reproduced when below, else within noise); (S5) prune+retrain beats sparse-from-scratch at every
# sparsity tried; (S7) the best retrained sparse model outperforms the baseline, with training
# perplexity rising and validation perplexity falling; (S8) iterative and gradual pruning beat
# one-shot pruning at the same final sparsity and retraining budget. Verdicts are `inconclusive`
# when the baseline BLEU is below `claims_min_bleu`.

# %%
profile = ""  # smoke | default | paper; "" reads $PRUNELAB_PROFILE, else default
# data (notebooks/profiles/_nmt.toml documents each)
direction = None
folder = None
data_root = None
lowercase = None
min_freq = None
max_vocab = None
max_len = None
train_size = None
eval_size = None
# model
layers = None
emb_size = None
hidden = None
dropout = None
input_feed = None
init = None
# training
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
# evaluation and machine
beam = None
alpha = None
device = None
threads = None
# this notebook
retrain_sparsities = None   # sparsities pruned, and pruned then retrained one-shot (See et al.: 50-90%, and beyond)
control_sparsities = None   # sparsities of the random+retrain control ([] for none)
scratch_sparsities = None   # sparsities trained sparse from scratch ([] for none)
schedule_sparsities = None  # final sparsities where one-shot, iterative and gradual pruning are compared
retrain_epochs = None       # masked retraining epochs after (or while) pruning
retrain_lr_factor = None    # retraining learning rate is lr times this
prune_span = None           # fraction of the retraining budget over which iterative and gradual pruning rise
iterative_rounds = None     # pruning rounds of iterative pruning
gradual_every = None        # training steps between the sparsity updates of gradual (AGP) pruning
eval_beam = None            # beam of this notebook's BLEU (1 is greedy)
train_ppl_pairs = None      # training perplexity on the first N training pairs (0 means all)
bootstrap_samples = None    # paired bootstrap resamples of each BLEU comparison
claims_min_bleu = None      # below this baseline BLEU the claims are inconclusive
run_dir = ""                # set by `prunelab run`; "" derives the run folder from the parameters

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from tqdm.auto import tqdm

from prunelab import masks, nmt, runner
from prunelab.results import verdict

OWN = ("retrain_sparsities", "control_sparsities", "scratch_sparsities", "schedule_sparsities", "retrain_epochs",
       "retrain_lr_factor", "prune_span", "iterative_rounds", "gradual_every", "eval_beam", "train_ppl_pairs",
       "bootstrap_samples", "claims_min_bleu")
P, run = runner.start("12_nmt_retrain", profile=profile, run_dir=run_dir,
                      **{name: globals()[name] for name in (*nmt.PARAMS, *OWN)})
if P.threads:
    torch.set_num_threads(P.threads)
base = nmt.baseline(P)  # trained by notebook 10 (or now, once) and cached
corpus, classes = base.corpus, nmt.weight_classes(base.model)
base_epochs = len(base.history) - 1
train_head = nmt.first_pairs(corpus["train"], P.train_ppl_pairs)
print(f"profile {P.profile}; run folder {run.path}")

# %% [markdown]
# ## Prune, retrain, or train sparse from scratch
# Every (method, sparsity) point is cached in the run folder with its test translations, so an
# interrupted run resumes and every comparison can be recomputed. Masked training re-applies the
# mask after each optimizer step, so pruned weights stay exactly zero (checked in `zeros_kept`).

# %%
retrain = nmt.TrainConfig.from_params(P, lr=P.lr * P.retrain_lr_factor, max_epochs=P.retrain_epochs)
scratch = nmt.TrainConfig.from_params(P, max_epochs=base_epochs + P.retrain_epochs)
budget_steps = P.retrain_epochs * nmt.epoch_steps(corpus, retrain)
span = max(1, round(P.prune_span * budget_steps))
SCHEDULE = {"prune+retrain": "one-shot", "iterative": "iterative", "gradual": "gradual"}

def evaluate(model, method, sparsity, m, history):
    zeros = all(bool((p[~m[n]] == 0).all()) for n, p in model.named_parameters() if n in m)
    kept, total = sum(int(v.sum()) for v in m.values()), sum(v.numel() for v in m.values())
    result = nmt.bleu(model, corpus, "test", beam=P.eval_beam, alpha=P.alpha)
    row = dict(method=method, sparsity=sparsity, achieved=1 - kept / total if total else 0.0,
               epochs=len(history) - 1 if history else 0, zeros_kept=zeros,
               seconds=sum(h["seconds"] for h in history), train_ppl=nmt.perplexity(model, train_head),
               val_ppl=nmt.perplexity(model, corpus["val"]), test_ppl=nmt.perplexity(model, corpus["test"]),
               test_bleu=result.score)
    return dict(row=row, history=history, hypotheses=result.hypotheses)

def point(method, sparsity):
    model = base.fresh_copy()
    if method in SCHEDULE:
        schedule = nmt.sparsity_schedule(SCHEDULE[method], sparsity, span, P.iterative_rounds, P.gradual_every)
        history, m = nmt.train_sparse_(model, corpus, retrain, schedule, classes=classes, amp=P.amp)
        return evaluate(model, method, sparsity, m, history)
    scheme = "random" if method == "random+retrain" else "class-blind"
    m = nmt.prune_masks(model, sparsity, scheme, seed=P.seed, classes=classes)
    if method == "pruned":
        masks.apply_masks_(model, m)
        return evaluate(model, method, sparsity, m, [])
    if method == "sparse-from-scratch":
        model = base.initial_model()
    history, m = nmt.train_sparse_(model, corpus, scratch if method == "sparse-from-scratch" else retrain,
                                   masks=m, amp=P.amp)
    return evaluate(model, method, sparsity, m, history)

grid = [(a, s) for s in P.retrain_sparsities for a in ("pruned", "prune+retrain")]
grid += [("random+retrain", s) for s in P.control_sparsities]
grid += [("sparse-from-scratch", s) for s in P.scratch_sparsities]
grid += [(a, s) for s in P.schedule_sparsities for a in ("prune+retrain", "iterative", "gradual")]
grid = list(dict.fromkeys(grid))
points = {("baseline", 0.0): run.memo("point", dict(method="baseline"), lambda: evaluate(
    base.fresh_copy(), "baseline", 0.0, {}, [{**h, "seconds": 0.0} for h in base.history]))}
for a, s in tqdm(grid, desc="retraining"):
    points[a, s] = run.memo("point", dict(method=a, sparsity=s), lambda: point(a, s))
table = pd.DataFrame([p["row"] for p in points.values()])
run.save_table("retrain", table)
history = pd.DataFrame([dict(method=a, sparsity=s, **{k: v for k, v in h.items() if k != "sparsity"},
                             sparsity_now=h.get("sparsity", s)) for (a, s), p in points.items() for h in p["history"]])
run.save_table("history", history)
run.save_table("hypotheses", pd.DataFrame([dict(method=a, sparsity=s, index=i, hypothesis=h)
                                           for (a, s), p in points.items() for i, h in enumerate(p["hypotheses"])]))
dense = points["baseline", 0.0]["row"]
table.pivot(index="sparsity", columns="method", values="test_bleu").round(2)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
body = table[table.method.isin(["pruned", "prune+retrain", "random+retrain", "sparse-from-scratch"])]
sns.lineplot(data=body, x="sparsity", y="test_bleu", hue="method", marker="o", ax=axes[0])
sns.lineplot(data=body, x="sparsity", y="test_ppl", hue="method", marker="o", ax=axes[1], legend=False)
for ax, col in zip(axes, ("test_bleu", "test_ppl")):
    ax.axhline(dense[col], color="black", ls="--", lw=1, label="baseline")
    ax.set_xlabel("sparsity (fraction of weights removed)")
axes[0].set_ylabel(f"test BLEU (beam {P.eval_beam})")
axes[1].set(ylabel="test perplexity", yscale="log")
axes[0].legend(fontsize=8)
fig.suptitle(f"Retraining: {P.retrain_epochs} epoch(s) at lr x {P.retrain_lr_factor}; "
             f"scratch {scratch.max_epochs} epoch(s)")
run.save_figure(fig, "retrain_bleu_ppl")

# %% [markdown]
# ## One-shot, iterative or gradual pruning (S8)
# The same final sparsity and the same retraining budget; iterative and gradual reach the final
# sparsity after the first `prune_span` of the budget and retrain at it for the rest.

# %%
schedules = table[table.method.isin(list(SCHEDULE)) & table.sparsity.isin(P.schedule_sparsities)].assign(
    schedule=lambda d: d.method.map(SCHEDULE))
fig, ax = plt.subplots(figsize=(6.5, 3.8))
sns.barplot(data=schedules, x="sparsity", y="test_bleu", hue="schedule", hue_order=list(SCHEDULE.values()), ax=ax)
ax.axhline(dense["test_bleu"], color="black", ls="--", lw=1, label="baseline")
ax.set(xlabel="final sparsity", ylabel=f"test BLEU (beam {P.eval_beam})",
       title=f"{P.retrain_epochs} retraining epoch(s); {P.iterative_rounds} rounds / AGP every {P.gradual_every} steps")
ax.legend(fontsize=8)
run.save_figure(fig, "schedule_bleu")

# %% [markdown]
# ## Training and validation perplexity (S7)
# Training perplexity on the first `train_ppl_pairs` training pairs (dropout off), before pruning
# (the baseline) and after pruning and retraining.

# %%
retrained = table[table.method.isin(["baseline", "prune+retrain"])]
ppl = retrained.melt(id_vars=["method", "sparsity"], value_vars=["train_ppl", "val_ppl"], var_name="split",
                     value_name="perplexity").assign(model=lambda d: d.method + " " + (d.sparsity * 100).round().astype(int).astype(str) + "%")
fig, ax = plt.subplots(figsize=(7, 3.8))
sns.barplot(data=ppl, x="model", y="perplexity", hue="split", ax=ax)
ax.set(xlabel="", ylabel="perplexity", title="Training vs validation perplexity after pruning and retraining")
ax.tick_params(axis="x", labelsize=8)
run.save_figure(fig, "train_val_ppl")

# %% [markdown]
# ## Claims
# Each comparison is sacreBLEU's paired bootstrap of the two systems' test translations
# (table `comparisons`); judged only when the baseline BLEU reaches `claims_min_bleu`.

# %%
decidable = dense["test_bleu"] >= P.claims_min_bleu
hyps = {key: p["hypotheses"] for key, p in points.items()}
comparisons = []

def compare(claim, a, b):
    r = nmt.paired_bleu(hyps[a], hyps[b], corpus["test"].tgt_raw, lowercase=corpus.config.lowercase,
                        n_samples=P.bootstrap_samples)
    comparisons.append(dict(claim=claim, a_method=a[0], a_sparsity=a[1], b_method=b[0], b_sparsity=b[1], bleu_a=r.a,
                            bleu_b=r.b, delta=r.delta, ci_low=r.ci[0], ci_high=r.ci[1], p_value=r.p_value,
                            n_samples=r.n_samples))
    return r

def judged(v):
    return v if decidable else "inconclusive"

note = (f"baseline test BLEU {dense['test_bleu']:.2f} (beam {P.eval_beam}, {base_epochs} epochs); retraining "
        f"{P.retrain_epochs} epoch(s) at lr x {P.retrain_lr_factor}; claims need baseline >= {P.claims_min_bleu}")

def still_falling(key):
    h = points[key]["history"]
    return len(h) > 1 and h[-1]["val_ppl"] < h[-2]["val_ppl"]

if 0.8 in P.retrain_sparsities:
    r = compare("nmt-retrain-80", ("prune+retrain", 0.8), ("baseline", 0.0))
    run.record_claim("nmt-retrain-80", "With retraining, an 80%-pruned model is within 0.5 BLEU of the baseline or better",
                     "BLEU(prune+retrain 80%) - BLEU(baseline), 95% CI", f"{r.delta:.2f} [{r.ci[0]:.2f}, {r.ci[1]:.2f}]",
                     judged(nmt.margin_verdict(r, 0.5)),
                     detail=f"{r.describe()}; reproduced if the CI lies above -0.5, not reproduced if below; validation "
                            f"perplexity {'still falling' if still_falling(('prune+retrain', 0.8)) else 'flat or rising'} "
                            f"at the last retraining epoch; {note}")

both = [s for s in P.scratch_sparsities if ("prune+retrain", s) in points]
if both:
    rs = {s: compare("nmt-retrain-beats-scratch", ("prune+retrain", s), ("sparse-from-scratch", s)) for s in both}
    run.record_claim("nmt-retrain-beats-scratch", "Prune+retrain beats the same sparse mask trained from scratch",
                     "min over sparsities of BLEU(prune+retrain) - BLEU(sparse-from-scratch)",
                     f"{min(r.delta for r in rs.values()):.2f}",
                     judged(nmt.combined_verdict([nmt.beats_verdict(r) for r in rs.values()])),
                     detail="; ".join(f"{s:.0%}: {r.describe()}" for s, r in rs.items())
                            + f"; scratch trained {scratch.max_epochs} epochs (baseline {base_epochs} + retraining "
                              f"{P.retrain_epochs}) at lr {P.lr}; {note}")

best_row = table[table.method == "prune+retrain"].sort_values(["test_bleu", "sparsity"], ascending=[False, False]).iloc[0]
best = ("prune+retrain", float(best_row.sparsity))
r = compare("nmt-retrain-outperforms", best, ("baseline", 0.0))
train_up, val_down = best_row.train_ppl > dense["train_ppl"], best_row.val_ppl < dense["val_ppl"]
v7 = nmt.beats_verdict(r) if train_up and val_down else "not reproduced"
run.record_claim("nmt-retrain-outperforms",
                 "Pruned and retrained models can outperform the original; training perplexity rises while validation "
                 "perplexity falls", "BLEU(best prune+retrain) - BLEU(baseline); train ppl, val ppl before -> after",
                 f"{r.delta:.2f}; train {dense['train_ppl']:.2f} -> {best_row.train_ppl:.2f}; "
                 f"val {dense['val_ppl']:.2f} -> {best_row.val_ppl:.2f}", judged(v7),
                 detail=f"best prune+retrain at {best[1]:.0%} (chosen as the highest BLEU of {P.retrain_sparsities}, "
                        f"so the p-value flatters it): {r.describe()}; training perplexity (first {len(train_head)} "
                        f"pairs) {'rose' if train_up else 'did not rise'}, validation perplexity "
                        f"{'fell' if val_down else 'did not fall'}; reproduced needs both parts and a BLEU gain beyond "
                        f"noise; {note}")

if P.schedule_sparsities:
    rs = {(a, s): compare("nmt-gradual-beats-one-shot", (a, s), ("prune+retrain", s))
          for s in P.schedule_sparsities for a in ("iterative", "gradual")}
    run.record_claim("nmt-gradual-beats-one-shot",
                     "Iterative and gradual pruning beat one-shot pruning at the same sparsity and retraining budget",
                     "min over sparsities and schedules of BLEU(iterative or gradual) - BLEU(one-shot)",
                     f"{min(r.delta for r in rs.values()):.2f}",
                     judged(nmt.combined_verdict([nmt.beats_verdict(r) for r in rs.values()])),
                     detail="; ".join(f"{a} {s:.0%}: {r.describe()}" for (a, s), r in rs.items())
                            + f"; {P.iterative_rounds} rounds / AGP every {P.gradual_every} steps over the first "
                              f"{span} of {budget_steps} steps; {note}")
run.save_table("comparisons", pd.DataFrame(comparisons))
pd.read_csv(run.path / "claims.csv")[["id", "value", "verdict"]]

# %%
run.finish()
