"""Compressed bodies against a real server on 127.0.0.1: Content-Encoding on requests,
Accept-Encoding on answers, with httpx, tritonclient (REST and gRPC) and edgeinfer's own
client; bad compressed bodies are 4xx with a message and the server stays healthy."""

from __future__ import annotations

import gc
import gzip
import json
import re
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import serve_helpers as h

from edgeinfer.offload import RemoteModel
from edgeinfer.protocol import Limits, coding
from edgeinfer.serve import BackgroundServer, BatchConfig

LIMIT = 256 << 10
WIDE = 4096  # outputs per row of the "wide" model: 2 x 16 kB of float32 per row
X = np.arange(8, dtype=np.float32).reshape(2, 4) / 8


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = h.repository(tmp_path_factory.mktemp("repo"))
    h.mlp(root / "wide" / "1" / "model.onnx", seed=3, n_out=WIDE)
    limits = Limits(max_body_bytes=LIMIT, max_tensor_bytes=LIMIT)
    # batches of up to 1200 rows, so that bodies are large enough to compress
    batching = BatchConfig(max_batch_size=1200)
    with h.running(h.config(root, limits=limits, batching=batching)) as srv:
        yield srv


@pytest.fixture
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    # Accept-Encoding is set per request; httpx's default would ask for everything
    with httpx.Client(base_url=server.url, timeout=10, headers={"Accept-Encoding": ""}) as c:
        yield c


def _wide_expected(x: np.ndarray) -> np.ndarray:
    return x @ h.mlp_weights(3, n_out=WIDE)


def _body(x: np.ndarray, **extra: object) -> bytes:
    return json.dumps(h.infer_body(x, **extra)).encode()


@pytest.mark.parametrize("name", ["zstd", "gzip", "deflate"])
def test_a_compressed_request_body_is_decoded(http: httpx.Client, name: str) -> None:
    x = np.tile(X, (200, 1))  # 400 rows: a body worth compressing
    packed = coding.encode(_body(x), name)
    r = http.post(
        "/v2/models/mlp/versions/1/infer", content=packed, headers={"Content-Encoding": name}
    )
    assert r.status_code == 200, r.text
    assert "decode;dur=" in r.headers["server-timing"]
    got = np.asarray(r.json()["outputs"][0]["data"], np.float32).reshape(400, 3)
    np.testing.assert_allclose(got, x @ h.mlp_weights(0), rtol=1e-5)


