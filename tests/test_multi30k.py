"""Multi30k loader: local mirror, checksums, clear errors, directions, tokenisation, vocabulary."""
import gzip
import hashlib

import pytest

from prunelab.data import CorpusConfig, load_corpus, multi30k, read_folder, read_multi30k
from prunelab.data.text import build_vocab, detokenize, iterate_batches, tokenize
from nmt_helpers import TINY, multi30k_root, write_parallel


def test_shared_copy_has_the_published_splits_and_sums():
    root = multi30k_root()
    sums = dict(reversed(line.split()) for line in (root / "SHA256SUMS").read_text().splitlines())
    assert sums == multi30k.SHA256
    src, tgt = read_multi30k("test", "en-de", root)
    assert len(src) == len(tgt) == 1000
    de, en = read_multi30k("val", "de-en", root)
    assert len(de) == 1014 and en == read_multi30k("val", "en-de", root)[0]
    assert src[0].startswith("A man") and tgt[0].startswith("Ein Mann")


def test_environment_variable_points_at_the_mirror(monkeypatch):
    root = multi30k_root()
    monkeypatch.setenv(multi30k.ENV_VAR, str(root))
    assert multi30k.locate("val.en.gz") == root / "val.en.gz"


def test_bad_direction_names_the_allowed_ones():
    with pytest.raises(ValueError, match="'en-fr'.*de-en, en-de"):
        read_multi30k("val", "en-fr", "/nonexistent")
    with pytest.raises(ValueError, match="'de-de'"):
        load_corpus(CorpusConfig(direction="de-de"))
    with pytest.raises(ValueError, match="split 'dev'.*train, val, test"):
        read_multi30k("dev", "en-de", "/nonexistent")


def _fake_mirror(tmp_path, monkeypatch, corrupt: str | None = None):
    """Tiny gz files written here, with their sums patched in as if they were the originals."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    sums, pairs = {}, {}
    for split, stem in multi30k.SPLITS.items():
        for side, lang in enumerate(("en", "de")):
            path = folder / f"{stem}.{lang}.gz"
            with gzip.open(path, "wt", encoding="utf-8") as f:
                f.write("\n".join(p[side] for p in TINY) + "\n")
            sums[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
        pairs[split] = len(TINY)
    if corrupt:
        (folder / corrupt).write_bytes(b"not the file")
    monkeypatch.setattr(multi30k, "SHA256", sums)
    monkeypatch.setattr(multi30k, "PAIRS", pairs)
    return folder


def test_tiny_gz_mirror_reads_and_tokenises(tmp_path, monkeypatch):
    folder = _fake_mirror(tmp_path, monkeypatch)
    corpus = load_corpus(CorpusConfig(direction="de-en", min_freq=1), root=folder)
    assert len(corpus["train"]) == len(TINY) and corpus.src_lang == "de"
    assert corpus.src_vocab.decode(corpus["train"].src[0]) == ["ein", "hund", "rennt", "."]
    assert corpus["test"].tgt_raw[0] == "a dog runs ."


def test_corrupt_file_is_a_checksum_error_naming_it(tmp_path, monkeypatch):
    folder = _fake_mirror(tmp_path, monkeypatch, corrupt="val.de.gz")
    with pytest.raises(ValueError, match=r"checksum mismatch for .*val\.de\.gz"):
        read_multi30k("val", "en-de", folder)


def test_shared_sums_catch_a_corrupt_copy(tmp_path):
    (tmp_path / "train.en.gz").write_bytes(b"corrupt")
    with pytest.raises(ValueError, match="train.en.gz"):
        multi30k.locate("train.en.gz", tmp_path)


def test_missing_files_offline_say_where_and_how(tmp_path, monkeypatch):
    monkeypatch.setattr(multi30k, "cache_dir", lambda: tmp_path / "cache")

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr(multi30k.urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match=r"(?s)train\.de\.gz not found.*empty.*cache.*network unreachable.*PRUNELAB_MULTI30K"):
        multi30k.locate("train.de.gz", tmp_path / "empty")
    assert not (tmp_path / "cache" / "train.de.gz").exists()
    with pytest.raises(KeyError, match="'train.fr.gz'"):
        multi30k.locate("train.fr.gz", tmp_path)


def test_plain_parallel_folder(tmp_path):
    folder = write_parallel(tmp_path / "iwslt", gz=True)
    src, tgt = read_folder(folder, "val", "en-de")
    assert src[1] == "a man sits ." and tgt[1] == "ein mann sitzt ."
    corpus = load_corpus(CorpusConfig(direction="en-de", folder=str(folder), min_freq=2))
    assert "dog" in corpus.src_vocab.stoi and "book" not in corpus.src_vocab.stoi  # min_freq from train
    with pytest.raises(ValueError, match="'en-fr'.*de-en, en-de"):
        read_folder(folder, "train", "en-fr")
    (folder / "test.de.gz").unlink()
    with pytest.raises(FileNotFoundError, match="no test file for language 'de'"):
        read_folder(folder, "test", "en-de")


def test_subset_length_cap_and_vocab_size():
    root = multi30k_root()
    corpus = load_corpus(CorpusConfig(max_len=8, train_size=50, eval_size=7, min_freq=1, max_vocab=60), root=root)
    assert len(corpus["train"]) == 50 and len(corpus["val"]) == len(corpus["test"]) == 7
    assert max(len(s) for s in corpus["train"].src) <= 8
    assert len(corpus.src_vocab) == len(corpus.tgt_vocab) == 60
    with pytest.raises(ValueError, match="min_freq=0"):
        build_vocab([["a"]], min_freq=0)


def test_tokenise_detokenise_round_trip():
    tokens = tokenize("Two young, White males are outside.", "en")
    assert tokens == ["two", "young", ",", "white", "males", "are", "outside", "."]
    assert detokenize(tokens, "en") == "two young, white males are outside."


def test_batches_cover_every_pair_once_and_are_reproducible():
    import torch

    src = [[5] * (i % 4 + 1) for i in range(23)]
    tgt = [[6] * (i % 3 + 1) for i in range(23)]
    first = [b.index.tolist() for b in iterate_batches(src, tgt, 4, torch.Generator().manual_seed(1))]
    again = [b.index.tolist() for b in iterate_batches(src, tgt, 4, torch.Generator().manual_seed(1))]
    assert first == again and sorted(i for b in first for i in b) == list(range(23))
