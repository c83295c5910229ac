# %% [markdown]
# # 13 · How much is free? Class-blind pruning against model size (See et al. 2016, section 5)
#
# **Question.** See et al. prune 40% of a 200M-parameter model's weights with no BLEU loss and no
# retraining. Notebook 11 checks that claim at one size; how does the free sparsity depend on the
# size of the model?
#
# **Method.** Baselines of several widths (embedding = hidden size = `width`; everything else
# from `_nmt.toml`, so the width of the profile is notebook 10's baseline, loaded from the cache)
# are each pruned class-blind at `sparsities`, without retraining, and their test BLEU compared
# with the dense model's by sacreBLEU's paired bootstrap. The *free sparsity* of a width is the
# largest sparsity up to which every sparsity tried loses at most `free_loss` BLEU.
#
# **Claims checked.** (1) the free sparsity grows with model size (Spearman rho of free sparsity
# against parameters > 0 and the widest model frees more than the narrowest); (2) See et al.'s
# "40% is free" at each width, with the 95% interval of the loss.
# Judged only for widths whose dense BLEU reaches `claims_min_bleu`.

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
widths = None           # embedding and hidden size of each baseline (the profile's own width included)
sparsities = None       # class-blind sparsities tried at each width, no retraining
sweep_beam = None       # beam of the BLEU sweep
free_loss = None        # BLEU loss that still counts as free (See et al.: 0.5)
claims_min_bleu = None  # widths whose dense BLEU is below this are left out of the claims
run_dir = ""            # set by `prunelab run`; "" derives the run folder from the parameters

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from prunelab import masks, nmt, runner
from prunelab.nmt.evaluate import paired_bleu
from prunelab.results import margin_verdict, verdict

OWN = ("widths", "sparsities", "sweep_beam", "free_loss", "claims_min_bleu")
P, run = runner.start("13_nmt_model_size", profile=profile, run_dir=run_dir,
                      **{name: globals()[name] for name in (*nmt.PARAMS, *OWN)})
if P.threads:
    torch.set_num_threads(P.threads)
corpus = nmt.load_data(P)
print(f"profile {P.profile}; run folder {run.path}; widths {P.widths}")

# %% [markdown]
# ## Baselines and the class-blind sweep
# Each width's baseline is trained once and cached (the profile's own width is notebook 10's);
# each point keeps its test translations, so the paired bootstrap below needs no decoding.

# %%
def width_params(width):
    return {**nmt.as_dict(P), "emb_size": width, "hidden": width}

def sweep_point(base, width, sparsity):
    model = base.fresh_copy()
    m = nmt.prune_masks(model, sparsity, "class-blind")
    masks.apply_masks_(model, m)
    result = nmt.bleu(model, base.corpus, "test", beam=P.sweep_beam, alpha=P.alpha)
    return dict(width=width, sparsity=sparsity, test_bleu=result.score, hypotheses=result.hypotheses,
                test_ppl=nmt.perplexity(model, base.corpus["test"]))

points, sizes = {}, {}
for width in tqdm(P.widths, desc="widths"):
    base = nmt.baseline(width_params(width), corpus)
    sizes[width] = sum(p.numel() for p in base.model.parameters())
    for s in [0.0, *P.sparsities]:
        points[width, s] = run.memo("sweep", dict(width=width, sparsity=s), lambda: sweep_point(base, width, s))

refs = corpus["test"].tgt_raw
rows = []
for (width, s), point in points.items():
    row = dict(width=width, parameters=sizes[width], sparsity=s, test_bleu=point["test_bleu"], test_ppl=point["test_ppl"])
    if s > 0:
        test = paired_bleu(point["hypotheses"], points[width, 0.0]["hypotheses"], refs, lowercase=P.lowercase)
        row.update(bleu_loss=0.0 - test.delta, loss_ci_low=0.0 - test.ci[1], loss_ci_high=0.0 - test.ci[0],
                   p_value=test.p_value)
    rows.append(row)
sweep = pd.DataFrame(rows)
run.save_table("sweep", sweep)
sweep.pivot(index="sparsity", columns="width", values="test_bleu").round(2)

# %% [markdown]
# ## The free sparsity against model size

# %%
def free_sparsity(group):
    free = 0.0
    for s, loss in group.sort_values("sparsity")[["sparsity", "bleu_loss"]].itertuples(index=False):
        if s == 0:
            continue
        if loss > P.free_loss:
            break
        free = s
    return free

