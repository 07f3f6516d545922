"""``RemoteModel``: a model on an Open Inference Protocol server, used like a local ``Model``.

It works against ``edgeinfer serve`` and any OIP server (Triton, KServe, MLServer)::

    remote = RemoteModel("http://edge:8000", "digits")             # REST, binary tensors
    remote = RemoteModel("http://mlserver:8080", "m", binary=False)  # MLServer: JSON only
    remote = RemoteModel("grpc://edge:8001", "digits")              # gRPC
    remote.predict(x)["logits"]

Inputs are validated against the server's model metadata (fetched once, on first use)
exactly as :class:`~edgeinfer.runtime.Model` validates them, so a bad input is an
``InputError`` raised here, not a round trip. Answers are checked against the same
metadata (:mod:`.answers`): an answer larger than the outputs can be, or whose outputs do
not match their names, dtypes and shapes, is a failure, never a result. Transport failures are
:class:`~edgeinfer.offload.errors.RemoteError` s; :meth:`RemoteModel.infer` also returns the
call's sizes and timings, which the :class:`~edgeinfer.offload.Offloader` learns from.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from edgeinfer.errors import InputError, MissingDependencyError
from edgeinfer.offload.answers import answer_limit, batch_rows, check_answer
from edgeinfer.offload.errors import RemoteTimeout
from edgeinfer.offload.transport import CallStats, Transport
from edgeinfer.protocol.types import (
    InferenceRequest,
    InferTensor,
    ModelMetadata,
    RequestedOutput,
)
from edgeinfer.tensors import InputValidator, TensorSpec, dtype_from_oip

__all__ = ["RemoteModel", "RemoteResult", "specs_from_metadata"]

TransportName = Literal["http", "grpc"]
_SCHEMES: dict[str, TransportName] = {"http": "http", "https": "http", "grpc": "grpc"}


@dataclass(frozen=True)
class RemoteResult:
    """What one remote call returned: the outputs and how the call went."""

    outputs: dict[str, np.ndarray]
    stats: CallStats


Signature = tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]  # inputs, outputs


def specs_from_metadata(meta: ModelMetadata) -> Signature:
    """Input and output :class:`TensorSpec` s from OIP model metadata (-1 -> dynamic)."""

    def specs(items: Sequence[Any]) -> tuple[TensorSpec, ...]:
        return tuple(
            TensorSpec(
                t.name,
                dtype_from_oip(t.datatype).name,
                tuple(None if d < 0 else d for d in t.shape),
            )
            for t in items
        )

    return specs(meta.inputs), specs(meta.outputs)


def _sum_stats(parts: Sequence[CallStats]) -> CallStats:
    """One call's stats for a batch sent as several requests, one after the other."""

    def total(values: Sequence[float | None]) -> float | None:
        return None if any(v is None for v in values) else sum(v for v in values if v)

    return CallStats(
        seconds=sum(p.seconds for p in parts),
        up_bytes=sum(p.up_bytes for p in parts),
        down_bytes=sum(p.down_bytes for p in parts),
        server_s=total([p.server_s for p in parts]),
        download_s=total([p.download_s for p in parts]),
        streamed_bytes=sum(p.streamed_bytes for p in parts),
        codec_s=sum(p.codec_s for p in parts),
    )


def transport_of(url: str, transport: str | None = None) -> TransportName:
    """The transport a URL names (``grpc://``: gRPC; ``http(s)://``: REST), checked against
    an explicit ``transport``; a bare ``HOST:PORT`` names none, so it needs ``"grpc"``.

    >>> transport_of("grpc://edge:8001")
    'grpc'
    """
    if transport is not None and transport not in ("http", "grpc"):
        raise InputError(f"unknown transport {transport!r}; expected 'http' or 'grpc'")
    scheme, sep, _ = url.partition("://")
    if not sep:  # HOST:PORT, as grpc writes a target
        if transport is None:
            raise InputError(
                f"remote URL {url!r}: expected http://HOST:PORT, https://... or "
                "grpc://HOST:PORT (or transport='grpc' with HOST:PORT)"
            )
        return transport  # type: ignore[return-value]
    named = _SCHEMES.get(scheme.lower())
    if named is None:
        raise InputError(
            f"remote URL {url!r}: unknown scheme {scheme!r}; expected http://, https:// or grpc://"
        )
    if named == "grpc" and transport == "http":
        raise InputError(
            f"remote URL {url!r} is a gRPC address but transport='http'; drop transport= "
            "or give an http:// URL"
        )
    return named if transport is None else transport  # type: ignore[return-value]


