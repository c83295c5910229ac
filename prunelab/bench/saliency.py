"""Row 3: cost of each saliency as a multiple of one plain forward+backward over the same batches.

Taylor (per filter, Molchanov et al. 2017) runs on the small AlexNet; SNIP, the empirical
Fisher, Hutchinson, GraSP and one SynFlow round on the NMT seq2seq (where the OBD/SNIP study and
notebook 22 use them).  The plain pass
is ``loss.backward()`` in eval mode over the same batches.  Calls are interleaved round-robin.
"""
from __future__ import annotations

import torch
from torch import nn

from prunelab.bench.common import BenchConfig, entry, median, paired_ratio, time_calls
from prunelab.bench.training import synthetic_batch
from prunelab.criteria import second_order
from prunelab.criteria.filters import taylor
from prunelab.models.cnn import alexnet_small
from prunelab.models.seq2seq import Seq2Seq, Seq2SeqConfig
from prunelab.nmt.train import batch_loss, target_tokens
from prunelab.removal import filter_layers


def _plain(model, batches, loss_fn):
    def run():
        model.eval()
        for batch in batches:
            model.zero_grad(set_to_none=True)
            loss_fn(model, batch).backward()
    return run


def _taylor_rows(cfg: BenchConfig, repeats: int) -> list[dict]:
    torch.manual_seed(0)
    b, n = (256, 4) if cfg.cuda else ((32, 2) if cfg.quick else (64, 4))
    model = alexnet_small().to(cfg.device)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(b, 1, 32, 32, generator=g).to(cfg.device), torch.randint(0, 10, (b,), generator=g).to(cfg.device))
               for _ in range(n)]
    layers = filter_layers(model, batches[0][0])
    ce = nn.CrossEntropyLoss(reduction="sum")
    t = time_calls(dict(plain=_plain(model, batches, lambda m, xy: ce(m(xy[0]), xy[1])),
                        taylor=lambda: taylor(model, batches=batches, layers=layers),
                        taylor_graph=lambda: taylor(model, batches=batches)), cfg.device, repeats=repeats)
    case = f"alexnet_small 1x32x32, {n} batches of {b}"
    plain = median(t["plain"])
    return [entry("3 saliency", case, "Taylor (filters) / forward+backward", paired_ratio(t, "taylor", "plain"), "", None, None,
                  "<= 1.10", paired_ratio(t, "taylor", "plain") <= 1.10, f"plain pass {plain * 1e3:.3g} ms; layers traced once"),
            entry("3 saliency", case, "Taylor incl. dependency-graph trace / forward+backward",
                  paired_ratio(t, "taylor_graph", "plain"), "", None, None, "", None,
                  "taylor(..., layers=None) traces Torch-Pruning's graph on every call")]


def _nmt(cfg: BenchConfig):
    s = dict(vocab=20_000, layers=2, hidden=500, batch=32, length=20) if cfg.cuda else (
        dict(vocab=2_000, layers=2, hidden=128, batch=16, length=10) if cfg.quick else
        dict(vocab=10_000, layers=2, hidden=256, batch=32, length=15))
    torch.manual_seed(0)
    config = Seq2SeqConfig(s["vocab"], s["vocab"], layers=s["layers"], emb_size=s["hidden"], hidden=s["hidden"], dropout=0.0)
    model = Seq2Seq(config).to(cfg.device)
    batches = [synthetic_batch(s["vocab"], s["batch"], s["length"], cfg.device) for _ in range(2)]
    return model, batches, f"seq2seq {s['layers']}x{s['hidden']}, {s['vocab'] // 1000}k vocab, 2 batches of {s['batch']}x{s['length']}"