pruned = sweep[sweep.sparsity > 0]
dense = sweep[sweep.sparsity == 0].set_index("width")
free = pd.DataFrame([dict(width=w, parameters=sizes[w], dense_bleu=dense.loc[w, "test_bleu"],
                          free_sparsity=free_sparsity(g)) for w, g in pruned.groupby("width")])
run.save_table("free_sparsity", free)

fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
sns.lineplot(data=sweep, x="sparsity", y="test_bleu", hue="width", marker="o", palette="viridis", ax=axes[0])
axes[0].set(xlabel="class-blind sparsity, no retraining", ylabel=f"test BLEU (beam {P.sweep_beam})")
axes[1].plot(free.parameters, free.free_sparsity, marker="o")
for w, x, y in free[["width", "parameters", "free_sparsity"]].itertuples(index=False):
    axes[1].annotate(f"width {w}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
axes[1].axhline(0.4, color="grey", ls="--", lw=1, label="See et al.: 40% (200M parameters)")
axes[1].set(xscale="log", xlabel="parameters", ylabel=f"largest sparsity losing <= {P.free_loss} BLEU",
            ylim=(-0.02, max(0.5, free.free_sparsity.max() + 0.05)))
axes[1].legend(fontsize=8)
fig.suptitle("Free sparsity against model size")
run.save_figure(fig, "free_sparsity_vs_size")
free

# %% [markdown]
# ## Claims
# The trend needs at least two widths whose dense BLEU reaches `claims_min_bleu`.

# %%
judged = free[free.dense_bleu >= P.claims_min_bleu].sort_values("parameters")
if len(judged) >= 2:
    rho = spearmanr(judged.parameters, judged.free_sparsity).statistic
    rho = 0.0 if pd.isna(rho) else float(rho)  # a constant free sparsity has no rank correlation
    grows = rho > 0 and judged.free_sparsity.iloc[-1] > judged.free_sparsity.iloc[0]
else:
    rho, grows = float("nan"), None
steps = sorted(P.sparsities)
run.record_claim("nmt-free-sparsity-grows-with-size", "The sparsity that class-blind pruning removes for free grows with "
                 "model size (why See et al.'s 200M-parameter model frees 40%)",
                 f"Spearman rho of free sparsity (loss <= {P.free_loss} BLEU) against parameters; holds if rho > 0 "
                 f"and the widest model frees more than the narrowest", f"{rho:.2f}", verdict(grows),
                 detail=f"free sparsity by width: {judged.set_index('width').free_sparsity.to_dict()} (resolution: the "
                        f"sparsities tried, {steps}); parameters: {judged.set_index('width').parameters.to_dict()}; "
                        f"widths below {P.claims_min_bleu} BLEU left out: {sorted(set(free.width) - set(judged.width))}")

at40 = pruned[(pruned.sparsity == 0.4) & pruned.width.isin(judged.width)].sort_values("parameters")
# Holds beyond noise when the whole 95% interval of the loss is below free_loss; fails beyond noise
# when it is all above; otherwise the run cannot tell (within noise): `results.margin_verdict` of
# the interval of BLEU(pruned) - BLEU(dense), the negated loss.
calls = {int(r.width): (margin_verdict(-r.loss_ci_high, -r.loss_ci_low, P.free_loss),
                        f"loss {r.bleu_loss:.2f} [{r.loss_ci_low:.2f}, {r.loss_ci_high:.2f}]")
         for r in at40.itertuples()}
widest = int(at40.width.iloc[-1]) if len(at40) else None
run.record_claim("nmt-blind-40-free-by-size", "Class-blind pruning of 40% costs <= 0.5 BLEU without retraining "
                 "(at the widest model tried)", f"BLEU loss at 40% class-blind, width {widest}, 95% paired bootstrap interval",
                 calls[widest][1] if calls else "nan", calls[widest][0] if calls else verdict(None),
                 detail="; ".join(f"width {w}: {text} -> {call}" for w, (call, text) in calls.items())
                 or f"no width with 40% in sparsities and dense BLEU >= {P.claims_min_bleu}")
pd.read_csv(run.path / "claims.csv")[["id", "value", "verdict"]]

# %%
run.finish()