def _make_transport(
    url: str,
    transport: str,
    token: str | None,
    binary: bool,
    headers: dict[str, str] | None,
    compress: str | None,
) -> Transport:
    if transport == "http":
        if not url.startswith(("http://", "https://")):
            raise InputError(f"remote URL {url!r}: expected http://HOST:PORT or https://...")
        from edgeinfer.offload.http_transport import HttpTransport

        return HttpTransport(url, token=token, binary=binary, headers=headers, compress=compress)
    if transport == "grpc":
        try:
            from edgeinfer.offload.grpc_transport import GrpcTransport
        except ImportError as exc:  # grpcio is part of the serve extra
            raise MissingDependencyError("grpcio", "serve", "the gRPC transport") from exc
        return GrpcTransport(url, token=token, binary=binary, headers=headers, compress=compress)
    raise InputError(f"unknown transport {transport!r}; expected 'http' or 'grpc'")


class RemoteModel:
    """A model served over the Open Inference Protocol, with ``Model``'s ``predict``.

    ``url``: ``http://HOST:PORT`` (REST) or ``grpc://HOST:PORT`` (gRPC), whose scheme
    picks the ``transport`` (``"http"`` or ``"grpc"``) unless it is given; a bare
    ``HOST:PORT`` with ``transport="grpc"``.
    ``model``/``version``: what to run (``version=None``: the server's choice).
    ``token``: a bearer token. ``binary``: binary tensor data (REST extension, raw gRPC
    contents); ``False`` for plain JSON. ``timeout``: seconds per call unless a call gives
    its own. ``compress``: send requests compressed -- ``"zstd"``, ``"gzip"`` or
    ``"deflate"`` over REST (bodies of 8 KiB and more; check that the server reads it:
    ``edgeinfer serve`` reads all three, Triton gzip and deflate), ``"gzip"`` or
    ``"deflate"`` over gRPC (grpc's own message compression). Pays on slow links.
    """

    def __init__(
        self,
        url: str,
        model: str,
        version: str | int | None = None,
        token: str | None = None,
        transport: TransportName | None = None,
        binary: bool = True,
        timeout: float = 10.0,  # seconds per call
        headers: dict[str, str] | None = None,
        compress: str | None = None,
    ) -> None:
        if not model:
            raise InputError("a remote model needs a model name")
        if timeout <= 0:
            raise InputError(f"timeout {timeout!r} must be > 0 seconds")
        self.url = url.rstrip("/")
        self.name = model
        self.version = None if version is None else str(version)
        self.transport_name: TransportName = transport_of(self.url, transport)
        self.binary = binary
        self.timeout = float(timeout)
        self._token = token
        self._headers = None if headers is None else dict(headers)
        self.compress = compress
        self.transport = _make_transport(
            self.url, self.transport_name, token, binary, headers, compress
        )
        self._meta: ModelMetadata | None = None
        self._validate: InputValidator | None = None
        self._specs: Signature | None = None
        self._lock = threading.Lock()
        self.last_metadata_s: float | None = None  # round trip of the metadata fetch

    def __repr__(self) -> str:
        v = "" if self.version is None else f", version={self.version!r}"
        return f"RemoteModel({self.url!r}, {self.name!r}{v}, transport={self.transport_name!r})"

    def __enter__(self) -> RemoteModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def with_model(self, model: str, version: str | int | None = None) -> RemoteModel:
        """Another model on the same server: same URL, transport, token, headers, encoding,
        compression and timeout (a split tail beside the whole model, say). Its own connection."""
        return RemoteModel(
            self.url, model, version, token=self._token, transport=self.transport_name,
            binary=self.binary, timeout=self.timeout, headers=self._headers,
            compress=self.compress,
        )  # fmt: skip

    # ------------------------------------------------------------ metadata
    def metadata(self, *, refresh: bool = False, timeout: float | None = None) -> ModelMetadata:
        """The server's metadata for this model (cached after the first fetch)."""
        if self._meta is None or refresh:
            start = time.perf_counter()
            meta = self.transport.metadata(self.name, self.version, timeout or self.timeout)
            self.last_metadata_s = time.perf_counter() - start
            specs = specs_from_metadata(meta)
            with self._lock:
                self._meta, self._specs = meta, specs
                self._validate = InputValidator(specs[0])
        return self._meta

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        self.metadata()
        assert self._specs is not None
        return self._specs[0]

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        self.metadata()
        assert self._specs is not None
        return self._specs[1]

    def validate(self, inputs: Any) -> dict[str, np.ndarray]:
        """Check and convert inputs against the server's metadata, as ``predict`` does."""
        if self._validate is None:
            self.metadata()
        assert self._validate is not None
        return self._validate(inputs)

    def ready(self, timeout: float | None = None) -> float:
        """Probe the model's ready endpoint; return the round trip in seconds.

        Raises a :class:`~edgeinfer.offload.errors.RemoteError` if the model is not ready
        or the server cannot be reached. Carries no tensors: a cheap RTT measurement.
        """
        start = time.perf_counter()
        self.transport.ready(self.name, self.version, timeout or self.timeout)
        return time.perf_counter() - start

    # ------------------------------------------------------------ inference
    def infer(
        self,
        inputs: Any,
        outputs: Sequence[str] | None = None,
        *,
        timeout: float | None = None,
        validated: bool = False,
    ) -> RemoteResult:
        """Run the model remotely; return outputs and the call's sizes and timings.

        ``validated=True``: ``inputs`` is already a dict of arrays that fit the model
        (the offloader validates once, locally), so the metadata is not needed.
        """
        if validated:
            if not isinstance(inputs, Mapping):
                raise InputError("validated inputs must be a dict name -> array")
            feeds: Mapping[str, np.ndarray] = inputs
        else:
            feeds = self.validate(inputs)
        start = time.perf_counter()
        limit = timeout or self.timeout
        if self._specs is None:  # the answer is checked against the outputs: know them
            self.metadata(timeout=limit)
        assert self._specs is not None
        specs = self._specs[1]
        if outputs is not None:
            by_name = {s.name: s for s in specs}
            unknown = [n for n in outputs if n not in by_name]
            if unknown:
                raise InputError(
                    f"unknown output(s) {', '.join(map(repr, unknown))}; the model has "
                    f"{', '.join(map(repr, sorted(by_name)))}"
                )
            specs = tuple(by_name[n] for n in outputs)
        rows = batch_rows(feeds)
        cap = self.max_rows
        if cap is None or rows <= cap:
            return self._call(feeds, outputs, specs, start, limit)
        # The server takes at most ``cap`` rows per request (Triton refuses more): send the
        # batch as consecutive requests within the one deadline and join the answers.
        parts = [
            self._call({n: a[i : i + cap] for n, a in feeds.items()}, outputs, specs, start, limit)
            for i in range(0, rows, cap)
        ]
        joined = {
            name: np.concatenate([p.outputs[name] for p in parts]) for name in parts[0].outputs
        }
        return RemoteResult(joined, _sum_stats([p.stats for p in parts]))

    @property
    def max_rows(self) -> int | None:
        """The most rows the server takes per request for this model (its
        ``max_batch_size`` property; None when it does not say or does not batch)."""
        meta = self.metadata()
        try:
            cap = int(meta.properties.get("max_batch_size", "0"))
        except ValueError:
            return None
        return cap if cap > 0 else None

    def _call(
        self,
        feeds: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None,
        specs: tuple[TensorSpec, ...],
        start: float,
        limit: float,
    ) -> RemoteResult:
        request = InferenceRequest(
            inputs=[InferTensor.from_array(n, a) for n, a in feeds.items()],
            outputs=None if outputs is None else [RequestedOutput(n) for n in outputs],
            model_name=self.name,
        )
        left = limit - (time.perf_counter() - start)
        if left <= 0:
            raise RemoteTimeout(
                f"no time left for the call ({limit:.3g} s, metadata included)", url=self.url
            )
        response, stats = self.transport.infer(
            request, self.version, left, max_bytes=answer_limit(specs, batch_rows(feeds))
        )
        return RemoteResult(check_answer(response.arrays(), specs, self.url), stats)

    def predict(self, inputs: Any, outputs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
        """Run the model on the server; same contract as :meth:`Model.predict`."""
        return self.infer(inputs, outputs).outputs

    def close(self) -> None:
        self.transport.close()
