"""Studies by name: `prunelab run nmt -p folder=... -p direction=de-en` runs the whole NMT study
on a user's corpus with one cached baseline; -p applies to every named notebook that takes it."""
import json
import random

import pandas as pd
import pytest

from prunelab import cli, runner

SUBJECTS = [("a dog", "ein hund"), ("a man", "ein mann"), ("a child", "ein kind"), ("the woman", "die frau"),
            ("the cat", "die katze"), ("a boy", "ein junge"), ("the girl", "das mädchen"), ("a bird", "ein vogel")]
VERBS = [("runs", "rennt"), ("sits", "sitzt"), ("sleeps", "schläft"), ("plays", "spielt"), ("waits", "wartet"),
         ("eats", "isst")]
PLACES = [("", ""), ("in the park", "im park"), ("on the street", "auf der straße"), ("at home", "zu hause"),
          ("by the water", "am wasser")]


def write_corpus(folder, seed=0):
    """A small German-English corpus in `read_folder`'s layout: train/valid/test.{de,en}, one sentence a line."""
    pairs = [(f"{s[0]} {v[0]} {p[0]} .".replace("  ", " "), f"{s[1]} {v[1]} {p[1]} .".replace("  ", " "))
             for s in SUBJECTS for v in VERBS for p in PLACES]
    random.Random(seed).shuffle(pairs)
    folder.mkdir(parents=True)
    for split, part in (("train", pairs[:180]), ("valid", pairs[180:210]), ("test", pairs[210:])):
        (folder / f"{split}.en").write_text("\n".join(en for en, _ in part) + "\n", encoding="utf-8")
        (folder / f"{split}.de").write_text("\n".join(de for _, de in part) + "\n", encoding="utf-8")
    return folder


def test_studies_are_the_notebooks_sharing_a_base():
    groups = runner.studies()
    assert groups["nmt"] == ["10_nmt_baseline", "11_nmt_schemes", "12_nmt_retrain", "13_nmt_model_size", "20_obd_snip",
                             "21_snip_ablations", "22_pruning_at_init"]
    assert groups["cnn"] == ["30_filter_oracle", "31_filter_pruning"]
    assert runner.expand(["31", "cnn", "00"]) == ["00_tour", "30_filter_oracle", "31_filter_pruning"]


def test_overrides_go_to_the_notebooks_that_take_them():
    shares = runner.split_overrides(["00_tour", "10_nmt_baseline"], {"epochs": 3, "max_epochs": 2, "lr": 0.1})
    assert shares == {"00_tour": {"epochs": 3, "lr": 0.1}, "10_nmt_baseline": {"max_epochs": 2, "lr": 0.1}}
    with pytest.raises(KeyError, match="none of 00_tour, 10_nmt_baseline takes a parameter 'colour'"):
        runner.split_overrides(["00_tour", "10_nmt_baseline"], {"colour": 1})
    with pytest.raises(ValueError, match="--profile"):
        runner.split_overrides(["00_tour"], {"profile": "paper"})


def test_cli_errors_name_parameter_and_notebooks(runs, capsys):
    assert cli.main(["run", "nmt", "--profile", "smoke", "-p", "foldr=x"]) == 1
    err = capsys.readouterr().err
    assert "none of 10_nmt_baseline, 11_nmt_schemes, 12_nmt_retrain, 13_nmt_model_size, 20_obd_snip, 21_snip_ablations, 22_pruning_at_init takes a " \
           "parameter 'foldr'" in err
    assert cli.main(["run", "nmt", "--profile", "smoke", "-p", "direction=fr-en"]) == 1
    assert "parameter direction=fr-en is not a known name" in capsys.readouterr().err
    assert cli.main(["run", "physics", "--profile", "smoke"]) == 1
    assert "or a study: nmt, cnn" in capsys.readouterr().err
    assert not runs.exists()


def test_list_shows_studies_and_shared_parameters(capsys):
    assert cli.main(["list", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "  nmt: 10_nmt_baseline, 11_nmt_schemes, 12_nmt_retrain, 13_nmt_model_size, 20_obd_snip, 21_snip_ablations, 22_pruning_at_init" in out
    shared = next(line for line in out.splitlines() if line.startswith("  nmt parameters shared by all 7:"))
    assert "direction" in shared and "folder" in shared and "n_examples" not in shared


@pytest.mark.slow
def test_whole_nmt_study_on_a_folder_corpus_trains_one_baseline(runs, tmp_path, capsys):
    corpus = write_corpus(tmp_path / "corpus")
    code = cli.main(["run", "nmt", "--profile", "smoke", "--quiet", "-p", f"folder={corpus}", "-p", "direction=de-en"])
    out = capsys.readouterr().out
    assert code == 0, out
    for stem in runner.studies()["nmt"]:
        [params] = [json.loads(p.read_text()) for p in (runs / stem).glob("*/params.json")]
        assert params["folder"] == str(corpus) and params["direction"] == "de-en"
        assert list((runs / stem).glob("*/complete.json"))
    # trained by 10 and loaded by the rest; 13 also trains one baseline per other width it compares
    smoke = runner.resolve("13_nmt_model_size", "smoke")
    assert len(list((runs / "checkpoints").glob("nmt-baseline-*.pt"))) == len(set(smoke["widths"]) | {smoke["hidden"]})
    [data] = list((runs / "10_nmt_baseline").glob("*/tables/data.csv"))
    summary = pd.read_csv(data).iloc[0]
    assert (summary.train_pairs, summary.val_pairs, summary.direction) == (180, 30, "de-en")  # not Multi30k's
    # the baseline read German and wrote English: its sample sources are German sentences of the corpus
    [examples] = list((runs / "10_nmt_baseline").glob("*/tables/examples.csv"))
    german = {de for _, de in [(s[0], s[1]) for s in SUBJECTS]}
    sources = pd.read_csv(examples).source.tolist()
    assert sources and all(any(s.startswith(g) for g in german) for s in sources)
