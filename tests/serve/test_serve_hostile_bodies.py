"""Hostile request bodies against a real server on 127.0.0.1, over REST (JSON and binary)
and gRPC: compression bombs, shapes that claim what the data cannot hold, batches past
``max_batch_size``, empty shapes numpy cannot build, NaN in JSON, datatypes other than the
model's. Each is refused with a 4xx naming what was wrong, a well-behaved client keeps being
answered while the attack runs, and the server's memory (this process: the server runs on a
thread of it) comes back to where it started."""

from __future__ import annotations

import gc
import json
import logging
import threading
import zlib
from collections.abc import Callable, Iterator

import grpc
import httpx
import numpy as np
import psutil
import pytest
import serve_helpers as h

from edgeinfer.protocol import InferenceRequest, InferTensor, rest
from edgeinfer.protocol import grpc_codec as gc_codec
from edgeinfer.serve import BackgroundServer

pytestmark = pytest.mark.timeout(120)

X = np.array([[1.0, 2.0, 3.0, 4.0]], dtype=np.float32)
MARGIN = 64 << 20  # bytes of RSS the process may keep after an attack (allocator slack)
BOMB_ROWS = 4_200_000  # rows of four zeros: a valid JSON body of 32 MiB
BIG_ROWS = 262_143  # one binary request of 4 MiB of float32
INFER = "/v2/models/mlp/versions/1/infer"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = h.repository(tmp_path_factory.mktemp("repo"))
    with h.running(h.config(root)) as srv:  # the default limits: 64 MiB bodies
        yield srv


@pytest.fixture
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture
def channel(server: BackgroundServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch


def _infer_stub(channel: grpc.Channel, compression: grpc.Compression | None = None) -> object:
    method = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda m: m.SerializeToString(),
        response_deserializer=gc_codec.pb.ModelInferResponse.FromString,
    )

    def call(msg: object) -> object:
        return method(msg, timeout=60, compression=compression)

    return call


