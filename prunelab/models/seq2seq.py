"""Luong et al. (2015) global-attention LSTM encoder-decoder, as pruned by See et al. (2016).

Encoder: source embedding -> stacked ``nn.LSTM``.  Decoder: target embedding (concatenated
with the previous attentional state when ``input_feed``) -> stacked ``nn.LSTM`` -> "general"
global attention ``score(h_t, h_s) = h_t^T W_a h_s``, attentional state
``h~_t = tanh(W_c [c_t; h_t])`` -> softmax layer ``W_s h~_t``.  The decoder starts from the
encoder's final states.  Decoding (greedy and beam) lives in `prunelab.models.decode`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

PAD = 0
INITS = ("uniform", "kaiming_uniform", "kaiming_normal", "xavier_uniform", "xavier_normal")


@dataclass(frozen=True)
class Seq2SeqConfig:
    """Sizes of the model.  See et al. used 4 layers x 1000 units, no dropout, input feeding."""

    src_vocab: int
    tgt_vocab: int
    layers: int = 2
    emb_size: int = 256
    hidden: int = 256
    dropout: float = 0.2
    input_feed: bool = True

    def __post_init__(self):
        for name in ("src_vocab", "tgt_vocab", "layers", "emb_size", "hidden"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r} must be a positive integer")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} must lie in [0, 1)")


class Seq2Seq(nn.Module):
    """Attention encoder-decoder; ``forward`` returns logits (B, T, tgt_vocab).

    >>> m = Seq2Seq(Seq2SeqConfig(src_vocab=10, tgt_vocab=12, layers=2, emb_size=8, hidden=8))
    >>> m(torch.tensor([[4, 5, 6]]), torch.tensor([3]), torch.tensor([[2, 7]])).shape
    torch.Size([1, 2, 12])
    """

    def __init__(self, config: Seq2SeqConfig):
        super().__init__()
        c = self.config = config
        self.src_embedding = nn.Embedding(c.src_vocab, c.emb_size, padding_idx=PAD)
        self.tgt_embedding = nn.Embedding(c.tgt_vocab, c.emb_size, padding_idx=PAD)
        drop = c.dropout if c.layers > 1 else 0.0
        self.encoder = nn.LSTM(c.emb_size, c.hidden, c.layers, batch_first=True, dropout=drop)
        dec_in = c.emb_size + (c.hidden if c.input_feed else 0)
        self.decoder = nn.LSTM(dec_in, c.hidden, c.layers, batch_first=True, dropout=drop)
        self.attn_score = nn.Linear(c.hidden, c.hidden, bias=False)  # W_a
        self.attn_out = nn.Linear(2 * c.hidden, c.hidden, bias=False)  # W_c
        self.generator = nn.Linear(c.hidden, c.tgt_vocab)  # W_s (the softmax layer)
        self.drop = nn.Dropout(c.dropout)
        init_weights_(self, "uniform")

    def encode(self, src: Tensor, src_len: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor], Tensor]:
        """Encoder states (B, S, H), final (h, c) each (L, B, H), and the source mask (B, S)."""
        emb = self.drop(self.src_embedding(src))
        packed = pack_padded_sequence(emb, src_len.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.encoder(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True, total_length=src.shape[1])
        return memory, state, src != PAD

    def attend(self, h: Tensor, memory: Tensor, mask: Tensor) -> Tensor:
        """Attentional states h~ (B, T, H) from decoder tops ``h`` (B, T, H) over ``memory``."""
        scores = torch.bmm(self.attn_score(h), memory.transpose(1, 2))  # (B, T, S)
        scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
        context = torch.bmm(scores.softmax(-1), memory)
        return torch.tanh(self.attn_out(torch.cat([context, h], -1)))

    def step(self, y: Tensor, state, feed: Tensor, memory: Tensor, mask: Tensor):
        """One decoder step: previous tokens ``y`` (N,) -> log-probs (N, V), state, new feed (N, H)."""
        emb = self.drop(self.tgt_embedding(y))[:, None, :]
        inp = torch.cat([emb, feed[:, None, :]], -1) if self.config.input_feed else emb
        out, state = self.decoder(inp, state)
        feed = self.attend(out, memory, mask)[:, 0]
        return self.generator(self.drop(feed)).log_softmax(-1), state, feed

    def forward(self, src: Tensor, src_len: Tensor, tgt_in: Tensor) -> Tensor:
        memory, state, mask = self.encode(src, src_len)
        emb = self.drop(self.tgt_embedding(tgt_in))
        if not self.config.input_feed:
            out, _ = self.decoder(emb, state)
            return self.generator(self.drop(self.attend(out, memory, mask)))
        feed = memory.new_zeros(src.shape[0], self.config.hidden)
        outs = []
        for t in range(tgt_in.shape[1]):
            out, state = self.decoder(torch.cat([emb[:, t:t + 1], feed[:, None, :]], -1), state)
            feed = self.attend(out, memory, mask)[:, 0]
            outs.append(feed)
        return self.generator(self.drop(torch.stack(outs, 1)))


def weight_classes(model: Seq2Seq) -> dict[str, list[str]]:
    """See et al.'s weight classes: class name -> parameter names.

    Classes: ``source embedding``, ``target embedding``, ``encoder layer 1..n``,
    ``decoder layer 1..n`` (each layer's ``weight_ih_l{k}`` and ``weight_hh_l{k}``),
    ``attention`` (W_a and W_c) and ``softmax`` (W_s).  Biases are outside every class, as in
    the paper, so they are never pruned; every weight matrix is in exactly one class.

    >>> m = Seq2Seq(Seq2SeqConfig(src_vocab=10, tgt_vocab=12, layers=2, emb_size=8, hidden=8))
    >>> list(weight_classes(m))[:3]
    ['source embedding', 'target embedding', 'encoder layer 1']
    """
    n = model.config.layers
    classes = {"source embedding": ["src_embedding.weight"], "target embedding": ["tgt_embedding.weight"]}
    for side in ("encoder", "decoder"):
        for k in range(n):
            classes[f"{side} layer {k + 1}"] = [f"{side}.weight_ih_l{k}", f"{side}.weight_hh_l{k}"]
    classes["attention"] = ["attn_score.weight", "attn_out.weight"]
    classes["softmax"] = ["generator.weight"]
    return classes


@torch.no_grad()
def init_weights_(model: nn.Module, scheme: str = "uniform", generator: torch.Generator | None = None,
                  scale: float = 0.1) -> nn.Module:
    """Re-initialise every parameter of ``model`` in place and return it.

    ``uniform`` draws every parameter (biases included) from U(-scale, scale), as Luong et al.
    and See et al. did.  The Kaiming/Xavier schemes draw weight matrices with
    ``torch.nn.init`` (Kaiming with ``nonlinearity="linear"``, i.e. gain 1, since LSTM gates
    and the attention are not ReLUs; fans from each matrix's shape) and zero the biases.
    Padding rows of embeddings are zeroed.  ``generator`` makes the draw reproducible.

    Raises:
        ValueError: ``scheme`` not in `INITS`.

    >>> init_weights_(nn.Linear(3, 2), "xavier_normal").bias.tolist()
    [0.0, 0.0]
    """
    if scheme not in INITS:
        raise ValueError(f"unknown init scheme {scheme!r}; choose one of {', '.join(INITS)}")
    for name, p in model.named_parameters():
        if scheme == "uniform":
            p.uniform_(-scale, scale, generator=generator)
        elif p.ndim < 2:
            p.zero_()
        elif scheme.startswith("kaiming"):
            fn = nn.init.kaiming_uniform_ if scheme.endswith("uniform") else nn.init.kaiming_normal_
            fn(p, nonlinearity="linear", generator=generator)
        else:
            fn = nn.init.xavier_uniform_ if scheme.endswith("uniform") else nn.init.xavier_normal_
            fn(p, generator=generator)
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight[module.padding_idx].zero_()
    return model


def count_class_weights(model: nn.Module, classes: dict[str, list[str]]) -> dict[str, int]:
    """Number of weights in each class."""
    params = dict(model.named_parameters())
    return {c: sum(params[n].numel() for n in names) for c, names in classes.items()}

