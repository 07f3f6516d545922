"""Bearer tokens on REST and gRPC; a separate admin token for repository control."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest
import serve_helpers as h

from edgeinfer.protocol import grpc_codec as gc
from edgeinfer.serve import BackgroundServer
from edgeinfer.serve.auth import Auth, bearer_token
from edgeinfer.serve.errors import Forbidden, Unauthorized

USER, ADMIN = "user-token-123", "admin-token-456"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = h.repository(tmp_path_factory.mktemp("repo"))
    with h.running(h.config(root, tokens=(USER,), admin_tokens=(ADMIN,))) as srv:
        yield srv


def _auth(token: str | None) -> dict[str, str]:
    return {} if token is None else {"Authorization": f"Bearer {token}"}


BODY = h.infer_body([[1.0, 2.0, 3.0, 4.0]])


@pytest.mark.parametrize(
    ("token", "status"), [(None, 401), ("wrong", 401), (USER, 200), (ADMIN, 200)]
)
def test_inference_needs_a_token(server: BackgroundServer, token: str | None, status: int) -> None:
    with httpx.Client(base_url=server.url) as http:
        r = http.post("/v2/models/mlp/infer", json=BODY, headers=_auth(token))
        assert r.status_code == status, r.text
        for path in ("/v2", "/v2/models/mlp", "/v2/models/mlp/ready", "/metrics"):
            assert http.get(path, headers=_auth(token)).status_code == status
        if status == 401:
            assert "bearer token" in r.json()["error"]


def test_health_is_open(server: BackgroundServer) -> None:
    assert httpx.get(server.url + "/v2/health/live").status_code == 200
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200


@pytest.mark.parametrize(
    ("token", "status", "message"),
    [
        (None, 401, "admin bearer token"),
        ("wrong", 401, "invalid admin token"),
        (USER, 403, "may run inference but not control"),
        (ADMIN, 200, None),
    ],
)
def test_repository_control_needs_the_admin_token(
    server: BackgroundServer, token: str | None, status: int, message: str | None
) -> None:
    r = httpx.post(server.url + "/v2/repository/models/fixed/load", headers=_auth(token))
    assert r.status_code == status, r.text
    if message:
        assert message in r.json()["error"]


@pytest.mark.parametrize(
    ("token", "status"), [(None, 401), ("wrong", 401), (USER, 200), (ADMIN, 200)]
)
def test_repository_index_needs_the_inference_token(
    server: BackgroundServer, token: str | None, status: int
) -> None:
    # As Triton: any client that may infer may read the index (tritonclient's
    # get_model_repository_index); only load/unload are kept behind the admin token.
    r = httpx.post(server.url + "/v2/repository/index", headers=_auth(token))
    assert r.status_code == status, r.text
    if status == 200:
        assert {"name": "fixed", "version": "1", "state": "READY"} in r.json()
    else:
        assert "bearer token" in r.json()["error"]


def test_grpc_tokens(server: BackgroundServer) -> None:
    msg = gc.pb.ModelInferRequest(model_name="mlp")
    msg.inputs.add(name="x", datatype="FP32", shape=[1, 4])
    msg.raw_input_contents.append(b"\0" * 16)
    with grpc.insecure_channel(server.grpc_target) as ch:
        infer = ch.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=gc.pb.ModelInferResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            infer(msg)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            infer(msg, metadata=[("authorization", "Bearer nope")])
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert infer(msg, metadata=[("authorization", f"Bearer {USER}")]).model_name == "mlp"
        live = ch.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=gc.pb.ServerLiveResponse.FromString,
        )
        assert live(gc.pb.ServerLiveRequest()).live  # health stays open


def test_admin_disabled_without_admin_token(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = h.repository(tmp_path_factory.mktemp("repo"))
    with h.running(h.config(root, grpc_port=None)) as srv:
        r = httpx.post(srv.url + "/v2/repository/models/mlp/unload")
        assert r.status_code == 403 and "--admin-token" in r.json()["error"]
        index = httpx.post(srv.url + "/v2/repository/index")  # open server: index readable
        assert index.status_code == 200 and {r["name"] for r in index.json()} >= {"mlp"}
        assert httpx.post(srv.url + "/v2/models/mlp/infer", json=BODY).status_code == 200


def test_auth_unit() -> None:
    assert bearer_token("Bearer abc") == "abc" and bearer_token("bearer  abc ") == "abc"
    assert bearer_token("Basic abc") is None and bearer_token("Bearer ") is None
    auth = Auth(("a",), ("b",))
    auth.check("Bearer a")
    auth.check("Bearer b", admin=True)
    with pytest.raises(Forbidden):
        auth.check("Bearer a", admin=True)
    with pytest.raises(Unauthorized):
        auth.check(None)
    Auth().check(None)  # open server