def _rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def _gzip_json_bomb(rows: int) -> bytes:
    """A valid JSON request of ``rows`` x 4 zeros, gzipped, built without holding it whole."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = b'{"inputs":[{"name":"x","shape":[%d,4],"datatype":"FP32","data":[0' % rows
    parts = [c.compress(head)]
    chunk = b",0" * (1 << 20)
    left = rows * 4 - 1
    while left > 0:
        n = min(left, 1 << 20)
        parts.append(c.compress(chunk if n == 1 << 20 else b",0" * n))
        left -= n
    parts.append(c.compress(b"]}]}"))
    parts.append(c.flush())
    return b"".join(parts)


class WellBehaved:
    """A client asking for one small inference after another until stopped (on a thread)."""

    def __init__(self, url: str, path: str = INFER, x: np.ndarray = X) -> None:
        self.url = url
        self.body = h.infer_body(x)
        self.path = path
        self.statuses: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=60) as client:
            while not self._stop.is_set():
                r = client.post(self.path, json=self.body)
                self.statuses.append(r.status_code)

    def __enter__(self) -> WellBehaved:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


def _under_attack(
    server: BackgroundServer,
    attack: Callable[[], None],
    times: int,
    path: str = INFER,
    x: np.ndarray = X,
) -> None:
    """Run ``attack`` ``times`` while a well-behaved client asks; check both and the memory."""
    attack()  # once first: what the first call loads (codecs, threads) is not a leak
    before = _rss()
    with WellBehaved(server.url, path, x) as good:
        for _ in range(times):
            attack()
            seen = len(good.statuses)
            for _ in range(3000):  # the good client is answered between two attacks
                if len(good.statuses) > seen:
                    break
                threading.Event().wait(0.01)
    assert good.statuses and set(good.statuses) == {200}
    assert len(good.statuses) >= times
    grown = _rss() - before
    assert grown < MARGIN, f"RSS grew by {grown >> 20} MiB under the attack"


# ------------------------------------------------------------------ 1. decoding
def test_a_gzip_json_bomb_is_refused_at_the_models_bound(
    server: BackgroundServer, http: httpx.Client
) -> None:
    bomb = _gzip_json_bomb(BOMB_ROWS)
    assert len(bomb) < 64 << 10  # tens of kilobytes on the wire, 32 MiB once inflated

    def attack() -> None:
        r = http.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"})
        assert r.status_code == 400, r.text
        assert r.json()["error"] == (
            "the body decompresses to more than the limit of 67072 bytes (the most a request "
            "for model 'mlp' can need, its inputs at max_batch_size 8)"
        )

    _under_attack(server, attack, times=15)


def test_a_bytes_shape_bomb_allocates_nothing(
    server: BackgroundServer, http: httpx.Client, channel: grpc.Channel
) -> None:
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [1 << 26],
                    "datatype": "BYTES",
                    "parameters": {"binary_data_size": 0},
                }
            ]
        }
    ).encode()
    assert len(header) < 128
    infer = _infer_stub(channel)
    msg = gc_codec.pb.ModelInferRequest(model_name="mlp")
    msg.inputs.add(name="x", datatype="BYTES", shape=[1 << 26])
    msg.raw_input_contents.append(b"")
    expected = "0 bytes of BYTES data cannot hold 67108864 elements"

    def attack() -> None:
        r = http.post(INFER, content=header, headers={rest.HEADER_LENGTH: str(len(header))})
        assert r.status_code == 400 and expected in r.json()["error"], r.text
        with pytest.raises(grpc.RpcError) as err:
            infer(msg)  # type: ignore[operator]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert expected in str(err.value.details())

    _under_attack(server, attack, times=10)


WIDE_IN = 32768  # inputs per row of the "wide" model: 8 rows of JSON are about 5 MiB


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = tmp_path_factory.mktemp("wide")
    h.mlp(root / "wide" / "1" / "model.onnx", seed=5, n_in=WIDE_IN)
    with h.running(h.config(root, grpc_port=None)) as srv:
        yield srv


def test_a_large_json_body_is_parsed_off_the_loop_and_its_memory_returns(
    wide: BackgroundServer,
) -> None:
    """Python's JSON parser holds the interpreter lock for a whole document: the server
    parses large ones in its decoder process, so other clients are answered meanwhile."""
    x = np.random.default_rng(0).standard_normal((8, WIDE_IN)).astype(np.float32)
    body = json.dumps(h.infer_body(x)).encode()
    assert len(body) > 4 << 20
    want = x @ h.mlp_weights(5, n_in=WIDE_IN)
    with httpx.Client(base_url=wide.url, timeout=60) as client:

        def attack() -> None:
            r = client.post("/v2/models/wide/infer", content=body)
            assert r.status_code == 200, r.text
            got = next(o for o in r.json()["outputs"] if o["name"] == "logits")
            np.testing.assert_allclose(np.reshape(got["data"], (8, 3)), want, rtol=1e-4)

        _under_attack(wide, attack, times=3, path="/v2/models/wide/infer", x=x[:1])
        # a malformed large body: the decoder process's error, as one line, and a 400
        bad = body.replace(b'"FP32"', b'"FP33"')
        r = client.post("/v2/models/wide/infer", content=bad)
        assert r.status_code == 400 and "unknown datatype 'FP33'" in r.json()["error"], r.text
        # the decoder process killed: the next large body starts another
        (child,) = [
            p
            for p in psutil.Process().children()
            if "edgeinfer.serve.bodies" in " ".join(p.cmdline())
        ]
        child.kill()
        child.wait(30)
        r = client.post("/v2/models/wide/infer", content=body)
        assert r.status_code == 200, r.text


# ------------------------------------------------------------------ 2. batches
def _binary(rows: int) -> tuple[bytes, dict[str, str]]:
    enc = rest.encode_request(
        InferenceRequest([InferTensor.from_array("x", np.zeros((rows, 4), np.float32))])
    )
    return enc.body, enc.headers


def test_an_oversized_binary_batch_is_refused_before_it_is_read(
    server: BackgroundServer, http: httpx.Client
) -> None:
    body, headers = _binary(BIG_ROWS)

    def attack() -> None:
        r = http.post(INFER, content=body, headers=headers)
        assert r.status_code == 400, r.text
        assert r.json()["error"] == (
            f"request body of {len(body)} bytes is larger than the limit of 67072 bytes (the "
            "most a request for model 'mlp' can need, its inputs at max_batch_size 8)"
        )

    _under_attack(server, attack, times=5)


@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip])
def test_an_oversized_grpc_batch_is_refused_by_grpc_at_the_models_need(
    server: BackgroundServer, channel: grpc.Channel, compression: grpc.Compression | None
) -> None:
    # 67072 bytes: mlp's need at max_batch_size 8, the largest of the models loaded; grpc
    # refuses a longer message (a gzip one once it has inflated that much) itself
    req = InferenceRequest(
        [InferTensor.from_array("x", np.zeros((BIG_ROWS, 4), np.float32))], model_name="mlp"
    )
    msg = gc_codec.request_to_proto(req)
    infer = _infer_stub(channel, compression)

    def attack() -> None:
        with pytest.raises(grpc.RpcError) as err:
            infer(msg)  # type: ignore[operator]
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = str(err.value.details())
        if compression is None:
            assert details.endswith(f"message larger than max ({msg.ByteSize()} vs. 67072)")
        else:
            assert "ecompressed message larger than max" in details

    _under_attack(server, attack, times=5)


@pytest.mark.slow
def test_a_62_mb_grpc_gzip_bomb_is_not_inflated_past_the_models_need(
    server: BackgroundServer, channel: grpc.Channel
) -> None:
    # 62 MB of zeros, 61 KB in grpc's gzip: grpc had inflated it whole (the server's limit
    # was 64 MiB), +190-287 MB of RSS under a bomb a second
    msg = gc_codec.pb.ModelInferRequest(model_name="mlp")
    msg.inputs.add(name="x", datatype="FP32", shape=[3_900_000, 4])
    msg.raw_input_contents.append(bytes(3_900_000 * 16))
    raw = msg.SerializeToString()
    del msg
    method = channel.unary_unary(
        "/inference.GRPCInferenceService/ModelInfer",
        request_serializer=lambda b: b,
        response_deserializer=lambda b: b,
    )

    def attack() -> None:
        with pytest.raises(grpc.RpcError) as err:
            method(raw, timeout=60, compression=grpc.Compression.Gzip)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ecompressed message larger than max" in str(err.value.details())

    _under_attack(server, attack, times=3)


def test_a_grpc_message_past_its_own_models_need_names_the_model(
    channel: grpc.Channel,
) -> None:
    # fixed's [2, 3] int64 needs far less than mlp's 67072 bytes, which grpc lets through:
    # the handler holds the message to its own model before parsing it
    msg = gc_codec.pb.ModelInferRequest(model_name="fixed")
    msg.inputs.add(name="a", datatype="INT64", shape=[2, 3])
    msg.raw_input_contents.append(bytes(66_000))
    with pytest.raises(grpc.RpcError) as err:
        _infer_stub(channel)(msg)  # type: ignore[operator]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(err.value.details())
    assert details.startswith(f"message of {msg.ByteSize()} bytes is larger than the limit of")
    assert "the most a request for model 'fixed' can need, its inputs at their fixed" in details


def test_one_row_past_max_batch_size_is_refused_and_names_the_limit(
    http: httpx.Client, channel: grpc.Channel
) -> None:
    x9 = np.ones((9, 4), np.float32)
    message = (
        "model 'mlp': input 'x' has 9 rows (shape [9,4]), more than its max_batch_size of 8; "
        "send at most 8 rows per request"
    )
    r = http.post(INFER, json=h.infer_body(x9))
    assert r.status_code == 400 and r.json()["error"] == message
    body, headers = _binary(9)
    r = http.post(INFER, content=body, headers=headers)
    assert r.status_code == 400 and r.json()["error"] == message
    infer = _infer_stub(channel)
    req = InferenceRequest([InferTensor.from_array("x", x9)], model_name="mlp")
    with pytest.raises(grpc.RpcError) as err:
        infer(gc_codec.request_to_proto(req))  # type: ignore[operator]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == message
    r = http.post(INFER, json=h.infer_body(np.ones((8, 4), np.float32)))
    assert r.status_code == 200, r.text  # the limit itself is fine


# ------------------------------------------------------------------ 3. empty shapes
def test_an_empty_shape_numpy_cannot_build_is_400_without_a_traceback(
    http: httpx.Client, channel: grpc.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    shape = [0, 2**62]
    tensor = {"name": "x", "shape": shape, "datatype": "FP32"}
    header = json.dumps({"inputs": [{**tensor, "parameters": {"binary_data_size": 0}}]})
    msg = gc_codec.pb.ModelInferRequest(model_name="mlp")
    msg.inputs.add(name="x", datatype="FP32", shape=shape)
    msg.raw_input_contents.append(b"")
    with caplog.at_level(logging.WARNING):
        for r in (
            http.post(INFER, json={"inputs": [{**tensor, "data": []}]}),
            http.post(INFER, content=header, headers={rest.HEADER_LENGTH: str(len(header))}),
        ):
            assert r.status_code == 400, r.text
            assert "is empty, but its other dimensions" in r.json()["error"]
        with pytest.raises(grpc.RpcError) as err:
            _infer_stub(channel)(msg)  # type: ignore[operator]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "is empty, but its other dimensions" in str(err.value.details())
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


# ------------------------------------------------------------------ 4. NaN
def _strict_json(body: bytes) -> dict[str, object]:
    def refuse(token: str) -> object:
        raise ValueError(f"{token} is not JSON (RFC 8259)")

    doc: dict[str, object] = json.loads(body, parse_constant=refuse)
    return doc


NAN_X = np.array([[1, np.nan, 2, 3], [np.inf, 0, 0, 0]], np.float32)
NAN_DATA = "[1,{nan},2,3,{inf},0,0,0]"


@pytest.mark.parametrize(
    ("nan", "inf"), [("NaN", "Infinity"), ('"NaN"', '"Infinity"')], ids=["triton", "strings"]
)
def test_nan_is_answered_as_valid_json_and_exactly_in_binary(
    http: httpx.Client, channel: grpc.Channel, nan: str, inf: str
) -> None:
    with np.errstate(invalid="ignore"):
        want = NAN_X @ h.mlp_weights(0)  # NaN in row 0; +-Infinity in row 1
    assert np.isnan(want[0]).all() and np.isinf(want[1]).all()
    data = NAN_DATA.format(nan=nan, inf=inf)
    body = '{"inputs":[{"name":"x","shape":[2,4],"datatype":"FP32","data":' + data + "}]}"
    r = http.post(INFER, content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    doc = _strict_json(r.content)  # RFC 8259 JSON: no bare NaN or Infinity tokens
    logits = next(o for o in doc["outputs"] if o["name"] == "logits")  # type: ignore[attr-defined]
    assert logits["data"][:3] == ["NaN"] * 3
    assert set(logits["data"][3:]) <= {"Infinity", "-Infinity"}
    np.testing.assert_array_equal(rest.decode_response(r.content).arrays()["logits"], want)

    # the binary extension and gRPC carry the same values as raw float32
    req = InferenceRequest(
        [InferTensor.from_array("x", NAN_X)], parameters={"binary_data_output": True}
    )
    enc = rest.encode_request(req)
    r = http.post(INFER, content=enc.body, headers=enc.headers)
    assert r.status_code == 200, r.text
    binary = rest.decode_response(r.content, int(r.headers[rest.HEADER_LENGTH]))
    np.testing.assert_array_equal(binary.arrays()["logits"], want)
    req = InferenceRequest(
        [InferTensor.from_array("x", NAN_X)], model_name="mlp", model_version="1"
    )
    answer = _infer_stub(channel)(gc_codec.request_to_proto(req))  # type: ignore[operator]
    np.testing.assert_array_equal(gc_codec.response_from_proto(answer).arrays()["logits"], want)


# ------------------------------------------------------------------ 5. datatypes
def test_a_declared_datatype_other_than_the_models_is_refused_over_grpc(
    channel: grpc.Channel,
) -> None:
    req = InferenceRequest(
        [InferTensor.from_array("x", np.ones((1, 4), np.int64))], model_name="mlp"
    )
    with pytest.raises(grpc.RpcError) as err:
        _infer_stub(channel)(gc_codec.request_to_proto(req))  # type: ignore[operator]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == (
        "model 'mlp': input 'x' is declared INT64, but the model expects FP32; send FP32 data"
    )
