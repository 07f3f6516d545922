"""What a server is told: where the models are, how to listen, batch, limit and protect.

Plain frozen dataclasses with units in the comments; the CLI and the Python entry points
build them, everything else only reads them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgeinfer.errors import InputError
from edgeinfer.protocol import coding
from edgeinfer.protocol.limits import Limits

__all__ = ["BatchConfig", "ServeConfig"]


@dataclass(frozen=True)
class BatchConfig:
    """Dynamic batching and backpressure, per model.

    Requests are coalesced only for models whose first dimension is dynamic in every input
    and output. ``max_queue_delay_us=0`` batches what is already waiting and never holds a
    lone request back (requests pile up while every instance is busy, so batches form under
    load anyway); a positive delay trades latency for fuller batches.
    """

    max_batch_size: int = 8  # rows per model run; 1 disables batching
    max_queue_delay_us: int = 0  # microseconds to wait for more requests after the first
    max_queue_size: int = 64  # requests waiting per model; one more is refused with 503
    queue_timeout_s: float = 5.0  # seconds a request may wait in the queue, then 503
    instances: int = 1  # model runs in flight at once, each on its own thread
    # A batch the model has lately run in less than this (microseconds) runs on the event
    # loop instead of the model's thread: handing a run to a thread and back costs more than
    # that in thread switches (serve/batching.py). 0: always on the thread.
    inline_compute_us: int = 100
    # Generative models: their generations run in child processes of the server (one per
    # instance), so that the tokens being computed do not hold up the server's other
    # requests; False: on threads of the server's own process (ADR 0016).
    generation_process: bool = True

    def __post_init__(self) -> None:
        if self.max_batch_size < 1 or self.max_queue_size < 1 or self.instances < 1:
            raise ValueError("max_batch_size, max_queue_size and instances must be >= 1")
        if self.max_queue_delay_us < 0 or self.queue_timeout_s <= 0:
            raise ValueError("max_queue_delay_us must be >= 0 and queue_timeout_s > 0")
        if self.inline_compute_us < 0:
            raise ValueError("inline_compute_us must be >= 0 (0: never run on the event loop)")
        if not isinstance(self.generation_process, bool):
            raise ValueError("generation_process must be true or false")


@dataclass(frozen=True)
class ServeConfig:
    """A server's whole configuration."""

    repository: Path | None  # MODEL_REPOSITORY/<name>/<version>/{bundle | model.onnx}
    host: str = "127.0.0.1"
    port: int = 8000  # REST; 0 picks a free port
    grpc_port: int | None = 8001  # None: no gRPC; 0 picks a free port
    tokens: tuple[str, ...] = ()  # bearer tokens for inference and metadata; () = open
    admin_tokens: tuple[str, ...] = ()  # bearer tokens for repository control; () = disabled
    limits: Limits = field(default_factory=Limits)
    # REST answers at least this long are compressed when the client's Accept-Encoding asks
    # (zstd, gzip or deflate); None: never. Request bodies are decoded per Content-Encoding.
    compress_min_bytes: int | None = coding.MIN_BYTES
    batching: BatchConfig = field(default_factory=BatchConfig)
    poll_interval_s: float | None = 2.0  # seconds between repository scans; None: no reload
    threads: int | None = None  # ONNX Runtime intra-op threads per model (None: default)
    providers: str | tuple[str, ...] = "cpu"  # execution providers for the models
    ssl_keyfile: str | None = None  # TLS for REST (uvicorn); both or neither
    ssl_certfile: str | None = None
    server_name: str = "edgeinfer"
    replica_id: str | None = None  # sent as the x-edgeinfer-replica header when set
    # update agents' state dirs: each serves its committed bundle, swapped in on each commit
    # (seen at the next repository scan, so it needs poll_interval_s)
    follow: tuple[Path, ...] = ()
    # After models (re)load, hand the heap to gc.freeze() so that the garbage collector's
    # full collections, which otherwise scan every long-lived object (a 9-12 ms pause of the
    # whole process with one model loaded), stop stalling requests. It acts on the whole
    # process: the CLI, which owns its process, turns it on; an embedding program decides.
    freeze_heap: bool = False
    # The GIL switch interval (sys.setswitchinterval) while the server runs, in seconds; None
    # leaves the process's own (Python's default is 5 ms). The inference threads need the GIL
    # for a moment to hand every batch back, and while the event loop is busy -- refusing an
    # overload, say -- each such moment waits out a whole interval. Process-wide, like
    # freeze_heap: the CLI sets 0.1 ms, an embedding program decides.
    switch_interval_s: float | None = None
    # What a REST client may send before the application sees its request, and for how long
    # (edgeinfer/_http.py). Beyond a limit the server answers 431, 408 or 503 and closes.
    max_header_bytes: int = 16384  # bytes: request line and headers of one request
    max_headers: int = 100  # header fields in one request
    # seconds from a connection's start (on a kept-alive one: from a request's first byte)
    # to the end of the request's headers
    header_timeout_s: float = 60.0
    # seconds from the end of the headers to the end of the body, plus one second per
    # min_body_rate bytes received (so a large body on a slow link is not cut)
    body_timeout_s: float = 60.0
    min_body_rate: float = 1024.0  # bytes per second
    # REST connections served at once; one more is answered 503 and closed. None: no cap
    # (keep it below the process's open-file limit, ulimit -n).
    max_connections: int | None = 1000
    # gRPC connections (serve/_grpc_listener.py) share max_connections and header_timeout_s
    # (for the HTTP/2 preface and settings); beyond these, grpc closes or refuses.
    grpc_max_streams: int = 100  # calls in flight on one gRPC connection (HTTP/2 streams)
    grpc_idle_timeout_s: float = 300.0  # seconds a gRPC connection with no call stays open

    def __post_init__(self) -> None:
        if self.compress_min_bytes is not None and self.compress_min_bytes < 0:
            raise InputError(
                f"compress_min_bytes {self.compress_min_bytes} must be >= 0 bytes "
                "(None: never compress answers)"
            )
        if self.switch_interval_s is not None and not 0 < self.switch_interval_s <= 1:
            raise InputError(
                f"switch_interval_s {self.switch_interval_s} must be > 0 and <= 1 second "
                "(None: leave the process's GIL switch interval as it is)"
            )
        if self.max_header_bytes < 256 or self.max_headers < 1:
            raise InputError(
                f"max_header_bytes {self.max_header_bytes} and max_headers {self.max_headers}: "
                "expected at least 256 bytes and 1 field"
            )
        if self.grpc_max_streams < 1:
            raise InputError(f"grpc_max_streams {self.grpc_max_streams} must be >= 1")
        for name in ("header_timeout_s", "body_timeout_s", "min_body_rate", "grpc_idle_timeout_s"):
            if not getattr(self, name) > 0:
                raise InputError(f"{name} {getattr(self, name)} must be > 0")
        if self.max_connections is not None and self.max_connections < 1:
            raise InputError(f"max_connections {self.max_connections} must be >= 1 (None: no cap)")
        if not 0 <= self.port <= 65535:
            raise InputError(f"port {self.port} is out of range; expected 0-65535 (0: any free)")
        if self.grpc_port is not None and not 0 <= self.grpc_port <= 65535:
            raise InputError(
                f"grpc_port {self.grpc_port} is out of range; expected 0-65535 "
                "(0: any free port) or None to run without gRPC"
            )
