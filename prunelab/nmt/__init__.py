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
from prunelab.nmt.evaluate import BleuResult, bleu, bleu_score, translate
from prunelab.nmt.train import TrainConfig, autocast, batch_loss, perplexity, target_tokens, train_

__all__ = ["BASELINE_KEYS", "PARAMS", "Baseline", "BleuResult", "INITS", "Seq2Seq", "Seq2SeqConfig", "TrainConfig", "as_dict",
           "autocast", "baseline", "baseline_key", "batch_loss", "bleu", "bleu_score", "build_model", "load_data",
           "load_state_", "perplexity", "prune_masks", "target_tokens", "train_", "translate", "weight_classes"]
