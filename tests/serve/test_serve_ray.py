"""Scale-out on Ray Serve: a local Ray on 127.0.0.1, two replicas, both serve requests."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
import numpy as np
import pytest
import serve_helpers as h

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
        app = build_deployment(h.config(root, port=port), replicas=2, num_cpus=0.5)
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
        assert len(seen) == 2, f"requests were served by {seen}"
    finally:
        serve.shutdown()
        ray.shutdown()
