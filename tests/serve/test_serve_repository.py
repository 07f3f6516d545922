"""The model repository: Triton layout, hot reload, and the admin's load/unload/index."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
import serve_helpers as h

from edgeinfer.bundle import Bundle
from edgeinfer.errors import InputError

ADMIN = "admin-secret"
X = np.array([[1.0, 2.0, 3.0, 4.0]], np.float32)


def _logits(url: str, version: str | None = None) -> np.ndarray:
    path = "/v2/models/mlp" + (f"/versions/{version}" if version else "") + "/infer"
    r = httpx.post(url + path, json=h.infer_body(X, outputs=[{"name": "logits"}]))
    assert r.status_code == 200, r.text
    return np.array(r.json()["outputs"][0]["data"], np.float32).reshape(1, 3)


def _eventually(check: Callable[[], bool], timeout_s: float = 30.0) -> None:
    """Poll until ``check()`` holds (the server rescans every 0.1 s); not a timing test."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the server did not pick up the change")
        time.sleep(0.05)


def _admin(url: str, path: str) -> httpx.Response:
    return httpx.post(url + path, headers={"Authorization": f"Bearer {ADMIN}"}, timeout=30)


def test_bundles_and_bare_models(tmp_path: Path) -> None:
    """A version directory holds a bundle or a bare model.onnx; both serve."""
    src = h.mlp(tmp_path / "src" / "model.onnx", seed=3)
    Bundle.create(src, tmp_path / "repo" / "mlp" / "1", name="mlp", version=1, golden_inputs=X)
    h.mlp(tmp_path / "repo" / "mlp" / "2" / "model.onnx", seed=4)
    (tmp_path / "repo" / "mlp" / "notaversion").mkdir()
    (tmp_path / "repo" / "bad name!").mkdir()
    with h.running(h.config(tmp_path / "repo", grpc_port=None)) as srv:
        np.testing.assert_allclose(_logits(srv.url, "1"), X @ h.mlp_weights(3), rtol=1e-5)
        np.testing.assert_allclose(_logits(srv.url), X @ h.mlp_weights(4), rtol=1e-5)
        assert httpx.get(srv.url + "/v2/models/mlp").json()["versions"] == ["1", "2"]