def test_a_compressed_binary_request_counts_its_header_in_decoded_bytes(
    http: httpx.Client,
) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": 32},
                }
            ]
        }
    ).encode()
    packed = gzip.compress(header + X.tobytes())
    r = http.post(
        "/v2/models/mlp/infer",
        content=packed,
        headers={"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(len(header))},
    )
    assert r.status_code == 200, r.text
    assert len(r.json()["outputs"][0]["data"]) == 6


@pytest.mark.parametrize("name", ["zstd", "gzip", "deflate"])
def test_a_large_answer_is_compressed_when_asked(http: httpx.Client, name: str) -> None:
    r = http.post("/v2/models/wide/infer", content=_body(X), headers={"Accept-Encoding": name})
    assert r.status_code == 200
    assert r.headers["content-encoding"] == name and r.headers["vary"] == "Accept-Encoding"
    timing = r.headers["server-timing"]
    assert re.fullmatch(r"queue;dur=[0-9.]+, compute;dur=[0-9.]+, encode;dur=[0-9.]+", timing)
    assert int(r.headers["content-length"]) < len(r.content)  # httpx decoded it
    out = {o["name"]: o for o in r.json()["outputs"]}
    got = np.asarray(out["logits"]["data"], np.float32).reshape(2, WIDE)
    np.testing.assert_allclose(got, _wide_expected(X), rtol=1e-4, atol=1e-5)


def test_no_compression_unless_asked_or_worth_it(http: httpx.Client) -> None:
    r = http.post("/v2/models/wide/infer", content=_body(X))  # no Accept-Encoding
    assert r.status_code == 200 and "content-encoding" not in r.headers
    r = http.post(
        "/v2/models/wide/infer", content=_body(X), headers={"Accept-Encoding": "identity"}
    )
    assert "content-encoding" not in r.headers
    r = http.post("/v2/models/wide/infer", content=_body(X), headers={"Accept-Encoding": "br"})
    assert r.status_code == 200 and "content-encoding" not in r.headers
    small = http.post("/v2/models/mlp/infer", content=_body(X), headers={"Accept-Encoding": "gzip"})
    assert small.status_code == 200 and "content-encoding" not in small.headers  # < 8 KiB


def test_compression_can_be_turned_off(tmp_path: object) -> None:
    import pathlib

    root = pathlib.Path(str(tmp_path))
    h.mlp(root / "wide" / "1" / "model.onnx", seed=3, n_out=WIDE)
    with h.running(h.config(root, grpc_port=None, compress_min_bytes=None)) as srv:
        r = httpx.post(
            f"{srv.url}/v2/models/wide/infer",
            content=_body(X),
            headers={"Accept-Encoding": "gzip"},
            timeout=10,
        )
    assert r.status_code == 200 and "content-encoding" not in r.headers


@pytest.mark.parametrize(
    ("content", "encoding", "status", "message"),
    [
        (b"{}", "br", 415, "content coding 'br' is not supported; use identity, zstd, gzip"),
        (b"not gzip at all", "gzip", 400, "not valid gzip data"),
        (gzip.compress(b'{"inputs": []}')[:-8], "gzip", 400, "truncated"),
        (coding.encode(b"x" * 1_000_000, "zstd"), "zstd", 400, f"limit of {LIMIT} bytes"),
        (coding.encode(b" " * 1_000_000, "gzip"), "gzip", 400, f"limit of {LIMIT} bytes"),
        (coding.encode(b"[[[[", "deflate"), "deflate", 400, "not valid JSON"),
    ],
)
def test_bad_compressed_bodies_are_4xx_and_the_server_stays_healthy(
    http: httpx.Client, content: bytes, encoding: str, status: int, message: str
) -> None:
    r = http.post("/v2/models/mlp/infer", content=content, headers={"Content-Encoding": encoding})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert http.get("/v2/health/ready").status_code == 200
    ok = http.post("/v2/models/mlp/infer", content=_body(X))
    assert ok.status_code == 200


@pytest.mark.parametrize("compress", [None, "zstd", "gzip"])
def test_remote_model_compresses_and_counts_wire_bytes(
    server: BackgroundServer, compress: str | None
) -> None:
    x = np.tile(X, (600, 1))  # 1200 rows: 19 kB of float32 up, 2 x 14 kB down
    with RemoteModel(server.url, "mlp", 1, compress=compress) as remote:
        result = remote.infer(x)
    np.testing.assert_allclose(result.outputs["logits"], x @ h.mlp_weights(0), rtol=1e-5)
    raw_up = x.nbytes
    if compress is None:
        assert result.stats.up_bytes > raw_up
    else:
        assert result.stats.up_bytes < raw_up  # repeated rows compress well
    assert result.stats.down_bytes < 2 * 1200 * 3 * 4  # the answer came back compressed
    assert result.stats.codec_s > 0  # decompressing it, at least, took this client time


def test_remote_model_rejects_an_unknown_compression(server: BackgroundServer) -> None:
    with pytest.raises(Exception, match="compress='lz4': expected None or one of zstd"):
        RemoteModel(server.url, "mlp", compress="lz4")
    with pytest.raises(Exception, match="gRPC compresses messages with None, 'gzip'"):
        RemoteModel(server.grpc_target, "mlp", transport="grpc", compress="zstd")


def test_grpc_message_compression(server: BackgroundServer) -> None:
    with RemoteModel(server.grpc_target, "wide", transport="grpc", compress="gzip") as remote:
        got = remote.predict(X)["logits"]
    np.testing.assert_allclose(got, _wide_expected(X), rtol=1e-4, atol=1e-5)


def _tritonclient_session(url: str) -> None:
    httpclient = pytest.importorskip("tritonclient.http")
    client = httpclient.InferenceServerClient(url)
    try:
        for algorithm in ("gzip", "deflate"):
            inp = httpclient.InferInput("x", list(X.shape), "FP32")
            inp.set_data_from_numpy(X, binary_data=True)
            result = client.infer(
                "wide",
                [inp],
                request_compression_algorithm=algorithm,
                response_compression_algorithm=algorithm,
            )
            np.testing.assert_allclose(
                result.as_numpy("logits"), _wide_expected(X), rtol=1e-4, atol=1e-5
            )
    finally:
        client.close()


def test_tritonclient_http_compression_both_ways(server: BackgroundServer) -> None:
    try:
        _tritonclient_session(server.url.removeprefix("http://"))
    finally:
        gc.collect()  # tritonclient's __del__ must run on its gevent hub's thread
