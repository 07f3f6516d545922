"""Scale-out on Ray Serve: a local Ray on 127.0.0.1, two replicas, both serve requests, and
the limits a replica keeps behind Ray's proxy (body bounds, batch checks, the body deadline)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import serve_helpers as h

from edgeinfer.protocol import InferenceRequest, InferTensor, rest
from edgeinfer.serve.app import REPLICA_HEADER

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_replicas_serve(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    from edgeinfer.serve.ray import build_deployment

    root = h.repository(tmp_path / "repo")
    port = _free_port()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
        _node_ip_address="127.0.0.1",
    )
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        cfg = h.config(root, port=port, body_timeout_s=1.0)
        app = build_deployment(cfg, replicas=2, num_cpus=0.5)
        serve.run(app, name="edgeinfer", route_prefix="/")
        seen: dict[str, int] = {}
        x = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            assert client.get("/v2/health/ready").status_code == 200
            for _ in range(60):
                r = client.post("/v2/models/mlp/versions/1/infer", json=h.infer_body(x))
                assert r.status_code == 200, r.text
                logits = np.array(r.json()["outputs"][0]["data"], np.float32)
                np.testing.assert_allclose(logits, (x @ h.mlp_weights(0))[0], rtol=1e-5)
                replica = r.headers[REPLICA_HEADER]
                seen[replica] = seen.get(replica, 0) + 1
                if len(seen) == 2 and min(seen.values()) >= 3:
                    break
            r = client.post("/v2/models/mlp/infer", content=b"{")  # errors pass through too
            assert r.status_code == 400 and "error" in r.json()
            _replica_limits_apply(client, port)
        assert len(seen) == 2, f"requests were served by {seen}"
    finally:
        serve.shutdown()
        ray.shutdown()


def _replica_limits_apply(client: httpx.Client, port: int) -> None:
    """What each replica checks itself holds behind Ray's proxy."""
    big = InferenceRequest([InferTensor.from_array("x", np.zeros((262_143, 4), np.float32))])
    enc = rest.encode_request(big)
    r = client.post("/v2/models/mlp/versions/1/infer", content=enc.body, headers=enc.headers)
    assert r.status_code == 400, r.text
    assert "is larger than the limit of 67072 bytes" in r.json()["error"]
    r = client.post("/v2/models/mlp/infer", json=h.infer_body(np.ones((9, 4), np.float32)))
    assert r.status_code == 400 and "more than its max_batch_size of 8" in r.json()["error"]
    # a body that stops short is answered 408 by the replica's body deadline
    head = (
        "POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(head.encode() + b'{"inputs": [')
        sock.settimeout(60)
        raw = b""
        deadline = time.monotonic() + 60
        while b"\r\n\r\n" not in raw or not raw.rstrip().endswith(b"}"):
            piece = sock.recv(4096)
            if not piece or time.monotonic() > deadline:
                break
            raw += piece
    status_line, _, rest_ = raw.partition(b"\r\n")
    assert status_line.startswith(b"HTTP/1.1 408"), raw[:300]
    body = rest_.partition(b"\r\n\r\n")[2]
    assert json.loads(body)["error"].startswith("request body not received in time (1 s")