def test_hot_reload(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    h.mlp(repo / "mlp" / "1" / "model.onnx", seed=0)
    cfg = h.config(repo, grpc_port=None, poll_interval_s=0.1)
    with h.running(cfg) as srv:
        w0, w5, w6 = (h.mlp_weights(s) for s in (0, 5, 6))
        np.testing.assert_allclose(_logits(srv.url), X @ w0, rtol=1e-5)
        # a new version appears: unversioned requests move to it
        h.mlp(repo / "mlp" / "2" / "model.onnx", seed=5)
        _eventually(lambda: np.allclose(_logits(srv.url), X @ w5, rtol=1e-5))
        # a version changes in place (written beside it, then renamed over it)
        h.mlp(repo / "mlp" / "2" / "next.onnx", seed=6)
        os.replace(repo / "mlp" / "2" / "next.onnx", repo / "mlp" / "2" / "model.onnx")
        _eventually(lambda: np.allclose(_logits(srv.url, "2"), X @ w6, rtol=1e-5))
        # a broken update never replaces a working model
        (repo / "mlp" / "2" / "model.onnx").write_bytes(b"not a model")
        time.sleep(0.5)  # several scans
        np.testing.assert_allclose(_logits(srv.url, "2"), X @ w6, rtol=1e-5)
        # no admin token configured: control disabled, the index still readable
        assert httpx.post(srv.url + "/v2/repository/models/mlp/unload").status_code == 403
        index = httpx.post(srv.url + "/v2/repository/index").json()
        assert {"name": "mlp", "version": "2", "state": "READY"} in index
        # a new model appears, and a removed version goes away
        h.mlp(repo / "other" / "1" / "model.onnx")
        shutil.rmtree(repo / "mlp" / "1")
        _eventually(lambda: httpx.get(srv.url + "/v2/models/other/ready").status_code == 200)
        _eventually(
            lambda: httpx.get(srv.url + "/v2/models/mlp/versions/1/ready").status_code == 404
        )


def test_load_unload_index(tmp_path: Path) -> None:
    repo = h.repository(tmp_path / "repo")
    (tmp_path / "repo" / "broken" / "1").mkdir(parents=True)
    (tmp_path / "repo" / "broken" / "1" / "model.onnx").write_bytes(b"garbage")
    cfg = h.config(repo, grpc_port=None, admin_tokens=(ADMIN,), poll_interval_s=0.1)
    with h.running(cfg) as srv:
        index = _admin(srv.url, "/v2/repository/index").json()
        states = {(r["name"], r.get("version")): r["state"] for r in index}
        assert states[("mlp", "1")] == "READY" and states[("broken", "1")] == "UNAVAILABLE"
        assert "not a loadable ONNX model" in next(
            r["reason"] for r in index if r["name"] == "broken"
        )
        # not every model is ready -> the server is not ready; others still serve
        assert httpx.get(srv.url + "/v2/health/ready").status_code == 503
        # a 404 lists the models served, and the one that failed apart from them
        r = httpx.post(srv.url + "/v2/models/nope/infer", json=h.infer_body(X))
        assert r.status_code == 404
        assert r.json()["error"] == (
            "unknown model 'nope'; this server serves 'fixed', 'mlp'; failed to load: 'broken'"
        )
        ready_only = httpx.post(
            srv.url + "/v2/repository/index",
            json={"ready": True},
            headers={"Authorization": f"Bearer {ADMIN}"},
        ).json()
        assert all(r["state"] == "READY" for r in ready_only)

        assert _admin(srv.url, "/v2/repository/models/mlp/unload").status_code == 200
        r = httpx.post(srv.url + "/v2/models/mlp/infer", json=h.infer_body(X))
        assert r.status_code == 503 and "unloaded" in r.json()["error"]
        assert httpx.get(srv.url + "/v2/models/mlp/ready").status_code == 503
        time.sleep(0.3)  # scans do not bring an unloaded model back
        assert httpx.get(srv.url + "/v2/models/mlp/ready").status_code == 503

        assert _admin(srv.url, "/v2/repository/models/mlp/load").status_code == 200
        np.testing.assert_allclose(_logits(srv.url), X @ h.mlp_weights(1), rtol=1e-5)

        r = _admin(srv.url, "/v2/repository/models/broken/load")
        assert r.status_code == 400 and "not a loadable ONNX model" in r.json()["error"]
        r = _admin(srv.url, "/v2/repository/models/ghost/load")
        assert r.status_code == 404
        shutil.rmtree(repo / "broken")
        _eventually(lambda: httpx.get(srv.url + "/v2/health/ready").status_code == 200)


@pytest.mark.parametrize("tamper", ["model", "golden"])
def test_tampered_bundle_is_not_loaded(tmp_path: Path, tamper: str) -> None:
    src = h.mlp(tmp_path / "src.onnx")
    bundle = Bundle.create(src, tmp_path / "repo" / "mlp" / "1", name="mlp", golden_inputs=X)
    target = bundle.model_path if tamper == "model" else bundle.path / "golden.npz"
    data = bytearray(target.read_bytes())
    data[-1] ^= 1
    target.write_bytes(bytes(data))
    with h.running(h.config(tmp_path / "repo", grpc_port=None)) as srv:
        r = httpx.get(srv.url + "/v2/models/mlp/ready")
        assert r.status_code == 503 and "sha256" in r.json()["error"]


def test_model_config_overrides_batching(tmp_path: Path) -> None:
    repo = h.repository(tmp_path / "repo")
    (repo / "mlp" / "config.json").write_text('{"max_batch_size": 1, "max_queue_size": 3}')
    (repo / "fixed" / "config.json").write_text('{"max_batch_sise": 1}')
    with h.running(h.config(repo, grpc_port=None, poll_interval_s=0.1)) as srv:
        meta = httpx.get(srv.url + "/v2/models/mlp").json()
        assert meta["properties"] == {"max_batch_size": "0"}  # batching off for mlp
        r = httpx.get(srv.url + "/v2/models/fixed/ready")
        assert r.status_code == 503 and "unknown keys ['max_batch_sise']" in r.json()["error"]
        (repo / "fixed" / "config.json").write_text('{"max_queue_size": 2}')
        _eventually(lambda: httpx.get(srv.url + "/v2/models/fixed/ready").status_code == 200)


class _Cycle:
    me: object = None


def test_freeze_heap(tmp_path: Path) -> None:
    """With ``freeze_heap`` the server's long-lived heap leaves the garbage collector's full
    collections once loaded; a model unloaded later is still freed, and answers are the same."""
    import gc
    import weakref

    repo = h.repository(tmp_path / "repo")
    cfg = h.config(repo, grpc_port=None, admin_tokens=(ADMIN,), freeze_heap=True)
    try:
        with h.running(cfg) as srv:
            assert gc.get_freeze_count() > 0
            # garbage in a cycle that was frozen with the heap (a dropped model's, say) is
            # collected at the next repository change
            cycle = _Cycle()
            cycle.me = cycle
            gone = weakref.ref(cycle)
            gc.freeze()
            del cycle
            assert _admin(srv.url, "/v2/repository/models/mlp/unload").status_code == 200
            _eventually(lambda: gone() is None)
            assert _admin(srv.url, "/v2/repository/models/mlp/load").status_code == 200
            np.testing.assert_allclose(_logits(srv.url), X @ h.mlp_weights(1), rtol=1e-5)
            assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_heap_is_left_alone_by_default(tmp_path: Path) -> None:
    """An embedding program's heap is its own: the server freezes nothing unless asked."""
    import gc

    gc.unfreeze()
    with h.running(h.config(h.repository(tmp_path / "repo"), grpc_port=None)):
        assert gc.get_freeze_count() == 0


def test_switch_interval_while_serving(tmp_path: Path) -> None:
    """``switch_interval_s`` holds while the server runs, and the process's own comes back
    when it stops; by default the server leaves it alone."""
    import sys

    before = sys.getswitchinterval()
    repo = h.repository(tmp_path / "repo")
    with h.running(h.config(repo, grpc_port=None, switch_interval_s=2e-4)) as srv:
        assert sys.getswitchinterval() == pytest.approx(2e-4)
        np.testing.assert_allclose(_logits(srv.url), X @ h.mlp_weights(1), rtol=1e-5)
    assert sys.getswitchinterval() == before
    with h.running(h.config(repo, grpc_port=None)):
        assert sys.getswitchinterval() == before
    with pytest.raises(InputError, match="switch_interval_s 0 must be > 0"):
        h.config(repo, switch_interval_s=0)
