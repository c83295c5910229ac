"""Probe: how far does one-shot class-blind pruning + retraining get with more epochs? (S4 of notebook 12)

Notebook 12 retrains 2 epochs at `default`; this asks whether its S4 verdict is the budget's. It
loads the cached `default` NMT baseline (run notebook 10 first, same $PRUNELAB_RUNS), prunes it
class-blind, then retrains one epoch at a time at lr x retrain_lr_factor (no decay between the
calls) and prints validation perplexity and greedy test BLEU after each:

    python benchmarks/retrain_probe.py --sparsity 0.8 --epochs 5    # ~70 s per epoch on one core
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from prunelab import masks as M, nmt, runner  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparsity", type=float, default=0.8)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--profile", default="default")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    P = runner.resolve("12_nmt_retrain", args.profile)
    base = nmt.baseline(P, progress=False)
    model = base.fresh_copy()
    masks = nmt.prune_masks(model, args.sparsity, "class-blind")
    M.apply_masks_(model, masks)
    print(json.dumps(dict(epoch=0, test_bleu=round(nmt.bleu(model, base.corpus, "test", beam=1).score, 2))))
    for epoch in range(1, args.epochs + 1):
        start = time.perf_counter()
        config = nmt.TrainConfig.from_params(P, lr=P["lr"] * P["retrain_lr_factor"], max_epochs=1, seed=P["seed"] + epoch)
        history, masks = nmt.train_sparse_(model, base.corpus, config, masks=masks, progress=False)
        bleu = nmt.bleu(model, base.corpus, "test", beam=1).score
        print(json.dumps(dict(epoch=epoch, val_ppl=round(history[-1]["val_ppl"], 3), test_bleu=round(bleu, 2),
                              seconds=round(time.perf_counter() - start, 1))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
