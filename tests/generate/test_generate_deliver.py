"""A generative bundle through the delivery loop: published to a real TUF repository,
served over loopback HTTP, installed by the device agent (full, then a delta to a
fine-tuned version), each install passing the health gate's golden continuations."""

from __future__ import annotations

import functools
import json
import shutil
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import edgeinfer
from edgeinfer.deliver import Agent, AgentConfig, GateConfig, KeyStore, Publisher
from edgeinfer.generate import GenerativeModel, create_bundle

pytestmark = [pytest.mark.timeout(300)]


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    root = tmp_path / "repo"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def _fine_tuned(tiny_dir: Path, out: Path) -> Path:
    """The tiny model with a few of its weights nudged: a new version, mostly the same bytes."""
    shutil.copytree(tiny_dir, out)
    data = np.fromfile(out / "model.onnx.data", dtype=np.float32)
    data[: data.size // 50] *= np.float32(1.001)
    data.tofile(out / "model.onnx.data")
    return out


def test_publish_install_and_delta_update(
    tiny_dir: Path, tmp_path: Path, http_root: tuple[Path, str]
) -> None:
    repo, url = http_root
    pub = Publisher(repo, KeyStore.init(tmp_path / "keys"))
    v1 = create_bundle(tiny_dir, tmp_path / "v1", name="tiny-llm", version=1)
    pub.publish(v1.path)
    gate = GateConfig(threads=1, latency_runs=2, latency_factor=100.0, latency_slack_ms=1000.0)
    config = AgentConfig(
        url, tmp_path / "device", root=repo / "metadata" / "1.root.json", gate=gate,
        min_free_bytes=0,
    )  # fmt: skip
    first = Agent(config).run_once()
    assert (first.result, first.via, first.to_version) == ("updated", "full", 1), first.reason

    v2 = create_bundle(
        _fine_tuned(tiny_dir, tmp_path / "tuned"), tmp_path / "v2", name="tiny-llm", version=2
    )
    published = pub.publish(v2.path)
    assert [d.from_version for d in published.deltas] == [1]
    second = Agent(config).run_once()
    assert (second.result, second.via, second.to_version) == ("updated", "delta", 2), second.reason
    assert 0 < second.bytes_downloaded < published.length

    status = json.loads((tmp_path / "device" / "status.json").read_text())
    installed = Path(status["active"]["bundle_path"])
    assert (status["active"]["name"], status["active"]["version"]) == ("tiny-llm", 2)
    with edgeinfer.load(installed, threads=1) as model:
        assert isinstance(model, GenerativeModel)
        assert model.version == 2
        assert edgeinfer.Bundle.open(installed).check_golden(model) == []
