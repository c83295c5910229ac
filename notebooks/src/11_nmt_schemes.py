# %% [markdown]
# # 11 · NMT pruning schemes without retraining (See et al. 2016, sections 4-5)
#
# **Question.** Which of See et al.'s magnitude schemes loses least when a trained NMT model is
# pruned in one shot, and which weight classes matter most?
#
# **Paper.** See, Luong & Manning (2016), *Compression of Neural Machine Translation Models via
# Pruning*: class-blind (one magnitude threshold over all classes), class-uniform (the same
# fraction of every class) and class-distribution (prune below lambda x the class's standard
# deviation) compared with random pruning, on the baseline of notebook 10 (loaded from the cache).
# Classes: source/target embedding, encoder/decoder layers 1..n, attention, softmax; biases are
# never pruned.
#
# **Claims checked.** (1) class-blind >= class-uniform >= class-distribution across sparsities;
# (2) every magnitude scheme beats random pruning; (3) 40% class-blind pruning costs <= 0.5 BLEU;
# (4) pruning the softmax, attention or top layers hurts perplexity more than pruning the
# embeddings. Verdicts are computed from this run's numbers and are `inconclusive` when the
# baseline is too weak to decide (e.g. at `smoke`).

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
schemes = None             # subset of class-blind, class-uniform, class-distribution, random
sparsities = None          # fractions removed in the scheme sweep
sweep_beam = None          # beam width of the BLEU in the sweep (1 = greedy), dense row included
class_fractions = None     # fractions of one class pruned alone
class_bar_fraction = None  # the fraction shown in the per-class bar chart and claim (4)
class_report_sparsity = None  # sparsity of the "% pruned per class" comparison (See et al.: 90%)
heatmap_sparsity = None    # class-blind sparsity of the mask heatmaps
bleu_tolerance = None      # BLEU differences below this count as ties in claims (1) and (2)
claims_min_bleu = None     # below this baseline BLEU the claims are inconclusive
run_dir = ""               # set by `prunelab run`; "" derives the run folder from the parameters

# %%
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from prunelab import masks, nmt, runner
from prunelab.results import verdict

OWN = ("schemes", "sparsities", "sweep_beam", "class_fractions", "class_bar_fraction", "class_report_sparsity",
       "heatmap_sparsity", "bleu_tolerance", "claims_min_bleu")
P, run = runner.start("11_nmt_schemes", profile=profile, run_dir=run_dir,
                      **{name: globals()[name] for name in (*nmt.PARAMS, *OWN)})
if P.threads:
    torch.set_num_threads(P.threads)
base = nmt.baseline(P)  # trained by notebook 10 (or now, once) and cached
classes = nmt.weight_classes(base.model)
print(f"profile {P.profile}; run folder {run.path}; baseline {len(base.history) - 1} epochs")

# %% [markdown]
# ## Scheme sweep: test BLEU and perplexity vs sparsity
# Each point prunes a fresh copy of the baseline by weight magnitude; random pruning uses a
# seeded generator. Points are cached in the run folder, so an interrupted run resumes.

# %%
def sweep_point(scheme, sparsity):
    model = base.fresh_copy()
    m = nmt.prune_masks(model, sparsity, scheme, seed=P.seed, classes=classes)
    masks.apply_masks_(model, m)
    pruned = sum(int((~v).sum()) for v in m.values())
    total = sum(v.numel() for v in m.values())
    return dict(scheme=scheme, sparsity=sparsity, achieved=pruned / total,
                test_ppl=nmt.perplexity(model, base.corpus["test"]),
                test_bleu=nmt.bleu(model, base.corpus, "test", beam=P.sweep_beam, alpha=P.alpha).score)

dense = run.memo("sweep", dict(scheme="dense", sparsity=0.0), lambda: sweep_point("class-blind", 0.0))
rows = []
for scheme, s in tqdm([(a, b) for a in P.schemes for b in P.sparsities], desc="scheme sweep"):
    row = dense if s == 0 else run.memo("sweep", dict(scheme=scheme, sparsity=s), lambda: sweep_point(scheme, s))
    rows.append({**row, "scheme": scheme})
sweep = pd.DataFrame(rows)
run.save_table("sweep", sweep)
sweep.pivot(index="sparsity", columns="scheme", values="test_bleu").round(2)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
sns.lineplot(data=sweep, x="sparsity", y="test_bleu", hue="scheme", marker="o", ax=axes[0])
sns.lineplot(data=sweep, x="sparsity", y="test_ppl", hue="scheme", marker="o", ax=axes[1], legend=False)
axes[0].set(xlabel="sparsity (fraction of weights removed)", ylabel=f"test BLEU (beam {P.sweep_beam})")
axes[1].set(xlabel="sparsity (fraction of weights removed)", ylabel="test perplexity", yscale="log")
fig.suptitle("One-shot pruning without retraining")
run.save_figure(fig, "bleu_ppl_vs_sparsity")