def _second_order_rows(cfg: BenchConfig, repeats: int, probes: int = 4) -> list[dict]:
    model, batches, case = _nmt(cfg)
    fisher_batches = [batches[0]]  # per-example gradients: one batch is enough to see the cost
    fns = dict(plain=_plain(model, batches, batch_loss),
               snip=lambda: second_order.snip_saliency(model, loss_fn=batch_loss, batches=batches),
               hutchinson=lambda: second_order.hessian_diagonal(model, loss_fn=batch_loss, batches=batches,
                                                                estimator="hutchinson", probes=probes),
               plain1=_plain(model, fisher_batches, batch_loss),
               fisher=lambda: second_order.hessian_diagonal(model, loss_fn=batch_loss, batches=fisher_batches,
                                                            estimator="fisher", example_weights=target_tokens))
    t = time_calls(fns, cfg.device, repeats=repeats)
    cost = second_order.hutchinson_cost(model, loss_fn=batch_loss, batch=batches[0], probes=probes, repeats=repeats)
    central = second_order.hutchinson_cost(model, loss_fn=batch_loss, batch=batches[0], probes=probes, repeats=repeats,
                                           hvp="central")
    snip = paired_ratio(t, "snip", "plain")
    hutch_total = paired_ratio(t, "hutchinson", "plain")
    fisher = paired_ratio(t, "fisher", "plain1")
    info = second_order.hessian_diagonal(model, loss_fn=batch_loss, batches=fisher_batches, estimator="fisher",
                                         example_weights=target_tokens)[1]
    return [
        entry("3 saliency", case, "SNIP / forward+backward", snip, "", None, None, "", None, "one gradient per batch"),
        entry("3 saliency", case, "empirical Fisher / forward+backward", fisher, "", None, None, "", None,
              f"per-example gradients via {info['per_example']} ({info['examples']} examples)"),
        entry("3 saliency", case, "Hutchinson per probe / forward+backward (exact Hz, double backward)", cost["ratio"], "",
              None, None, "<= 2.5", cost["ratio"] <= 2.5, f"hutchinson_cost, {probes} probes, shared first backward "
              f"excluded; whole estimate with {probes} probes = {hutch_total:.3g}x ({hutch_total / probes:.3g}x per probe)"),
        entry("3 saliency", case, "Hutchinson per probe / forward+backward (Hz by central differences)", central["ratio"],
              "", None, None, "<= 2.5", central["ratio"] <= 2.5,
              "hvp='central': two plain forward+backward passes per probe, ~1e-4 relative error in Hz"),
    ]


def _at_init_rows(cfg: BenchConfig, repeats: int) -> list[dict]:
    """GraSP (both Hessian-gradient routes) over the batches, and one SynFlow round (the |w| flow
    pass plus the masks of that round, class-blind at 50%) against the plain pass."""
    from prunelab.at_init import seq2seq_flow
    from prunelab.criteria.flow import grasp_saliency, synflow_scores
    from prunelab.masks import masks_from_scores

    model, batches, case = _nmt(cfg)
    ones = seq2seq_flow(2)

    def synflow_round():
        masks_from_scores(synflow_scores(model, flow_fn=ones), 0.5)

    t = time_calls(dict(plain=_plain(model, batches, batch_loss),
                        grasp=lambda: grasp_saliency(model, loss_fn=batch_loss, batches=batches),
                        grasp_central=lambda: grasp_saliency(model, loss_fn=batch_loss, batches=batches,
                                                              hvp="central"),
                        grasp_forward=lambda: grasp_saliency(model, loss_fn=batch_loss, batches=batches,
                                                              hvp="forward"),
                        synflow=synflow_round), cfg.device, repeats=repeats)
    grasp, central, forward, synflow = (paired_ratio(t, k, "plain")
                                        for k in ("grasp", "grasp_central", "grasp_forward", "synflow"))
    return [
        entry("3 saliency", case, "GraSP / forward+backward (Hg by double backward)", grasp, "", None, None, "<= 3",
              grasp <= 3, "one create_graph gradient per batch, one double backward of sum_b <g_b, g>"),
        entry("3 saliency", case, "GraSP / forward+backward (Hg by central differences)", central, "", None, None, "<= 3",
              central <= 3, "one gradient, then two plain gradients at w +- eps g per batch"),
        entry("3 saliency", case, "GraSP / forward+backward (Hg by forward differences)", forward, "", None, None, "<= 3",
              forward <= 3, "one gradient, then one plain gradient at w + eps g per batch (notebook 22's default)"),
        entry("3 saliency", case, "SynFlow per round / forward+backward", synflow, "", None, None, "<= 1.2",
              synflow <= 1.2, "float64 |w| flow pass on a 2-token all-ones input, plus that round's masks"),
    ]


def rows(cfg: BenchConfig) -> list[dict]:
    repeats = 3 if cfg.quick or cfg.cuda else 5
    return _taylor_rows(cfg, repeats) + _second_order_rows(cfg, repeats) + _at_init_rows(cfg, repeats)
