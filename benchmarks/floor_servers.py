"""Servers that only refuse: what a refusal costs with nothing else going on.

``python floor_servers.py MODE PORT [REPOSITORY]``, MODE one of

- ``uvicorn-503``: a bare ASGI app on uvicorn (as edgeinfer runs it: uvloop, httptools)
  that answers every request with edgeinfer's 503 -- the same status, headers and body
  length -- and does nothing else: the floor for a REST refusal in Python;
- ``grpc-abort``: a bare grpc.aio server whose ModelInfer aborts every call with
  UNAVAILABLE and the same trailing metadata -- the floor for a gRPC refusal;
- ``grpc-ok``: the same server answering every call with an empty message -- the floor
  for any gRPC call;
- ``uvicorn-infer``: a bare ASGI app on uvicorn answering ``POST .../infer`` for the one
  ONNX model in REPOSITORY/tiny/1/model.onnx with the least any JSON server does: ``json.loads``
  of the body, numpy arrays of its inputs, one ONNX Runtime run (one thread, spinning off, as
  every server in the benchmark), ``json.dumps`` of the outputs -- no validation, no limits,
  no queue, no metrics: the floor for a REST JSON answer in Python (used by server_peers.py);
- ``grpc-infer``: the same on bare grpc.aio: ``ModelInferRequest`` parsed, raw input contents
  as numpy arrays, one run, ``ModelInferResponse`` with raw output contents -- the floor for a
  gRPC answer;
- ``grpc-bytes-infer``: bare grpc.aio doing even less: no message objects at all, the request's
  wire format walked for its input tensors and raw contents only (each tensor's few bytes
  parsed), the answer's bytes written directly -- the least a grpc.aio handler can do;
- ``grpc-sync-infer-N`` (N threads, e.g. ``grpc-sync-infer-4``): ``grpc-infer``'s handler on
  grpc's synchronous server (``grpc.server`` with a ``ThreadPoolExecutor`` of N threads),
  grpc's other Python server: no event loop, a thread per call in flight;
- ``grpc-sync-loop-N``: the synchronous server on N threads handing each parsed request to an
  asyncio event loop on a thread of its own and waiting for its answer
  (``run_coroutine_threadsafe``), where the model runs -- what edgeinfer on grpc's
  synchronous server would pay at least, its queue, batching and admission living on the loop;
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


def _session(repository: str) -> tuple[object, list[str], dict[str, str]]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    path = f"{repository}/tiny/1/model.onnx"
    session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    outputs = [o.name for o in session.get_outputs()]
    return session, outputs, {"FP32": "float32", "INT64": "int64", "INT32": "int32"}


def uvicorn_infer(port: int, repository: str) -> None:
    import json

    import numpy as np
    import uvicorn

    session, outputs, dtypes = _session(repository)
    run = session.run  # type: ignore[attr-defined]
    ready = b'{"ready":true}'

    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        if scope["type"] != "http":
            return
        if scope["method"] == "GET":  # readiness, for the benchmark's start-up check
            body = ready
        else:
            chunks = []
            while True:
                message = await receive()  # type: ignore[operator]
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    break
            doc = json.loads(b"".join(chunks))
            feeds = {
                t["name"]: np.asarray(t["data"], dtypes[t["datatype"]]).reshape(t["shape"])
                for t in doc["inputs"]
            }
            results = run(outputs, feeds)
            body = json.dumps(
                {
                    "model_name": "tiny",
                    "outputs": [
                        {
                            "name": n,
                            "datatype": "FP32",
                            "shape": list(a.shape),
                            "data": a.ravel().tolist(),
                        }
                        for n, a in zip(outputs, results, strict=True)
                    ],
                }
            ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": body})  # type: ignore[operator]

    _settle()
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def grpc_infer(port: int, repository: str) -> None:
    import grpc
    import numpy as np
    import uvloop

    from edgeinfer.protocol.pb import open_inference_grpc_pb2 as pb

    session, outputs, dtypes = _session(repository)
    run = session.run  # type: ignore[attr-defined]

    async def handle(raw: bytes, context: object) -> bytes:
        request = pb.ModelInferRequest.FromString(raw)
        feeds = {
            t.name: np.frombuffer(data, dtypes[t.datatype]).reshape(tuple(t.shape))
            for t, data in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        results = run(outputs, feeds)
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
        for n, a in zip(outputs, results, strict=True):
            response.outputs.add(name=n, datatype="FP32", shape=a.shape)
            response.raw_output_contents.append(a.tobytes())
        return response.SerializeToString()  # type: ignore[no-any-return]

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

    uvloop.install()
    asyncio.run(main())


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fields(raw: bytes) -> list[tuple[int, bytes]]:
    """The length-delimited fields of a message, as (tag byte, contents), in order (the
    request's top-level fields are all length-delimited: strings, messages, bytes, maps)."""
    out, pos, end = [], 0, len(raw)
    while pos < end:
        tag = raw[pos]
        pos += 1
        length = shift = 0
        while True:
            byte = raw[pos]
            pos += 1
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        out.append((tag, raw[pos : pos + length]))
        pos += length
    return out


def grpc_bytes_infer(port: int, repository: str) -> None:
    import grpc
    import numpy as np
    import uvloop

    from edgeinfer.protocol.pb import open_inference_grpc_pb2 as pb

    session, outputs, dtypes = _session(repository)
    run = session.run  # type: ignore[attr-defined]
    tensor = pb.ModelInferRequest.InferInputTensor.FromString
    head = b"\x0a\x04tiny\x12\x011"  # model_name "tiny", model_version "1"

    def described(name: str, shape: tuple[int, ...]) -> bytes:
        dims = b"".join(_varint(d) for d in shape)
        body = b"\x0a" + _varint(len(name)) + name.encode() + b"\x12\x04FP32"
        body += b"\x1a" + _varint(len(dims)) + dims
        return b"\x2a" + _varint(len(body)) + body

    async def handle(raw: bytes, context: object) -> bytes:
        inputs, contents = [], []
        for tag, value in _fields(raw):
            if tag == 0x2A:  # inputs (5)
                inputs.append(tensor(value))
            elif tag == 0x3A:  # raw_input_contents (7)
                contents.append(value)
        feeds = {
            t.name: np.frombuffer(data, dtypes[t.datatype]).reshape(tuple(t.shape))
            for t, data in zip(inputs, contents, strict=True)
        }
        results = run(outputs, feeds)
        parts = [head]
        parts += [described(n, a.shape) for n, a in zip(outputs, results, strict=True)]
        for a in results:
            data = a.tobytes()
            parts += [b"\x32", _varint(len(data)), data]  # raw_output_contents (6)
        return b"".join(parts)

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

    uvloop.install()
    asyncio.run(main())


def grpc_sync_infer(port: int, repository: str, threads: int, loop: bool = False) -> None:
    from concurrent.futures import ThreadPoolExecutor

    import grpc
    import numpy as np

    from edgeinfer.protocol.pb import open_inference_grpc_pb2 as pb

    session, outputs, dtypes = _session(repository)
    run = session.run  # type: ignore[attr-defined]

    if loop:
        import threading

        import uvloop

        ev = uvloop.new_event_loop()
        threading.Thread(target=ev.run_forever, name="loop", daemon=True).start()

    async def on_loop(feeds: dict[str, object]) -> list[object]:
        return run(outputs, feeds)  # type: ignore[no-any-return]

    def handle(raw: bytes, context: object) -> bytes:  # grpc-infer's handler, not async
        request = pb.ModelInferRequest.FromString(raw)
        feeds = {
            t.name: np.frombuffer(data, dtypes[t.datatype]).reshape(tuple(t.shape))
            for t, data in zip(request.inputs, request.raw_input_contents, strict=True)
        }
        if loop:
            results = asyncio.run_coroutine_threadsafe(on_loop(feeds), ev).result()
        else:
            results = run(outputs, feeds)
        response = pb.ModelInferResponse(model_name=request.model_name, model_version="1")
        for n, a in zip(outputs, results, strict=True):
            response.outputs.add(name=n, datatype="FP32", shape=a.shape)
            response.raw_output_contents.append(a.tobytes())
        return response.SerializeToString()  # type: ignore[no-any-return]

    handler = grpc.unary_unary_rpc_method_handler(handle)
    # calls past the pool's threads wait in grpc's queue, as they would on any busy server
    server = grpc.server(ThreadPoolExecutor(threads), maximum_concurrent_rpcs=None)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"ModelInfer": handler}),)
    )
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    _settle()
    server.wait_for_termination()


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
    elif mode == "uvicorn-infer":
        uvicorn_infer(port, sys.argv[3])
    elif mode == "grpc-infer":
        grpc_infer(port, sys.argv[3])
    elif mode == "grpc-bytes-infer":
        grpc_bytes_infer(port, sys.argv[3])
    elif mode.startswith("grpc-sync-infer-") and mode.rpartition("-")[2].isdigit():
        grpc_sync_infer(port, sys.argv[3], int(mode.rpartition("-")[2]))
    elif mode.startswith("grpc-sync-loop-") and mode.rpartition("-")[2].isdigit():
        grpc_sync_infer(port, sys.argv[3], int(mode.rpartition("-")[2]), loop=True)
    else:
        sys.exit(
            f"unknown mode {mode!r}; expected uvicorn-503, grpc-abort, grpc-ok, edgeinfer-refuse, "
            "uvicorn-infer, grpc-infer, grpc-bytes-infer, grpc-sync-infer-N or grpc-sync-loop-N"
        )
