"""REST against a real server on 127.0.0.1: the OIP endpoints, with httpx and tritonclient."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import serve_helpers as h

from edgeinfer.protocol import InferenceRequest, InferTensor, RequestedOutput, rest
from edgeinfer.serve import BackgroundServer

X = np.array([[1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 0.0, 2.0]], dtype=np.float32)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = h.repository(tmp_path_factory.mktemp("repo"))
    with h.running(h.config(root)) as srv:
        yield srv


@pytest.fixture
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def _expected(x: np.ndarray, seed: int) -> np.ndarray:
    return x @ h.mlp_weights(seed)


def test_health_and_server_metadata(http: httpx.Client) -> None:
    assert http.get("/v2/health/live").json() == {"live": True}
    assert http.get("/v2/health/ready").json() == {"ready": True}
    meta = http.get("/v2").json()
    assert meta["name"] == "edgeinfer" and "binary_tensor_data" in meta["extensions"]
    assert http.get("/v2/").json() == meta


@pytest.mark.parametrize("path", ["/v2/models/mlp", "/v2/models/mlp/versions/2"])
def test_model_metadata(http: httpx.Client, path: str) -> None:
    meta = http.get(path).json()
    assert meta["name"] == "mlp" and meta["versions"] == ["1", "2"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert [o["name"] for o in meta["outputs"]] == ["logits", "probs"]


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v2/models/mlp/ready", 200),
        ("/v2/models/mlp/versions/1/ready", 200),
        ("/v2/models/mlp/versions/9/ready", 404),
        ("/v2/models/nope/ready", 404),
    ],
)
def test_model_ready(http: httpx.Client, path: str, status: int) -> None:
    r = http.get(path)
    assert r.status_code == status
    if status == 200:
        assert r.json() == {"name": "mlp", "ready": True}
    else:
        assert "error" in r.json()


@pytest.mark.parametrize(("version", "seed"), [(None, 1), ("1", 0), ("2", 1)])
def test_infer_json_flat_and_versions(http: httpx.Client, version: str | None, seed: int) -> None:
    path = "/v2/models/mlp" + (f"/versions/{version}" if version else "") + "/infer"
    r = http.post(path, json=h.infer_body(X, id="abc", parameters={"custom": 1}))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "mlp" and body["model_version"] == (version or "2")
    assert body["id"] == "abc"
    out = {o["name"]: o for o in body["outputs"]}
    assert out["logits"]["shape"] == [2, 3] and out["logits"]["datatype"] == "FP32"
    got = np.array(out["logits"]["data"], np.float32).reshape(2, 3)
    np.testing.assert_allclose(got, _expected(X, seed), rtol=1e-5)


def test_infer_reports_queue_and_compute_in_server_timing(http: httpx.Client) -> None:
    from edgeinfer.offload.transport import parse_server_timing

    r = http.post("/v2/models/mlp/infer", json=h.infer_body(X))
    assert r.status_code == 200, r.text
    timing = r.headers["server-timing"]
    names = [part.split(";")[0].strip() for part in timing.split(",")]
    assert names == ["queue", "compute"]
    seconds = parse_server_timing(timing)
    assert seconds is not None and 0 < seconds < 10  # the client reads what the server sends
    assert "server-timing" not in http.post("/v2/models/nope/infer", json={}).headers


def test_infer_nested_data_and_requested_outputs(http: httpx.Client) -> None:
    body = {
        "inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.tolist()}],
        "outputs": [{"name": "probs"}],
    }
    r = http.post("/v2/models/mlp/versions/1/infer", json=body)
    assert r.status_code == 200, r.text
    outs = r.json()["outputs"]
    assert [o["name"] for o in outs] == ["probs"]
    np.testing.assert_allclose(np.array(outs[0]["data"]).reshape(2, 3).sum(1), 1.0, rtol=1e-5)


def test_infer_holds_the_declared_datatype_to_the_models(http: httpx.Client) -> None:
    """On the wire the declared datatype is a contract, as in Triton: INT64 or FP64 data for
    an FP32 input is refused, not converted (Model.predict, called locally, still converts)."""
    for datatype in ("INT64", "FP64"):
        r = http.post("/v2/models/mlp/infer", json=h.infer_body([[1, 2, 3, 4]], datatype=datatype))
        assert r.status_code == 400, r.text
        assert r.json()["error"] == (
            f"model 'mlp': input 'x' is declared {datatype}, but the model expects FP32; "
            "send FP32 data"
        )
    r = http.post("/v2/models/mlp/infer", json=h.infer_body([[1, 2, 3, 4]], datatype="FP32"))
    assert r.status_code == 200, r.text


@pytest.mark.parametrize("binary_out", [True, False])
def test_binary_extension_with_raw_httpx(http: httpx.Client, binary_out: bool) -> None:
    req = InferenceRequest(
        [InferTensor.from_array("x", X)],
        outputs=[RequestedOutput("logits", {"binary_data": binary_out})],
    )
    enc = rest.encode_request(req)
    r = http.post("/v2/models/mlp/versions/1/infer", content=enc.body, headers=enc.headers)
    assert r.status_code == 200, r.text
    length = r.headers.get(rest.HEADER_LENGTH)
    assert (length is not None) == binary_out
    if binary_out:
        header = r.content[: int(length)]
        assert b'"binary_data_size":24' in header and b'"data"' not in header
    resp = rest.decode_response(r.content, rest.parse_header_length(length))
    np.testing.assert_allclose(resp.arrays()["logits"], _expected(X, 0), rtol=1e-5)


def test_binary_data_output_parameter(http: httpx.Client) -> None:
    req = InferenceRequest(
        [InferTensor.from_array("x", X)], parameters={"binary_data_output": True}
    )
    enc = rest.encode_request(req, binary=False)
    r = http.post("/v2/models/mlp/infer", content=enc.body, headers=enc.headers)
    resp = rest.decode_response(r.content, rest.parse_header_length(r.headers[rest.HEADER_LENGTH]))
    assert set(resp.arrays()) == {"logits", "probs"}


def test_fixed_shape_model_and_int64(http: httpx.Client) -> None:
    a = np.arange(6, dtype=np.int64).reshape(2, 3)
    r = http.post("/v2/models/fixed/infer", json=h.infer_body(a, name="a", datatype="INT64"))
    assert r.status_code == 200, r.text
    out = r.json()["outputs"][0]
    assert out["datatype"] == "INT64" and out["data"] == (a * 2).reshape(-1).tolist()
    r = http.post(
        "/v2/models/fixed/infer",
        json=h.infer_body(np.zeros((1, 3), int), name="a", datatype="INT64"),
    )
    assert r.status_code == 400 and "dimension 0 is 1, expected 2" in r.json()["error"]


def _tritonclient_http_session(url: str, binary: bool) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
        assert not client.is_model_ready("nope")
        assert client.get_model_metadata("mlp", "1")["inputs"][0]["shape"] == [-1, 4]
        inp = httpclient.InferInput("x", list(X.shape), "FP32")
        inp.set_data_from_numpy(X, binary_data=binary)
        outs = [httpclient.InferRequestedOutput("logits", binary_data=binary)]
        result = client.infer("mlp", [inp], model_version="1", outputs=outs, request_id="r1")
        np.testing.assert_allclose(result.as_numpy("logits"), _expected(X, 0), rtol=1e-5)
        assert result.get_response()["id"] == "r1"
        result = client.infer("mlp", [inp])  # no outputs named: all, as binary data
        assert result.as_numpy("probs").shape == (2, 3)
        with pytest.raises(Exception, match="unknown model 'nope'"):
            client.infer("nope", [inp])
    finally:
        client.close()


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_http(server: BackgroundServer, binary: bool) -> None:
    try:
        _tritonclient_http_session(server.url.removeprefix("http://"), binary)
    finally:
        # tritonclient's __del__ must run on this (its gevent hub's) thread
        gc.collect()


def test_unknown_routes_and_methods_answer_json(http: httpx.Client) -> None:
    r = http.get("/v3/whatever")
    assert r.status_code == 404 and r.json() == {"error": "Not Found"}
    r = http.get("/v2/models/mlp/infer")
    assert r.status_code == 405 and "error" in r.json()


def test_metadata_errors(http: httpx.Client) -> None:
    r = http.get("/v2/models/nope")
    assert r.status_code == 404 and "unknown model 'nope'" in r.json()["error"]
    r = http.get("/v2/models/mlp/versions/x1")
    assert r.status_code == 400 and "not valid" in r.json()["error"]


def test_tls(tmp_path: Path) -> None:
    """TLS through uvicorn's certificate options: a self-signed cert for 127.0.0.1."""
    import shutil
    import ssl
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    key_file, cert_file = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-keyout",
            str(key_file),
            "-out",
            str(cert_file),
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    root = h.repository(tmp_path / "repo")
    cfg = h.config(root, grpc_port=None, ssl_keyfile=str(key_file), ssl_certfile=str(cert_file))
    with h.running(cfg) as srv:
        assert srv.url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(cert_file))
        assert httpx.get(srv.url + "/v2/health/live", verify=ctx).json() == {"live": True}
        with pytest.raises(httpx.ConnectError):
            httpx.get(srv.url + "/v2/health/live")  # not trusted without the CA
