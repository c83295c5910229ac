"""Models used by the studies."""
from prunelab.models.decode import beam_search, greedy
from prunelab.models.mlp import mlp
from prunelab.models.seq2seq import INITS, Seq2Seq, Seq2SeqConfig, init_weights_, weight_classes

__all__ = ["INITS", "Seq2Seq", "Seq2SeqConfig", "beam_search", "greedy", "init_weights_", "mlp", "weight_classes"]
