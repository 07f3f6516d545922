"""Untrusted input against a real server: every bad request is a 400 with a message that
says what was wrong, never a 500, and the server stays healthy afterwards."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import httpx
import pytest
import serve_helpers as h

from edgeinfer.protocol import Limits
from edgeinfer.serve import BackgroundServer, BatchConfig

LIMIT = 64 << 10  # a small body limit so the test does not move megabytes


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = h.repository(tmp_path_factory.mktemp("repo"))
    limits = Limits(max_body_bytes=LIMIT, max_tensor_bytes=LIMIT)
    batching = BatchConfig(max_batch_size=1000)  # mlp's inputs may take the whole LIMIT
    with h.running(h.config(root, limits=limits, grpc_port=None, batching=batching)) as srv:
        yield srv


@pytest.fixture
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


X = {"name": "x", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}


def _json(*tensors: object, **extra: object) -> bytes:
    return json.dumps({"inputs": list(tensors), **extra}).encode()


def _binary(size: int, actual: int) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": size},
                }
            ]
        }
    ).encode()
    return header + b"\0" * actual, {"Inference-Header-Content-Length": str(len(header))}


CASES = [
    ("not json at all", {}, "not valid JSON"),
    (b"\xff\xfe", {}, "not valid JSON"),
    (_json({**X, "shape": [1, -4]}), {}, "dimension -4 is negative"),
    (_json({**X, "shape": [2**33, 2**33]}), {}, "needs 295147905179352825856 bytes, more than"),
    (_json({**X, "shape": [10**30]}), {}, "more than the limit"),
    (_json({**X, "shape": [1, 4.0]}), {}, "not an integer"),
    (_json({**X, "shape": [1, True]}), {}, "not an integer"),
    (b"[" * 5000 + b"]" * 5000, {}, "nesting is 5000 levels deep"),
    (b'{"inputs": ' + b"[" * 200 + b"]" * 200 + b"}", {}, "nesting is 201 levels deep"),
    (_json({**X, "data": [1, 2, 3]}), {}, "has 3 values, but shape \\[1,4\\] needs 4"),
    (_json({**X, "datatype": "FP32X"}), {}, "unknown datatype 'FP32X'"),
    (_json({**X, "data": ["1", "2", "3", "4"]}), {}, "FP32 data must be numbers, got string"),
    (_json({**X, "name": "y"}), {}, "missing input\\(s\\) 'x'; unknown input\\(s\\) 'y'"),
    (_json({**X, "shape": [1, 5], "data": [1] * 5}), {}, "dimension 1 is 5, expected 4"),
    (_json({**X, "datatype": "BYTES", "data": ["a"] * 4}), {}, "declared BYTES, .* expects FP32"),
    (_json(X, outputs=[{"name": "nope"}]), {}, "requested outputs \\['nope'\\]"),
    (_json(X, parameters={"timeout": -5}), {}, "'timeout' must be a positive integer"),
    # binary tensor data extension
    (*_binary(16, 8), "is 16 bytes but only 8 bytes"),
    (*_binary(12, 12), "12 bytes of data, but shape \\[1,4\\] of FP32 needs 16"),
    (*_binary(16, 20), "4 bytes of binary data .* not claimed"),
    (_json(X), {"Inference-Header-Content-Length": "99999"}, "body has only"),
    (_json(X), {"Inference-Header-Content-Length": "-1"}, "non-negative integer"),
    (_json(X), {"Inference-Header-Content-Length": "abc"}, "non-negative integer"),
]


@pytest.mark.parametrize(("body", "headers", "message"), CASES)
def test_bad_requests_are_400(
    http: httpx.Client, body: bytes | str, headers: dict[str, str], message: str
) -> None:
    r = http.post("/v2/models/mlp/versions/1/infer", content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert re.search(message, r.json()["error"]), r.json()["error"]
    assert http.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("/v2/models/a%5Cb/infer", 400, "is not valid"),  # backslash
        ("/v2/models/..%5C..%5Cetc/infer", 400, "is not valid"),
        ("/v2/models/.hidden/infer", 400, "is not valid"),
        ("/v2/models/a%00b/infer", 400, "is not valid"),
        ("/v2/models/" + "a" * 200 + "/infer", 400, "is not valid"),
        ("/v2/models/mlp/versions/..%5C1/infer", 400, "version .* is not valid"),
        ("/v2/models/..%2F..%2Fetc/infer", 404, "Not Found"),  # '/' never reaches a name
        ("/v2/repository/models/..%5Cx/load", 403, "disabled"),
    ],
)
def test_model_names_with_path_characters(
    http: httpx.Client, path: str, status: int, message: str
) -> None:
    r = http.post(path, json={"inputs": [X]})
    assert r.status_code == status, r.text
    assert re.search(message, r.json()["error"])


def test_body_limit_from_content_length(http: httpx.Client) -> None:
    r = http.post("/v2/models/mlp/infer", content=b"x" * (LIMIT + 1))
    assert r.status_code == 400 and f"larger than the limit of {LIMIT}" in r.json()["error"]


def test_body_limit_while_streaming(http: httpx.Client) -> None:
    """A chunked body with no Content-Length is cut off once it passes the limit."""

    def chunks() -> Iterator[bytes]:
        for _ in range(64):
            yield b" " * 4096

    r = http.post("/v2/models/mlp/infer", content=chunks())
    assert r.status_code == 400 and "larger than the limit" in r.json()["error"]
    assert http.get("/v2/health/live").status_code == 200


def test_binary_tensor_within_limit_still_works(http: httpx.Client) -> None:
    import numpy as np

    from edgeinfer.protocol import InferenceRequest, InferTensor, rest

    x = np.ones((1000, 4), np.float32)  # 16 kB: under the 64 kB limit
    enc = rest.encode_request(InferenceRequest([InferTensor.from_array("x", x)]))
    r = http.post("/v2/models/mlp/infer", content=enc.body, headers=enc.headers)
    assert r.status_code == 200, r.text
