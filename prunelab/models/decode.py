"""Batched greedy and beam-search decoding for `prunelab.models.seq2seq.Seq2Seq`."""
from __future__ import annotations

import torch
from torch import Tensor

BOS, EOS = 2, 3


def _max_len(src_len: Tensor, max_len: int | None) -> int:
    return int(max_len) if max_len else int(2 * src_len.max()) + 10


def _repeat_state(state, k: int):
    return tuple(s.repeat_interleave(k, dim=1) for s in state)


@torch.no_grad()
def greedy(model, src: Tensor, src_len: Tensor, max_len: int | None = None) -> list[list[int]]:
    """Most-likely token at each step for a batch of sources.

    Args:
        model: a `Seq2Seq` (put in eval mode here).
        src: source ids (B, S); src_len: (B,).
        max_len: most target tokens; default ``2 * max(src_len) + 10``.

    Returns:
        B lists of target ids, each without ``<s>`` and cut before ``</s>``.

    >>> greedy(model, batch.src, batch.src_len)  # doctest: +SKIP
    """
    model.eval()
    memory, state, mask = model.encode(src, src_len)
    b = src.shape[0]
    y = torch.full((b,), BOS, dtype=torch.long, device=src.device)
    feed = memory.new_zeros(b, model.config.hidden)
    out, done = [], torch.zeros(b, dtype=torch.bool, device=src.device)
    for _ in range(_max_len(src_len, max_len)):
        logp, state, feed = model.step(y, state, feed, memory, mask)
        y = logp.argmax(-1)
        out.append(y)
        done |= y == EOS
        if bool(done.all()):
            break
    return [_cut(row) for row in torch.stack(out, 1).tolist()]


def _cut(ids: list[int]) -> list[int]:
    return ids[: ids.index(EOS)] if EOS in ids else ids


@torch.no_grad()
def beam_search(model, src: Tensor, src_len: Tensor, beam: int = 5, max_len: int | None = None,
                alpha: float = 1.0) -> list[list[int]]:
    """Beam search for a batch of sources; beam 1 equals `greedy`.

    Hypotheses are ranked inside the beam by their summed log-probability; a finished
    hypothesis stays in the beam with its score frozen.  The best final hypothesis maximises
    ``score / length**alpha`` (``alpha=0``: no length normalisation; length counts ``</s>``).

    Args:
        model: a `Seq2Seq`.
        src: source ids (B, S); src_len: (B,).
        beam: beam width K >= 1.
        max_len: most target tokens; default ``2 * max(src_len) + 10``.
        alpha: length-normalisation exponent.

    Returns:
        B lists of target ids without ``<s>``/``</s>``.

    >>> beam_search(model, batch.src, batch.src_len, beam=5)  # doctest: +SKIP
    """
    if int(beam) < 1:
        raise ValueError(f"beam={beam!r} must be >= 1")
    model.eval()
    memory, state, mask = model.encode(src, src_len)
    b, k, dev = src.shape[0], int(beam), src.device
    memory, mask = memory.repeat_interleave(k, 0), mask.repeat_interleave(k, 0)
    state = _repeat_state(state, k)
    feed = memory.new_zeros(b * k, model.config.hidden)
    y = torch.full((b * k,), BOS, dtype=torch.long, device=dev)
    scores = torch.full((b, k), float("-inf"), device=dev)
    scores[:, 0] = 0.0  # all beams start identical: keep one so the first top-k is not K copies
    tokens = torch.empty(b, k, 0, dtype=torch.long, device=dev)
    finished = torch.zeros(b, k, dtype=torch.bool, device=dev)
    for _ in range(_max_len(src_len, max_len)):
        logp, state, feed = model.step(y, state, feed, memory, mask)
        logp = logp.float().view(b, k, -1)
        # A finished hypothesis may only extend by </s> at no cost, so its score is frozen.
        frozen = torch.full_like(logp[0, 0], float("-inf"))
        frozen[EOS] = 0.0
        logp = torch.where(finished[..., None], frozen, logp)
        vocab = logp.shape[-1]
        top, idx = (scores[..., None] + logp).view(b, -1).topk(k, dim=-1)
        origin, y2 = idx // vocab, idx % vocab
        flat = (origin + torch.arange(b, device=dev)[:, None] * k).view(-1)
        state = tuple(s[:, flat] for s in state)
        feed = feed[flat]
        tokens = torch.cat([tokens.gather(1, origin[..., None].expand(-1, -1, tokens.shape[-1])), y2[..., None]], -1)
        finished = finished.gather(1, origin) | (y2 == EOS)
        scores, y = top, y2.view(-1)
        if bool(finished.all()):
            break
    lengths = torch.where(tokens == EOS, torch.arange(tokens.shape[-1], device=dev), tokens.shape[-1]).min(-1).values + 1
    lengths = lengths.clamp_max(tokens.shape[-1])
    best = (scores / lengths.float().pow(alpha)).argmax(-1)
    chosen = tokens[torch.arange(b, device=dev), best]
    return [_cut(row) for row in chosen.tolist()]
