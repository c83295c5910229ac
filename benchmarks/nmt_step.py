"""Benchmark: one NMT training step (forward, backward, clip, optimizer), per CPU thread count and Adam kernel.

The `default` NMT study spends most of its time in these steps. This times the same batches of
the real corpus, side by side in one run, for each (threads, Adam implementation) pair and prints
each one's seconds per step and its speedup over the old setting (1 thread, foreach Adam):

    python benchmarks/nmt_step.py                       # `default` model size, 60 steps per setting
    python benchmarks/nmt_step.py --profile smoke --steps 5

Settings alternate round by round (best of ``--rounds``), so a noisy neighbour slows all of them.
"""
import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from prunelab import nmt, runner  # noqa: E402
from prunelab.nmt.baseline import build_model, load_data  # noqa: E402

SETTINGS = [(1, "foreach"), (1, "fused"), (2, "foreach"), (2, "fused")]


def _steps(model, opt, batches, clip) -> float:
    start = time.perf_counter()
    for batch in batches:
        opt.zero_grad(set_to_none=True)
        loss = nmt.batch_loss(model, batch)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
    return (time.perf_counter() - start) / len(batches)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="default")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    P = runner.resolve("10_nmt_baseline", args.profile)
    corpus = load_data(P)
    batches = []
    for batch in corpus["train"].batches(P["batch_size"], torch.Generator().manual_seed(0)):
        batches.append(batch)
        if len(batches) == args.steps:
            break
    models, best = {}, {}
    for setting in SETTINGS:
        model = build_model({**P, "device": "cpu"}, corpus, seed=0).train()
        models[setting] = model, torch.optim.Adam(model.parameters(), lr=P["lr"], **{setting[1]: True})
    before = torch.get_num_threads()
    try:
        for _ in range(args.rounds):
            for setting, (model, opt) in models.items():
                torch.set_num_threads(setting[0])
                _steps(model, opt, batches[:2], P["clip"])  # warm up this thread count
                seconds = _steps(model, opt, batches, P["clip"])
                best[setting] = min(best.get(setting, seconds), seconds)
    finally:
        torch.set_num_threads(before)
    reference = best[SETTINGS[0]]
    for (threads, adam), seconds in best.items():
        print(json.dumps(dict(threads=threads, adam=adam, ms_per_step=round(1000 * seconds, 1),
                              speedup=round(reference / seconds, 2))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
