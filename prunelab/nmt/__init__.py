"""NMT pruning (See, Luong & Manning 2016): data, baseline, training, evaluation.

The API other notebooks use (the OBD/SNIP study reuses the same baseline)::

    from prunelab import masks, nmt, runner
    P, run = runner.start("NN_x", ...)        # its profile file starts with base = "_nmt"
    base = nmt.baseline(P)                    # trained once per parameter set, then cached
    model, corpus = base.fresh_copy(), base.corpus   # a copy that is safe to prune in place
    classes = nmt.weight_classes(model)       # See et al.'s classes -> parameter names
    m = nmt.prune_masks(model, 0.8, "class-blind")       # or masks.masks_from_scores(scores, ...)
    masks.apply_masks_(model, m)
    nmt.perplexity(model, corpus["test"])     # float
    nmt.bleu(model, corpus, "test", beam=P.beam, verbose=True).score
    nmt.train_(model, corpus, nmt.TrainConfig.from_params(P, lr=P.lr / 10, max_epochs=2), masks=m)

    # pruning while retraining (one-shot, iterative, gradual), on a fixed budget of epochs:
    cfg = nmt.TrainConfig.from_params(P, max_epochs=2)
    schedule = nmt.sparsity_schedule("gradual", 0.8, span_steps=nmt.epoch_steps(corpus, cfg), every=50)
    history, m = nmt.train_sparse_(base.fresh_copy(), corpus, cfg, schedule)
    nmt.paired_bleu(hyps_a, hyps_b, corpus["test"].tgt_raw)   # bootstrap p-value and 95% CI of the difference

    # at initialisation (SNIP-style scores need a loss on batches):
    fresh = nmt.build_model(P, corpus, init="kaiming_normal", seed=0)   # see nmt.INITS
    batch = next(corpus["train"].batches(64, torch.Generator().manual_seed(0)))
    nmt.batch_loss(fresh, batch.to(next(fresh.parameters()).device)).backward()
    nmt.target_tokens(batch)                  # each sentence's weight in batch_loss (OBD's Fisher)
    base.initial_model()                      # the baseline's own initial weights (uniform +-0.1)

A new notebook sharing the baseline lists ``*nmt.PARAMS`` in its parameters cell (see
notebooks/src/11_nmt_schemes.py) and passes them to ``runner.start``; the cached checkpoint is
found as long as `baseline_key` of its parameters equals notebook 10's.

``P`` is the notebook's parameter namespace (or any mapping) holding the keys of
``notebooks/profiles/_nmt.toml``: data (``direction``, ``folder``, ``lowercase``, ``min_freq``,
``max_vocab``, ``max_len``, ``train_size``, ``eval_size``, ``data_root``), model (``layers``,
``emb_size``, ``hidden``, ``dropout``, ``input_feed``, ``init``), training (``optimizer``,
``lr``, ``batch_size``, ``max_epochs``, ``patience``, ``lr_decay``, ``clip``, ``seed``,
``max_steps``, ``amp``) and evaluation (``beam``, ``alpha``, ``device``).  The cache key of the
baseline is `baseline_key(P)`; a checkpoint that does not fit the model raises ValueError.
"""
from prunelab.models.seq2seq import INITS, Seq2Seq, Seq2SeqConfig, weight_classes
from prunelab.nmt.baseline import (BASELINE_KEYS, PARAMS, Baseline, as_dict, baseline, baseline_key, build_model, load_data,
                                   load_state_, prune_masks)
from prunelab.nmt.evaluate import BleuResult, PairedBleu, bleu, bleu_score, paired_bleu, translate
from prunelab.nmt.retrain import (SCHEDULE_METHODS, beats_verdict, combined_verdict, epoch_steps, first_pairs,
                                  margin_verdict, sparsity_schedule, train_sparse_)
from prunelab.nmt.train import TrainConfig, autocast, batch_loss, perplexity, target_tokens, train_

__all__ = ["BASELINE_KEYS", "PARAMS", "SCHEDULE_METHODS", "Baseline", "BleuResult", "INITS", "PairedBleu", "Seq2Seq",
           "Seq2SeqConfig", "TrainConfig", "as_dict", "autocast", "baseline", "baseline_key", "batch_loss", "beats_verdict",
           "bleu", "bleu_score", "build_model", "combined_verdict", "epoch_steps", "first_pairs", "load_data", "load_state_",
           "margin_verdict", "paired_bleu", "perplexity", "prune_masks", "sparsity_schedule", "target_tokens", "train_",
           "train_sparse_", "translate", "weight_classes"]
