# %% [markdown]
# # 10 · NMT baseline: a Luong attention LSTM on Multi30k
#
# **Question.** How good is the dense model that the NMT pruning study prunes?
#
# **Paper.** See, Luong & Manning (2016), *Compression of Neural Machine Translation Models via
# Pruning*, prune a Luong et al. (2015) global-attention LSTM encoder-decoder. Here the model is
# the same family (stacked LSTMs, "general" attention, input feeding, softmax layer) trained on
# Multi30k task 1 (29k image-caption pairs, En->De by default), small enough for one machine.
#
# **What this notebook does.** Trains the baseline once per parameter set (the checkpoint is
# cached under `$PRUNELAB_RUNS/checkpoints` and reused by notebooks 11 and 12 and by the OBD/SNIP
# study), then reports training curves, validation/test perplexity and test BLEU (sacrebleu on
# detokenised output, signature printed).
#
# **Claim checked.** At the `paper` profile the baseline reaches mid-30s BLEU (>= 33) on
# test_2016_flickr, as small attention LSTMs do on this data (judged only at `paper`).
#
# The next cell holds the parameters; `None` takes the profile's value (notebooks/profiles/_nmt.toml).

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
n_examples = None   # sample translations shown
run_dir = ""        # set by `prunelab run`; "" derives the run folder from the parameters

# %%
import time

import matplotlib.pyplot as plt
import pandas as pd
import torch

from prunelab import metrics, nmt, runner
from prunelab.results import verdict

P, run = runner.start("10_nmt_baseline", profile=profile, run_dir=run_dir, n_examples=n_examples,
                      **{name: globals()[name] for name in nmt.PARAMS})
if P.threads:
    torch.set_num_threads(P.threads)
print(f"profile {P.profile}; run folder {run.path}")

# %% [markdown]
# ## Data
# Lowercased, Moses-tokenised; vocabularies from the training pairs only.

# %%
corpus = nmt.load_data(P)
data_table = pd.DataFrame([corpus.summary()])
run.save_table("data", data_table)
data_table.T

# %% [markdown]
# ## Train (or load) the baseline
# Early stopping on validation perplexity; the best epoch's weights are kept.

# %%
start = time.perf_counter()
base = nmt.baseline(P, corpus)
model = base.model
history = pd.DataFrame(base.history)
run.save_table("history", history)
print(f"baseline ready in {time.perf_counter() - start:.1f} s (training took {base.record['seconds']:.1f} s "
      f"on {base.record['device']}); {metrics.count_params(model):,} parameters")
history

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
trained = history[history.epoch > 0]
axes[0].plot(trained.epoch, trained.train_loss, marker="o")
axes[0].set(xlabel="epoch", ylabel="training loss (nats/token)", title="training loss")
axes[1].plot(history.epoch, history.val_ppl, marker="o", color="C1")
axes[1].set(xlabel="epoch", ylabel="validation perplexity", yscale="log", title="validation perplexity")
fig.suptitle(f"{P.layers}x{P.hidden} attention LSTM, Multi30k {P.direction}")
run.save_figure(fig, "training_curves")

# %% [markdown]
# ## Perplexity and BLEU
# BLEU is sacrebleu's corpus BLEU on Moses-detokenised output against the raw references,
# case-insensitive (the model writes lowercase).

# %%
start = time.perf_counter()
result = nmt.bleu(model, corpus, "test", beam=P.beam, alpha=P.alpha, verbose=True)
decode_seconds = time.perf_counter() - start
greedy = nmt.bleu(model, corpus, "test", beam=1, verbose=True)
params = dict(model.named_parameters())
weights = sum(params[n].numel() for names in nmt.weight_classes(model).values() for n in names)
scores = pd.DataFrame([
    dict(metric="val_perplexity", value=nmt.perplexity(model, corpus["val"])),
    dict(metric="test_perplexity", value=nmt.perplexity(model, corpus["test"])),
    dict(metric=f"test_bleu_beam{P.beam}", value=result.score),
    dict(metric="test_bleu_greedy", value=greedy.score),
    dict(metric="parameters", value=metrics.count_params(model)),
    dict(metric="prunable_weights", value=weights),
    dict(metric="train_seconds", value=base.record["seconds"]),
    dict(metric="decode_seconds_test", value=decode_seconds),
])
run.save_table("scores", scores)
run.save_table("bleu_signature", pd.DataFrame([dict(signature=result.signature)]))
scores

# %%
examples = pd.DataFrame(dict(source=corpus["test"].src_raw[:P.n_examples],
                             reference=corpus["test"].tgt_raw[:P.n_examples],
                             hypothesis=result.hypotheses[:P.n_examples]))
run.save_table("examples", examples)
examples

# %% [markdown]
# ## Weight classes
# See et al.'s classes and their sizes (biases are not in any class and are never pruned).

# %%
classes = pd.DataFrame([dict(cls=c, parameters=" ".join(names), weights=sum(params[n].numel() for n in names))
                        for c, names in nmt.weight_classes(model).items()]).rename(columns={"cls": "class"})
run.save_table("weight_classes", classes)
classes

# %% [markdown]
# ## Claim: the `paper` baseline reaches mid-30s BLEU on test_2016_flickr
# Judged only at the `paper` profile; smaller profiles record their BLEU as inconclusive.

# %%
holds = result.score >= 33.0 if P.profile == "paper" else None
run.record_claim("nmt-baseline-mid30s", "A small attention LSTM reaches mid-30s BLEU (>= 33) on Multi30k test_2016_flickr",
                 f"test BLEU, beam {P.beam}, sacrebleu {result.signature}", f"{result.score:.2f}", verdict(holds),
                 detail=f"profile {P.profile}; judged only at paper")

# %%
run.finish()