# %% [markdown]
# ## Median BLEU by scheme
# The median over the swept sparsities above 0 (See et al. summarise the schemes the same way).

# %%
median = (sweep[sweep.sparsity > 0].groupby("scheme").test_bleu.median()
          .reindex(P.schemes).rename("median_bleu").reset_index())
run.save_table("median_bleu", median)
fig, ax = plt.subplots(figsize=(6, 3.2))
sns.barplot(data=median, x="scheme", y="median_bleu", hue="scheme", ax=ax, legend=False)
ax.set(ylabel="median test BLEU over sparsities", xlabel="")
run.save_figure(fig, "median_bleu_by_scheme")
median

# %% [markdown]
# ## Where the schemes prune: percentage pruned per class
# At `class_report_sparsity` (See et al. show 90%), class-blind and class-distribution spread
# the pruning unevenly; class-uniform is the same in every class by construction.

# %%
rows = []
for scheme in ("class-blind", "class-uniform", "class-distribution"):
    m = nmt.prune_masks(base.model, P.class_report_sparsity, scheme, classes=classes)
    for cls, names in classes.items():
        pruned = sum(int((~m[n]).sum()) for n in names)
        rows.append(dict(scheme=scheme, cls=cls, pruned_pct=100 * pruned / sum(m[n].numel() for n in names)))
per_class = pd.DataFrame(rows).rename(columns={"cls": "class"})
run.save_table("pruned_per_class", per_class)
fig, ax = plt.subplots(figsize=(11, 3.8))
sns.barplot(data=per_class[per_class.scheme != "class-uniform"], x="class", y="pruned_pct", hue="scheme", ax=ax)
ax.axhline(100 * P.class_report_sparsity, color="grey", ls="--", lw=1, label="overall")
ax.set(ylabel="% of the class pruned", xlabel="", title=f"Pruned per class at {P.class_report_sparsity:.0%} sparsity")
ax.tick_params(axis="x", rotation=30)
run.save_figure(fig, "pruned_per_class")
per_class.pivot(index="class", columns="scheme", values="pruned_pct").round(1)

# %% [markdown]
# ## Pruning one class alone
# The smallest-magnitude fraction f of one class is removed, everything else kept; the change in
# validation perplexity shows how much the class matters, and the largest magnitude removed shows
# how large the deleted weights were (See et al., figures 5-6).

# %%
params = dict(base.model.named_parameters())
base_val_ppl = nmt.perplexity(base.model, base.corpus["val"])

def class_point(cls, fraction):
    model = base.fresh_copy()
    names = classes[cls]
    m = masks.masks_from_scores({n: params[n].detach().abs().cpu() for n in names}, fraction, "class-blind")
    removed = [params[n].detach().abs().cpu()[~m[n]] for n in names]
    largest = float(torch.cat(removed).max()) if sum(r.numel() for r in removed) else 0.0
    masks.apply_masks_(model, m)
    return dict(cls=cls, fraction=fraction, largest_removed=largest,
                val_ppl=nmt.perplexity(model, base.corpus["val"]))

grid = [(c, f) for c in classes for f in P.class_fractions]
alone = pd.DataFrame([run.memo("alone", dict(cls=c, fraction=f), lambda: class_point(c, f))
                      for c, f in tqdm(grid, desc="classes alone")]).rename(columns={"cls": "class"})
alone["ppl_change"] = alone.val_ppl - base_val_ppl
run.save_table("class_alone", alone)
alone.pivot(index="class", columns="fraction", values="ppl_change").round(2)

# %%
bar = alone[alone.fraction == P.class_bar_fraction]
fig, ax = plt.subplots(figsize=(11, 3.6))
sns.barplot(data=bar, x="class", y="ppl_change", hue="class", ax=ax, legend=False)
ax.set(ylabel="validation perplexity change", xlabel="", yscale="symlog",
       title=f"Pruning {P.class_bar_fraction:.0%} of one class alone (baseline {base_val_ppl:.2f})")
ax.tick_params(axis="x", rotation=30)
run.save_figure(fig, "class_alone_ppl_change")

fig, ax = plt.subplots(figsize=(7, 4.2))
sns.lineplot(data=alone, x="largest_removed", y="ppl_change", hue="class", marker="o", ax=ax)
ax.set(xlabel="largest weight magnitude removed", ylabel="validation perplexity change", yscale="symlog",
       title="Perplexity change vs largest magnitude removed")
run.save_figure(fig, "class_alone_vs_magnitude")

# %% [markdown]
# ## Which gates and inputs keep their weights?
# Class-blind masks of the LSTM weight matrices at `heatmap_sparsity` (fraction kept per block;
# rows are the gates i, f, g, o of PyTorch's layout; for decoder layer 1 with input feeding the
# columns are [target embedding | previous attentional state]).

