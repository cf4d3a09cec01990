"""The offline text corpora (WordNet glosses, stdlib docstrings, fortune, files) and the text source's splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from slimtorch.data import build_data
from slimtorch.data.corpora import corpus_sentences, docstring_sentences, wordnet_dir, wordnet_sentences
from slimtorch.errors import DataError, MissingExtraError

# Two synset lines in WordNet's data-file format, after a license line (which starts with two spaces).
WORDNET_NOUN = (
    "  1 This software and database is being provided to you, the LICENSEE, by  \n"
    "00045646 04 n 02 rally 1 rallying 1 003 @ 00036762 n 0000 | the feat of mustering strength for a renewed effort; "
    '"he singled to start a rally in the 9th inning"; "he feared the rallying of their troops for a counterattack"  \n'
    "00046177 04 n 01 running_away 0 003 @ 00030358 n 0000 | the act of leaving (without permission) the place you are expected to be  \n"
)
WORDNET_VERB = "01097978 41 v 01 rally 0 001 | gather; call together for a common purpose; \"rally the troops\"  \n"


@pytest.fixture()
def wordnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "dict"
    folder.mkdir()
    (folder / "data.noun").write_text(WORDNET_NOUN)
    (folder / "data.verb").write_text(WORDNET_VERB)
    monkeypatch.setenv("WNSEARCHDIR", str(folder))
    return folder


def test_wordnet_glosses_give_definitions_and_examples(wordnet: Path) -> None:
    assert wordnet_dir() == wordnet
    assert wordnet_sentences() == sorted([
        "the feat of mustering strength for a renewed effort", "he singled to start a rally in the 9th inning",
        "he feared the rallying of their troops for a counterattack",
        "the act of leaving (without permission) the place you are expected to be",
        "call together for a common purpose", "rally the troops",  # "gather" alone is too short (< 3 words)
    ])


def test_missing_wordnet_says_how_to_install_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WNSEARCHDIR", str(tmp_path))
    with pytest.raises(MissingExtraError, match=r"apt-get install wordnet-base.*or set WNSEARCHDIR"):
        build_data("text", args={"corpus": "wordnet"})


def test_docstrings_are_parsed_not_imported(tmp_path: Path) -> None:
    pkg = tmp_path / "lib"
    (pkg / "tests").mkdir(parents=True)
    (pkg / "mod.py").write_text(
        '"""A module that explains itself in plain words.\n\nIt has a second paragraph with more words."""\n'
        'raise SystemExit("importing this file would stop the interpreter")\n'
        'class Thing:\n    """Hold one value until somebody asks for it."""\n'
        'def f(x):\n    """Return x_plus_one(x) for code-like text that is dropped."""\n'
    )
    (pkg / "tests" / "test_mod.py").write_text('"""Test docstrings are not part of the corpus at all."""\n')
    assert list(docstring_sentences(pkg)) == [
        "A module that explains itself in plain words.", "Hold one value until somebody asks for it.",
        "It has a second paragraph with more words."]


def test_corpus_list_drops_duplicates_across_corpora(wordnet: Path, tmp_path: Path) -> None:
    own = tmp_path / "own.txt"
    own.write_text("rally the troops\nrally  the troops\na sentence of my own here\n")
    sentences = corpus_sentences(["wordnet", "file"], str(own))
    assert sentences.count("rally the troops") == 1 and sentences[-1] == "a sentence of my own here"
    assert len(sentences) == 7
    with pytest.raises(DataError, match=r"unknown text corpus 'wordnt'; valid corpora: fortune, wordnet, docstrings, file"):
        corpus_sentences(["wordnt"])


def _numbered_corpus(tmp_path: Path, n: int = 400) -> str:
    path = tmp_path / "numbered.txt"
    path.write_text("\n".join(f"sentence number {i} of the corpus" for i in range(n)))
    return str(path)


def test_hash_split_holds_the_same_sentences_out_whatever_the_seed_and_size(tmp_path: Path) -> None:
    path = _numbered_corpus(tmp_path)
    runs = [build_data("text", seed=seed, args={"path": path, "split": "hash", "max_sentences": size, "max_held_out": 30})
            for seed, size in ((0, None), (1, 100), (2, 20))]
    held = [(r.val.sentences, r.test.sentences) for r in runs]
    assert held[0] == held[1] == held[2] and len(held[0][0]) == len(held[0][1]) == 30
    assert [len(r.train) for r in runs] == [len(runs[0].train), 100, 20]
    for r in runs:
        assert not set(r.train.sentences) & (set(r.val.sentences) | set(r.test.sentences))


def test_random_split_is_todays_default(tmp_path: Path) -> None:
    path = _numbered_corpus(tmp_path, 100)
    data = build_data("text", seed=3, args={"path": path, "max_sentences": 50})
    lines = Path(path).read_text().splitlines()
    picked = [lines[i] for i in np.random.default_rng(3).permutation(100)[:50]]  # the split as it always was
    assert data.val.sentences == picked[:5] and data.test.sentences == picked[5:10] and data.train.sentences == picked[10:]


def test_split_arguments_are_checked(tmp_path: Path) -> None:
    path = _numbered_corpus(tmp_path, 40)
    with pytest.raises(DataError, match=r"data.args.split must be 'random' .* or 'hash' .*; got 'stable'"):
        build_data("text", args={"path": path, "split": "stable"})
    with pytest.raises(DataError, match="val_fraction and test_fraction must be > 0 with a sum below 1; got 0.5 and 0.5"):
        build_data("text", args={"path": path, "val_fraction": 0.5, "test_fraction": 0.5})


@pytest.mark.skipif(not (wordnet_dir() / "data.noun").is_file(), reason="apt-get install wordnet-base")
def test_installed_wordnet_is_a_large_clean_corpus() -> None:
    sentences = wordnet_sentences()
    assert len(sentences) > 100_000
    assert all(s.isascii() and 3 <= len(s.split()) <= 60 for s in sentences)
