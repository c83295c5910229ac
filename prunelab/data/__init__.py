"""Data loaders. Each keeps its real download path for users and reads local copies first."""
from prunelab.data.corpus import Corpus, CorpusConfig, Split, load_corpus
from prunelab.data.digits import load_digits
from prunelab.data.multi30k import read_folder, read_multi30k

__all__ = ["Corpus", "CorpusConfig", "Split", "load_corpus", "load_digits", "read_folder", "read_multi30k"]
