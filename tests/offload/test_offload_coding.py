"""The HTTP client against a server that sends compressed answers it should not: a corrupt
compressed body is a RemoteProtocolError, and on an error status the status still decides."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from edgeinfer.offload import RemoteProtocolError, RemoteUnavailable
from edgeinfer.offload.http_transport import HttpTransport
from edgeinfer.protocol.types import InferenceRequest, InferTensor

STATUS = {"/v2/models/ok/infer": 200, "/v2/models/busy/infer": 503}


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        body = b"this is not gzip"
        self.send_response(STATUS.get(self.path, 404))
        self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _request(model: str) -> InferenceRequest:
    x = np.zeros((1, 4), np.float32)
    return InferenceRequest(inputs=[InferTensor.from_array("x", x)], model_name=model)


def test_a_corrupt_compressed_answer_is_a_protocol_error(url: str) -> None:
    transport = HttpTransport(url)
    try:
        with pytest.raises(RemoteProtocolError, match="cannot decode the answer.*not valid gzip"):
            transport.infer(_request("ok"), None, timeout=5)
        with pytest.raises(RemoteUnavailable, match="HTTP 503.*undecodable body"):
            transport.infer(_request("busy"), None, timeout=5)
    finally:
        transport.close()


def test_the_client_asks_only_for_codings_it_can_decode() -> None:
    transport = HttpTransport("http://127.0.0.1:9")
    try:
        assert transport._client.headers["accept-encoding"] == "zstd, gzip, deflate"
    finally:
        transport.close()
