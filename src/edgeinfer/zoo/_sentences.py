"""Real English sentences, offline: taken from the docstrings of Python's standard library.

The source files are parsed with :mod:`ast` (never imported), docstrings are split into
sentences, and only plain prose is kept: a capital letter first, a full stop last, letters,
digits and light punctuation in between, 5 to 60 words, no code, no doctest lines, each
sentence once. The pool depends only on the Python version; :func:`sentences` draws from it
with a seeded shuffle.
"""

from __future__ import annotations

import ast
import functools
import random
import re
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from edgeinfer.zoo._common import ZooError

__all__ = ["MODULES", "pool", "sentences"]

# Standard-library modules with plenty of prose in their docstrings (parsed, not imported).
MODULES = (
    "argparse", "ast", "asyncio.events", "asyncio.tasks", "base64", "bisect", "calendar",
    "collections", "concurrent.futures._base", "configparser", "contextlib", "copy", "csv",
    "dataclasses", "datetime", "decimal", "difflib", "email.message", "enum", "fractions",
    "functools", "gettext", "glob", "gzip", "heapq", "hmac", "html.parser", "http.client",
    "http.server", "imaplib", "inspect", "ipaddress", "json", "logging", "mailbox",
    "mimetypes", "numbers", "os", "pathlib", "pickle", "pprint", "queue", "random", "sched",
    "secrets", "selectors", "shelve", "shlex", "shutil", "smtplib", "socket", "socketserver",
    "statistics", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "timeit", "tokenize", "traceback", "types", "typing", "unittest.case", "urllib.parse",
    "urllib.request", "uuid", "warnings", "weakref", "zipfile",
)  # fmt: skip

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_PROSE = re.compile(r"^[A-Z][A-Za-z0-9 ,;'\-]*[A-Za-z0-9][.!?]$")
_SKIP_PARAGRAPH = (">>>", "...", "-", "*", ":", "+")
_MIN_WORDS, _MAX_WORDS = 5, 60


def _source(module: str, stdlib: Path) -> Path | None:
    base = stdlib.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _docstrings(tree: ast.AST) -> Iterator[str]:
    kinds = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    for node in ast.walk(tree):
        if isinstance(node, kinds):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def _prose(doc: str) -> Iterator[str]:
    for paragraph in re.split(r"\n\s*\n", doc):
        if paragraph.lstrip().startswith(_SKIP_PARAGRAPH):
            continue
        for sentence in _SPLIT.split(" ".join(paragraph.split())):
            words = sentence.split()
            if not _PROSE.match(sentence) or not _MIN_WORDS <= len(words) <= _MAX_WORDS:
                continue
            if any(w.lower().startswith(("e.g", "i.e", "etc")) for w in words):
                continue
            yield sentence


@functools.lru_cache(maxsize=1)
def pool() -> tuple[str, ...]:
    """Every usable sentence, in a fixed order (module list order, then source order)."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out: list[str] = []
    for module in MODULES:
        path = _source(module, stdlib)
        if path is None:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, UnicodeDecodeError):
            continue
        for doc in _docstrings(tree):
            for sentence in _prose(doc):
                key = sentence.lower()
                if key not in seen:
                    seen.add(key)
                    out.append(sentence)
    return tuple(out)


def sentences(n: int = 256, seed: int = 0) -> list[str]:
    """``n`` distinct real English sentences, the same ones for the same ``seed``.

    >>> sentences(2)  # doctest: +SKIP
    ['Send a command to the server.', 'Day numbers outside this month are zero.']
    """
    available = pool()
    if not isinstance(n, int) or n < 0:
        raise ZooError(f"n must be an integer >= 0, got {n!r}")
    if n > len(available):
        raise ZooError(
            f"asked for {n} sentences, but the standard library docstrings of this Python "
            f"give {len(available)}"
        )
    return random.Random(seed).sample(available, n)
