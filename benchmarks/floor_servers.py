"""Servers that only refuse: what a refusal costs with nothing else going on.

``python floor_servers.py MODE PORT [REPOSITORY]``, MODE one of

- ``uvicorn-503``: a bare ASGI app on uvicorn (as edgeinfer runs it: uvloop, httptools)
  that answers every request with edgeinfer's 503 -- the same status, headers and body
  length -- and does nothing else: the floor for a REST refusal in Python;
- ``grpc-abort``: a bare grpc.aio server whose ModelInfer aborts every call with
  UNAVAILABLE and the same trailing metadata -- the floor for a gRPC refusal;
- ``grpc-ok``: the same server answering every call with an empty message -- the floor
  for any gRPC call;
- ``edgeinfer-refuse``: ``edgeinfer serve REPOSITORY`` (REST on PORT, gRPC on PORT + 1)
  with its admission told to refuse every request, so every request takes edgeinfer's whole
  refusal path (token, model lookup, admission, metrics, answer) -- the same answer as
  under a real overload, with no model work beside it.

Used by ``bench_server.py --floor-only``. Every server freezes its heap and sets the GIL
switch interval as ``edgeinfer serve`` does, so the comparison is of the request paths.
"""

from __future__ import annotations

import asyncio
import gc
import sys

RETRY_MS = "100"
MESSAGE = "model 'tiny' is overloaded: its queue holds 8 requests already; retry in 100 ms"
SERVICE = "inference.GRPCInferenceService"


def uvicorn_503(port: int) -> None:
    import json

    import uvicorn

    body = b'{"error":%s}' % json.dumps(MESSAGE).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", b"%d" % len(body)),
        (b"retry-after", b"1"),
        (b"retry-after-ms", RETRY_MS.encode()),
    ]

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        await send({"type": "http.response.start", "status": 503, "headers": headers})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

    _settle()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def grpc_server(port: int, refuse: bool) -> None:
    import grpc
    import uvloop

    trailers = (("retry-after-ms", RETRY_MS), ("grpc-retry-pushback-ms", RETRY_MS))

    async def handle(raw: bytes, context: object) -> bytes:
        if refuse:
            await context.abort(grpc.StatusCode.UNAVAILABLE, MESSAGE, trailers)  # type: ignore[attr-defined]
        return b""

    async def main() -> None:
        handler = grpc.unary_unary_rpc_method_handler(handle)
        server = grpc.aio.server()
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),)
        )
        server.add_insecure_port(f"127.0.0.1:{port}")
        await server.start()
        _settle()
        await server.wait_for_termination()

    uvloop.install()  # as uvicorn runs edgeinfer's loop, which grpc shares
    asyncio.run(main())


def edgeinfer_refuse(port: int, repository: str) -> None:
    from edgeinfer.cli.main import main
    from edgeinfer.serve import admission

    # every admission check refuses: the whole refusal path, under no real overload
    admission.Admission.check = lambda self, ahead, timeout_s=None: "queue_full"  # type: ignore[method-assign]
    args = ["serve", repository, "--port", str(port), "--grpc-port", str(port + 1)]
    main([*args, "--threads", "1", "--poll", "0"])


def _settle() -> None:
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(1e-4)


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "uvicorn-503":
        uvicorn_503(port)
    elif mode in ("grpc-abort", "grpc-ok"):
        grpc_server(port, refuse=mode == "grpc-abort")
    elif mode == "edgeinfer-refuse":
        edgeinfer_refuse(port, sys.argv[3])
    else:
        sys.exit(
            f"unknown mode {mode!r}; expected uvicorn-503, grpc-abort, grpc-ok or edgeinfer-refuse"
        )
