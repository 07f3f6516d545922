"""Demo stage: serve the digits bundle on loopback and run remote inferences over HTTP/gRPC."""

from __future__ import annotations

import shutil
import statistics
import time

import numpy as np
from rich.table import Table

from edgeinfer.demo import DemoContext

TITLE = "Serve the model on an edge server (Open Inference Protocol, REST and gRPC)"


def run(ctx: DemoContext) -> None:
    import grpc  # type: ignore[import-untyped]
    import httpx

    from edgeinfer.protocol import InferenceRequest, InferTensor, RequestedOutput, rest
    from edgeinfer.protocol import grpc_codec as gc
    from edgeinfer.serve import BackgroundServer, ServeConfig

    console = ctx.console
    bundle = ctx.artifacts["digits_bundle"]
    x_test, y_test = ctx.artifacts["digits_data"]
    repo = ctx.workdir / "model-repository"
    if repo.exists():
        shutil.rmtree(repo)
    shutil.copytree(bundle, repo / "digits" / "1")
    config = ServeConfig(repo, port=0, grpc_port=0, poll_interval_s=None)
    n = 16 if ctx.fast else 64
    with BackgroundServer(config) as server:
        console.print(
            f"edge server up: REST {server.url}, gRPC {server.grpc_target}, "
            f"repository {repo} (digits/1)"
        )
        rows = []
        with httpx.Client(base_url=server.url, timeout=10) as http:
            meta = http.get("/v2/models/digits").json()
            console.print(f"model metadata: inputs {meta['inputs']}, outputs {meta['outputs']}")
            for label, binary in (("REST, JSON tensors", False), ("REST, binary tensors", True)):
                lat, correct = [], 0
                for i in range(n):
                    req = InferenceRequest(
                        [InferTensor.from_array("pixels", x_test[i : i + 1])],
                        outputs=[RequestedOutput("logits", {"binary_data": binary})],
                    )
                    enc = rest.encode_request(req, binary=binary)
                    start = time.perf_counter()
                    r = http.post("/v2/models/digits/infer", content=enc.body, headers=enc.headers)
                    lat.append(time.perf_counter() - start)
                    r.raise_for_status()
                    header_length = rest.parse_header_length(r.headers.get(rest.HEADER_LENGTH))
                    resp = rest.decode_response(r.content, header_length)
                    correct += int(resp.arrays()["logits"].argmax() == y_test[i])
                rows.append((label, lat, correct))
        with grpc.insecure_channel(server.grpc_target) as channel:
            infer = channel.unary_unary(
                "/inference.GRPCInferenceService/ModelInfer",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=gc.pb.ModelInferResponse.FromString,
            )
            lat, correct = [], 0
            for i in range(n):
                req = InferenceRequest(
                    [InferTensor.from_array("pixels", x_test[i : i + 1])], model_name="digits"
                )
                start = time.perf_counter()
                msg = infer(gc.request_to_proto(req))
                lat.append(time.perf_counter() - start)
                out = gc.response_from_proto(msg).arrays()["logits"]
                correct += int(np.argmax(out) == y_test[i])
            rows.append(("gRPC, raw tensors", lat, correct))
    table = Table(title=f"remote inference on 127.0.0.1, {n} real digit images, one at a time")
    for col in ("protocol", "p50 ms", "max ms", "correct"):
        table.add_column(col, justify="right")
    for label, lat, correct in rows:
        table.add_row(
            label,
            f"{statistics.median(lat) * 1e3:.2f}",
            f"{max(lat) * 1e3:.2f}",
            f"{correct}/{n}",
        )
    console.print(table)
    ctx.artifacts["serve_repository"] = repo
