"""Every transport exception maps to the most specific RemoteError, and the tree is sound."""

from __future__ import annotations

import inspect

import grpc
import httpx
import pytest

from edgeinfer.errors import EdgeInferError
from edgeinfer.offload import errors as E
from edgeinfer.offload.grpc_transport import GRPC_ERRORS, grpc_target, map_grpc_error
from edgeinfer.offload.http_transport import map_httpx_error
from edgeinfer.offload.transport import parse_server_timing, status_error

URL = "http://edge:8000"


def _httpx_exceptions() -> list[type[Exception]]:
    return [
        obj
        for name in httpx.__all__
        if inspect.isclass(obj := getattr(httpx, name)) and issubclass(obj, Exception)
    ]


def _instance(cls: type[Exception]) -> Exception:
    if issubclass(cls, httpx.HTTPStatusError):
        request = httpx.Request("GET", URL)
        return cls("x", request=request, response=httpx.Response(503, request=request))
    try:
        return cls("boom")
    except TypeError:  # the stream errors take no message
        return cls()


def test_every_httpx_exception_maps_to_a_specific_class() -> None:
    classes = _httpx_exceptions()
    assert len(classes) >= 25  # the whole tree, not a lucky subset
    for cls in classes:
        mapped = map_httpx_error(_instance(cls), URL)
        assert type(mapped) is not E.RemoteError, cls  # never the bare root
        assert isinstance(mapped, E.RemoteError)
        assert mapped.url == URL


@pytest.mark.parametrize(
    ("exc", "expected", "retryable"),
    [
        (httpx.ConnectError("[Errno 111] Connection refused"), E.RemoteRefused, True),
        (httpx.ConnectError("Name or service not known"), E.RemoteUnavailable, True),
        (httpx.ConnectTimeout("t"), E.RemoteConnectTimeout, True),
        (httpx.PoolTimeout("t"), E.RemoteConnectTimeout, True),
        (httpx.ReadTimeout("t"), E.RemoteTimeout, False),
        (httpx.WriteTimeout("t"), E.RemoteTimeout, False),
        (httpx.ReadError("reset"), E.RemoteUnavailable, True),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            E.RemoteUnavailable,
            True,
        ),
        (httpx.RemoteProtocolError("illegal header"), E.RemoteProtocolError, False),
        (httpx.DecodingError("gzip"), E.RemoteProtocolError, False),
    ],
)
def test_httpx_mapping_is_the_most_specific(
    exc: Exception, expected: type[E.RemoteError], retryable: bool
) -> None:
    mapped = map_httpx_error(exc, URL)
    assert type(mapped) is expected
    assert mapped.retryable is retryable


def test_every_grpc_status_maps() -> None:
    codes = [c for c in grpc.StatusCode if c is not grpc.StatusCode.OK]
    assert set(codes) == set(GRPC_ERRORS)
    for _code, (cls, status) in GRPC_ERRORS.items():
        assert issubclass(cls, E.RemoteError) and cls is not E.RemoteError
        assert 400 <= status < 600
    assert GRPC_ERRORS[grpc.StatusCode.UNAVAILABLE][0] is E.RemoteUnavailable
    assert GRPC_ERRORS[grpc.StatusCode.DEADLINE_EXCEEDED][0] is E.RemoteTimeout
    assert GRPC_ERRORS[grpc.StatusCode.NOT_FOUND][0] is E.RemoteRejected


class _RpcError(grpc.RpcError, grpc.Call):  # type: ignore[misc]
    """What grpcio raises: an RpcError that is also a Call (code, details)."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def initial_metadata(self) -> None: ...
    def trailing_metadata(self) -> None: ...
    def is_active(self) -> bool: ...  # type: ignore[empty-body]
    def time_remaining(self) -> None: ...
    def cancel(self) -> None: ...
    def add_callback(self, callback: object) -> None: ...  # type: ignore[override]


def test_grpc_refused_and_deadline() -> None:
    refused = map_grpc_error(
        _RpcError(grpc.StatusCode.UNAVAILABLE, "failed to connect: Connection refused"), URL
    )
    assert type(refused) is E.RemoteRefused and refused.status == 503
    late = map_grpc_error(_RpcError(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"), URL)
    assert type(late) is E.RemoteTimeout and not late.retryable


@pytest.mark.parametrize(
    ("status", "cls", "retryable"),
    [
        (503, E.RemoteUnavailable, True),
        (504, E.RemoteTimeout, False),
        (400, E.RemoteRejected, False),
        (401, E.RemoteRejected, False),
        (404, E.RemoteRejected, False),
        (429, E.RemoteRejected, False),
        (500, E.RemoteServerError, False),
        (502, E.RemoteServerError, False),
        (302, E.RemoteProtocolError, False),
    ],
)
def test_status_table(status: int, cls: type[E.RemoteError], retryable: bool) -> None:
    err = status_error(status, "why", URL)
    assert type(err) is cls
    assert err.retryable is retryable and err.status == status
    assert f"HTTP {status}: why" in str(err) and URL in str(err)


def test_the_tree() -> None:
    assert issubclass(E.RemoteError, EdgeInferError)
    assert issubclass(E.RemoteRefused, E.RemoteUnavailable)
    assert issubclass(E.RemoteConnectTimeout, E.RemoteTimeout)
    assert issubclass(E.NoPlacementError, E.OffloadError)
    assert issubclass(E.OffloadError, EdgeInferError)
    assert [n for n in E.__all__ if not hasattr(E, n)] == []


def test_server_timing() -> None:
    assert parse_server_timing("queue;dur=1.5, compute;dur=3.5") == pytest.approx(0.005)
    both = "queue;dur=1, compute;dur=2, decode;dur=0.5, encode;dur=0.5"
    assert parse_server_timing(both) == pytest.approx(0.004)  # HTTP compression: server time
    assert parse_server_timing('compute;desc="onnx";dur=2') == pytest.approx(0.002)
    assert parse_server_timing("db;dur=9") is None
    assert parse_server_timing(None) is None


def test_grpc_target() -> None:
    assert grpc_target("grpc://127.0.0.1:8001") == "127.0.0.1:8001"
    assert grpc_target("127.0.0.1:8001/") == "127.0.0.1:8001"
