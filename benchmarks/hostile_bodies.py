"""Hostile request bodies, as attacks for benchmarks/bench_hostile.py (registered in ATTACKS).

Each sends one kind of small, valid-looking request once a second, open loop (a new request
every second whether or not the last was answered, as an attacker would), for the tiny MLP
the benchmark serves (``x``: FP32 [N, 4], max_batch_size 8):

* ``gzip_json_bomb``: 32 KB of gzip that inflates to a valid 32 MiB JSON request;
* ``bytes_shape_bomb``: 108 bytes claiming a BYTES tensor of shape [64M] with no data;
* ``oversized_batch_binary``: one binary-extension request of 262,143 rows (4 MiB);
* ``oversized_batch_grpc``: gRPC ModelInfer of 3.9M rows (62 MB), sent with grpc's gzip
  (about 61 KB on the wire).

What each returns: the statuses the server answered (HTTP codes, gRPC code names), the
requests still unanswered when the attack stopped, and the first error message seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

BODY_ROWS = 4_200_000  # rows of four zeros in the gzip bomb: 32 MiB of JSON
BIG_ROWS = 262_143  # rows in the binary-extension request
GRPC_ROWS = 3_900_000  # rows in the gRPC message (62 MB before grpc's gzip)
EVERY_S = 1.0  # seconds between two requests of an attack


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# The server the benchmark starts needs gRPC for the gRPC attack.
BODY_SETTINGS: dict[str, Any] = {"grpc_port": _free_port()}


class _Seen:
    def __init__(self) -> None:
        self.statuses: dict[str, int] = {}
        self.unanswered = 0
        self.first_error: str | None = None

    def add(self, status: str, message: str | None = None) -> None:
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if message and self.first_error is None:
            self.first_error = message[:300]

    def result(self) -> dict[str, Any]:
        return {
            "statuses": self.statuses,
            "unanswered_at_stop": self.unanswered,
            "first_error": self.first_error,
        }


async def _open_loop(stop: asyncio.Event, send: Callable[[], Awaitable[None]], seen: _Seen) -> None:
    """``send()`` every ``EVERY_S`` until ``stop``, without waiting for the answers."""
    tasks: set[asyncio.Task[None]] = set()
    while not stop.is_set():
        task = asyncio.ensure_future(send())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), EVERY_S)
    seen.unanswered = len(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _http_attack(
    target: Any, stop: asyncio.Event, body: bytes, headers: dict[str, str]
) -> dict[str, Any]:
    import httpx

    seen = _Seen()
    url = f"http://{target.host}:{target.port}{target.infer_path}"
    async with httpx.AsyncClient(timeout=300) as client:

        async def send() -> None:
            try:
                r = await client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                seen.add(type(exc).__name__, str(exc))
                return
            error = r.json().get("error") if r.status_code != 200 else None
            seen.add(str(r.status_code), error)

        await _open_loop(stop, send, seen)
    return seen.result()


def gzip_json_bomb_body(rows: int = BODY_ROWS) -> bytes:
    """A valid JSON request of ``rows`` x 4 zeros, gzipped, built without holding it whole."""
    c = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [
        c.compress(b'{"inputs":[{"name":"x","shape":[%d,4],"datatype":"FP32","data":[0' % rows)
    ]
    left = rows * 4 - 1
    chunk = b",0" * (1 << 20)
    while left > 0:
        n = min(left, 1 << 20)
        parts.append(c.compress(chunk[: 2 * n]))
        left -= n
    parts += [c.compress(b"]}]}"), c.flush()]
    return b"".join(parts)


async def gzip_json_bomb(target: Any, stop: asyncio.Event) -> dict[str, Any]:
    """32 KB of gzip inflating to a valid 32 MiB JSON request, once a second."""
    body = gzip_json_bomb_body()
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    out = await _http_attack(target, stop, body, headers)
    return {"body_bytes": len(body), **out}


async def bytes_shape_bomb(target: Any, stop: asyncio.Event) -> dict[str, Any]:
    """108 bytes claiming a BYTES tensor of shape [64M] with no data, once a second."""
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
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    out = await _http_attack(target, stop, header, headers)
    return {"body_bytes": len(header), **out}


async def oversized_batch_binary(target: Any, stop: asyncio.Event) -> dict[str, Any]:
    """One binary-extension request of 262,143 rows (max_batch_size is 8), once a second."""
    header = json.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [BIG_ROWS, 4],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": BIG_ROWS * 16},
                }
            ]
        }
    ).encode()
    body = header + bytes(BIG_ROWS * 16)
    headers = {
        "Content-Type": "application/octet-stream",
        "Inference-Header-Content-Length": str(len(header)),
    }
    out = await _http_attack(target, stop, body, headers)
    return {"body_bytes": len(body), **out}


async def oversized_batch_grpc(target: Any, stop: asyncio.Event) -> dict[str, Any]:
    """gRPC ModelInfer of 3.9M rows (62 MB, ~61 KB with grpc's gzip), once a second."""
    import grpc

    from edgeinfer.protocol.pb import open_inference_grpc_pb2 as pb

    msg = pb.ModelInferRequest(model_name="mlp")
    msg.inputs.add(name="x", datatype="FP32", shape=[GRPC_ROWS, 4])
    msg.raw_input_contents.append(bytes(GRPC_ROWS * 16))
    raw = msg.SerializeToString()
    del msg
    seen = _Seen()
    port = target.settings["grpc_port"]
    async with grpc.aio.insecure_channel(
        f"{target.host}:{port}", compression=grpc.Compression.Gzip
    ) as channel:
        infer = channel.unary_unary(
            "/inference.GRPCInferenceService/ModelInfer",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )

        async def send() -> None:
            try:
                await infer(raw, timeout=300)
            except grpc.aio.AioRpcError as exc:
                seen.add(exc.code().name, exc.details())
                return
            seen.add("OK")

        await _open_loop(stop, send, seen)
    return {"message_bytes": len(raw), **seen.result()}


BODY_ATTACKS: dict[str, Callable[[Any, asyncio.Event], Awaitable[dict[str, Any]]]] = {
    "gzip_json_bomb": gzip_json_bomb,
    "bytes_shape_bomb": bytes_shape_bomb,
    "oversized_batch_binary": oversized_batch_binary,
    "oversized_batch_grpc": oversized_batch_grpc,
}
