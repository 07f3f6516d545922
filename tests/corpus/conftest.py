"""Session fixtures for the corpus: each model prepared once, and one ``edgeinfer serve``
process serving every model of the corpus (one server start, not one per model)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from corpus_fixtures import Corpus, Served
from corpus_models import MODELS


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    (tmp_path_factory.getbasetemp() / "corpus" / "built").mkdir(parents=True, exist_ok=True)
    return Corpus(tmp_path_factory.getbasetemp() / "corpus")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def served(corpus: Corpus, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One server for the whole corpus: REPO/<model id>/1/ holds a bundle of each model."""
    from edgeinfer.bundle import Bundle

    repo = tmp_path_factory.mktemp("corpus-repo")
    for model in MODELS:
        if "serve" in model.refuses:
            continue
        if "bundle" in model.refuses:  # cannot be bundled: served as a bare model file
            prepared = corpus.get(model.id)
            (repo / model.id / "1").mkdir(parents=True)
            (repo / model.id / "1" / f"model.{model.format}").write_bytes(
                prepared.path.read_bytes()
            )
            continue
        prepared = corpus.get(model.id)
        Bundle.create(
            prepared.path,
            repo / model.id / "1",
            name=model.id,
            version=1,
            golden_inputs=prepared.feeds,
        )
    rest, grpc = _free_port(), _free_port()
    log = repo.parent / "corpus-serve.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edgeinfer", "serve", str(repo), "--port", str(rest),
             "--grpc-port", str(grpc), "--poll", "0", "--threads", "1"],
            stdout=sink, stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{rest}/v2/health/live").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"edgeinfer serve did not start:\n{log.read_text()}")
            time.sleep(0.2)
        yield Served(f"127.0.0.1:{rest}", f"127.0.0.1:{grpc}", log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