# %%
m = nmt.prune_masks(base.model, P.heatmap_sparsity, "class-blind", classes=classes)
mats = [(f"{side} layer {k + 1} {kind}", f"{side}.weight_{kind}_l{k}")
        for side in ("encoder", "decoder") for k in range(P.layers) for kind in ("ih", "hh")]
fig, axes = plt.subplots(2 * P.layers, 2, figsize=(9, 3.2 * P.layers), squeeze=False)
rows = []
for ax, (title, name) in zip(axes.flat, mats):
    keep = m[name].float().cpu()
    blocks = F.adaptive_avg_pool2d(keep[None, None], (min(64, keep.shape[0]), min(64, keep.shape[1])))[0, 0]
    im = ax.imshow(blocks, aspect="auto", vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
    for g in range(1, 4):
        ax.axhline(g * blocks.shape[0] / 4 - 0.5, color="white", lw=0.6)
    if name == "decoder.weight_ih_l0" and P.input_feed:
        ax.axvline(P.emb_size / keep.shape[1] * blocks.shape[1] - 0.5, color="red", lw=0.8)
    ax.set_title(f"{title} ({1 - keep.mean():.0%} pruned)", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([(g + 0.5) * blocks.shape[0] / 4 - 0.5 for g in range(4)], list("ifgo"), fontsize=8)
    for gate, part in zip("ifgo", keep.chunk(4, 0)):
        rows.append(dict(matrix=name, gate=gate, kept=float(part.mean())))
fig.colorbar(im, ax=axes, shrink=0.6, label="fraction kept")
fig.suptitle(f"Class-blind masks at {P.heatmap_sparsity:.0%} sparsity")
run.save_figure(fig, "mask_heatmaps")
gates = pd.DataFrame(rows)
run.save_table("kept_per_gate", gates)
gates.pivot(index="matrix", columns="gate", values="kept").round(3)

# %% [markdown]
# ## Claims
# A claim is only judged when the baseline BLEU reaches `claims_min_bleu`; otherwise the numbers
# are recorded as inconclusive.

# %%
dense_bleu = float(dense["test_bleu"])
decidable = dense_bleu >= P.claims_min_bleu
table = sweep[sweep.sparsity > 0].pivot(index="sparsity", columns="scheme", values="test_bleu")
tol = P.bleu_tolerance
note = f"baseline test BLEU {dense_bleu:.2f} (beam {P.sweep_beam}); claims need >= {P.claims_min_bleu}"

order = ["class-blind", "class-uniform", "class-distribution"]
if set(order) <= set(table.columns):
    bad = [s for s, r in table.iterrows() if not (r[order[0]] >= r[order[1]] - tol and r[order[1]] >= r[order[2]] - tol)]
    run.record_claim("nmt-scheme-order", "Class-blind >= class-uniform >= class-distribution across sparsities (no retraining)",
                     f"sparsities where the order fails by more than {tol} BLEU", f"{len(bad)} of {len(table)}",
                     verdict(not bad if decidable else None), detail=f"fails at {bad}; {note}")

if "random" in table.columns:
    magnitude = [s for s in order if s in table.columns]
    gap = table[magnitude].min(axis=1) - table["random"]
    bad = [s for s, g in gap.items() if g <= 0]
    run.record_claim("nmt-magnitude-beats-random", "Every magnitude scheme beats random pruning (no retraining)",
                     "min over sparsities of (worst magnitude scheme BLEU - random BLEU)", f"{gap.min():.2f}",
                     verdict(not bad if decidable else None), detail=f"not ahead at {bad}; {note}")

if 0.4 in table.index and "class-blind" in table.columns:
    loss = dense_bleu - table.loc[0.4, "class-blind"]
    run.record_claim("nmt-blind-40-free", "Class-blind pruning of 40% of the weights costs <= 0.5 BLEU without retraining",
                     "baseline BLEU - BLEU at 40% class-blind", f"{loss:.2f}", verdict(loss <= 0.5 if decidable else None),
                     detail=note)

important = ["softmax", "attention", f"encoder layer {P.layers}", f"decoder layer {P.layers}"]
cheap = ["source embedding", "target embedding"]
change = bar.set_index("class").ppl_change
margin = change[important].min() - change[cheap].max()
run.record_claim("nmt-class-importance", "Pruning softmax, attention or the top layers hurts perplexity more than pruning the embeddings",
                 f"min ppl change over {important} - max over embeddings, {P.class_bar_fraction:.0%} of one class pruned",
                 f"{margin:.3f}", verdict(bool(margin > 0) if decidable else None),
                 detail=f"changes: {change.round(3).to_dict()}; {note}")
pd.read_csv(run.path / "claims.csv")[["id", "value", "verdict"]]

# %%
run.finish()
