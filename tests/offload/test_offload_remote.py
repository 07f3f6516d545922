"""RemoteModel against a real ``edgeinfer serve`` on loopback: REST (binary and JSON), gRPC."""

from __future__ import annotations

import socket

import numpy as np
import pytest
from offload_helpers import Served

import edgeinfer
from edgeinfer.errors import InputError
from edgeinfer.netem import NetemProxy
from edgeinfer.offload import (
    RemoteModel,
    RemoteRefused,
    RemoteRejected,
    RemoteTimeout,
    RemoteUnavailable,
)
from edgeinfer.runtime import Model

TRANSPORTS = [
    pytest.param({"transport": "http", "binary": True}, id="rest-binary"),
    pytest.param({"transport": "http", "binary": False}, id="rest-json"),
    pytest.param({"transport": "grpc", "binary": True}, id="grpc-raw"),
    pytest.param({"transport": "grpc", "binary": False}, id="grpc-typed"),
]


def _remote(served: Served, model: str = "mlp", **kw: object) -> RemoteModel:
    url = served.grpc_url if kw.get("transport") == "grpc" else served.url
    return RemoteModel(url, model, **kw)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("kw", TRANSPORTS)
def test_same_answers_as_the_local_model(
    served: Served, local: Model, x: np.ndarray, kw: dict[str, object]
) -> None:
    with _remote(served, **kw) as remote:
        np.testing.assert_allclose(
            remote.predict(x)["logits"], local.predict(x)["logits"], rtol=1e-6
        )
        assert [s.name for s in remote.inputs] == ["x"]
        assert remote.inputs[0].dtype == "float32"
        assert remote.inputs[0].shape == (None, 4)
        assert [s.name for s in remote.outputs] == ["logits"]
        result = remote.infer(x)
        assert result.stats.up_bytes > x.nbytes and result.stats.down_bytes > 0
        assert result.stats.seconds > 0
        assert remote.ready() > 0


@pytest.mark.parametrize("kw", TRANSPORTS)
def test_asking_for_some_outputs(served: Served, x: np.ndarray, kw: dict[str, object]) -> None:
    with _remote(served, "two", **kw) as remote:
        out = remote.predict(x, outputs=["probs"])
        assert list(out) == ["probs"]
        np.testing.assert_allclose(out["probs"].sum(axis=1), 1.0, rtol=1e-5)
        with pytest.raises(InputError, match="unknown output.*'nope'"):
            remote.predict(x, outputs=["nope"])


def test_json_is_bigger_on_the_wire_than_binary(served: Served, x: np.ndarray) -> None:
    with _remote(served) as binary, _remote(served, binary=False) as text:
        assert text.infer(x).stats.up_bytes > binary.infer(x).stats.up_bytes


def test_bad_inputs_never_leave_the_device(served: Served) -> None:
    with _remote(served) as remote:
        remote.metadata()
        before = served.infer_count()
        with pytest.raises(InputError, match=r"input 'x': expected float32 \[\?,4\]"):
            remote.predict(np.zeros((2, 5), np.float32))
        with pytest.raises(InputError, match="float -> integer|missing input"):
            remote.predict({"y": np.zeros((2, 4), np.float32)})
        assert served.infer_count() == before


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_unknown_model_is_rejected_not_retried(served: Served, transport: str) -> None:
    with _remote(served, "nope", transport=transport) as remote:
        with pytest.raises(RemoteRejected, match="unknown model 'nope'") as exc:
            remote.metadata()
        assert exc.value.status == 404 and not exc.value.retryable
        assert isinstance(exc.value.__cause__, Exception) or transport == "http"


@pytest.mark.parametrize(
    ("transport", "url"),
    [("http", "http://127.0.0.1:{port}"), ("grpc", "grpc://127.0.0.1:{port}")],
)
def test_nothing_listening_is_refused(transport: str, url: str, x: np.ndarray) -> None:
    remote = RemoteModel(url.format(port=_free_port()), "mlp", transport=transport)  # type: ignore[arg-type]
    with remote, pytest.raises(RemoteRefused) as exc:
        remote.predict(x)
    assert exc.value.retryable
    assert exc.value.__cause__ is not None  # raised from the transport's own exception


def test_a_blackholed_link_times_out(served: Served, x: np.ndarray) -> None:
    with NetemProxy(served.address) as proxy, RemoteModel(proxy.url, "mlp") as remote:
        remote.metadata()
        proxy.outage(None)
        with pytest.raises(RemoteTimeout, match="no answer in time") as exc:
            remote.infer(x, timeout=0.2)
        assert not exc.value.retryable
        proxy.restore()


def test_tokens(guarded: Served, x: np.ndarray) -> None:
    with RemoteModel(guarded.url, "mlp") as anonymous:
        with pytest.raises(RemoteRejected) as exc:
            anonymous.predict(x)
        assert exc.value.status == 401
    with RemoteModel(guarded.url, "mlp", token="secret") as remote:
        assert remote.predict(x)["logits"].shape == (2, 3)
    grpc_remote = RemoteModel(guarded.grpc_url, "mlp", token="secret", transport="grpc")
    with grpc_remote:
        assert grpc_remote.predict(x)["logits"].shape == (2, 3)


def test_a_model_that_is_not_ready(guarded: Served, x: np.ndarray) -> None:
    with RemoteModel(guarded.url, "two", token="secret") as remote:
        remote.metadata()
        guarded.admin("unload", "two")
        try:
            with pytest.raises(RemoteUnavailable) as exc:
                remote.predict(x)
            assert exc.value.status == 503 and exc.value.retryable
            with pytest.raises(RemoteUnavailable):
                remote.ready()
        finally:
            guarded.admin("load", "two")
        assert remote.ready() > 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"url": "edge:8000"}, "expected http://HOST:PORT"),
        ({"transport": "carrier-pigeon"}, "unknown transport 'carrier-pigeon'"),
        ({"model": ""}, "needs a model name"),
        ({"timeout": 0}, "must be > 0"),
    ],
)
def test_bad_configuration(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"url": "http://127.0.0.1:1", "model": "m", **kwargs}
    with pytest.raises(InputError, match=match):
        RemoteModel(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_a_batch_larger_than_the_servers_cap_goes_as_several_requests(
    served: Served, local: Model, transport: str
) -> None:
    # The server takes at most max_batch_size (8) rows per request, as Triton does; the
    # client learns it from the model's metadata and sends 20 rows as 8 + 8 + 4.
    url = served.url if transport == "http" else served.grpc_url
    rows = np.random.default_rng(3).standard_normal((20, 4)).astype(np.float32)
    before = served.infer_count()
    with edgeinfer.RemoteModel(url, "mlp") as remote:
        assert remote.max_rows == 8
        result = remote.infer(rows)
    assert served.infer_count() - before == 3
    want = local.predict(rows)
    assert set(result.outputs) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(result.outputs[name], value, rtol=1e-5, atol=1e-6)
    assert result.stats.up_bytes > rows.nbytes
