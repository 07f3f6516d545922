"""The dataplane: what the server does, independent of REST or gRPC.

The REST routes (:mod:`edgeinfer.serve.app`) and the gRPC servicer
(:mod:`edgeinfer.serve.grpc`) decode a message with the protocol codecs, call one method
here, and encode the answer; errors are exceptions mapped to a status in one place
(:func:`edgeinfer.serve.errors.error_status`). Nothing here knows about HTTP or protobuf.

On the wire a request is held to what the model declares, as Triton does: each input's
datatype must be the model's (the local :meth:`Model.predict` still converts, since its caller
is trusted), and a model that batches takes at most ``max_batch_size`` rows per request (the
number its metadata advertises). Together they bound what one request can make the server
hold: :meth:`DataPlane.request_limits` turns the signature at that many rows into a body
limit that the transports apply before they read, inflate or parse a request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import logging
import time
from typing import Any, NamedTuple

from edgeinfer._version import __version__
from edgeinfer.errors import InputError
from edgeinfer.protocol.limits import Limits, body_bound
from edgeinfer.protocol.types import (
    InferenceRequest,
    InferenceResponse,
    InferTensor,
    ModelMetadata,
    ServerMetadata,
    TensorMetadata,
)
from edgeinfer.runtime.model import Model
from edgeinfer.serve.batching import Batcher, Timing
from edgeinfer.serve.config import BatchConfig, ServeConfig
from edgeinfer.serve.errors import BadRequest
from edgeinfer.serve.generation import GenerationBatcher, is_generative
from edgeinfer.serve.metrics import UNKNOWN_MODEL, Metrics
from edgeinfer.serve.repository import (
    LoadedVersion,
    ModelRepository,
    check_model_name,
    check_version,
)
from edgeinfer.tensors import DTYPES, format_shape

__all__ = ["EXTENSIONS", "DataPlane", "RequestLimits", "max_rows"]

log = logging.getLogger(__name__)

EXTENSIONS = (
    "binary_tensor_data",
    "model_repository",
    "metrics",
    "dynamic_batching",
    "generate",
)
_PLATFORMS = {"onnxruntime": "onnxruntime_onnx", "litert": "tensorflow_tflite"}


def _metadata_tensors(specs: Any) -> tuple[TensorMetadata, ...]:
    return tuple(TensorMetadata(s.name, DTYPES[s.dtype].oip, tuple(s.oip_shape())) for s in specs)


def max_rows(loaded: LoadedVersion) -> int | None:
    """The most rows one request may carry: ``max_batch_size`` for a model that batches
    (what its metadata advertises), ``None`` for one that does not (metadata says 0)."""
    batcher = loaded.batcher
    return batcher.config.max_batch_size if batcher.batching else None


def _input_values(model: Model, rows: int | None) -> int | None:
    """The values all of ``model``'s inputs hold at ``rows`` rows; ``None`` when the signature
    sets no bound (a dynamic dimension besides the batch, a BYTES input)."""
    total = 0
    for spec in model.inputs:
        if spec.shape is None or spec.dtype == "bytes":
            return None
        n = 1
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                n *= dim
            elif axis == 0 and rows is not None:
                n *= rows
            else:
                return None
        total += n
    return total


class RequestLimits(NamedTuple):
    """The limits one request for a model is read under, and where the body limit comes from."""

    limits: Limits
    why: str  # says where limits.max_body_bytes comes from, for a refusal's message


class DataPlane:
    """Health, metadata and inference over a :class:`ModelRepository`."""

    def __init__(self, config: ServeConfig, metrics: Metrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or Metrics()
        self.version = __version__
        self.repository = ModelRepository(
            config.repository,
            self._make_batcher,
            config.batching,
            threads=config.threads,
            providers=config.providers,
            on_change=self._on_change,
            follow=config.follow,
        )
        self._started: asyncio.Task[None] | None = None
        self._poller: asyncio.Task[None] | None = None
        self._settle_due = False  # a settle_heap() is scheduled
        # request_limits per loaded version (by id, with the version to tell a reused id);
        # emptied at every repository change, so it holds no version that is gone
        self._limits: dict[int, tuple[LoadedVersion, RequestLimits]] = {}

    def _make_batcher(self, model: Model, name: str, batching: BatchConfig) -> Batcher:
        if is_generative(model):  # a language model: generations, not batches
            return GenerationBatcher(model, name, batching, self.metrics, self.config.threads)
        return Batcher(model, name, batching, self.metrics)

    def _on_change(self, name: str, version: int, ready: bool) -> None:
        self._limits.clear()
        self.metrics.model_ready.labels(name, str(version)).set(1 if ready else 0)
        if self.config.freeze_heap and not self._settle_due:
            self._settle_due = True  # once, after the rest of this change has run
            asyncio.get_running_loop().call_soon(self.settle_heap)

    def settle_heap(self) -> None:
        """With ``config.freeze_heap``: collect what the last (re)load left behind, then
        freeze what remains (``gc.freeze``), so that later full collections skip the models,
        libraries and app objects that live as long as the process. One pause now, at a
        repository change, instead of one every few thousand requests while serving."""
        self._settle_due = False
        if not self.config.freeze_heap:
            return
        start = time.perf_counter()
        gc.unfreeze()  # what a dropped model left in the frozen heap is garbage again
        gc.collect()
        gc.freeze()
        log.debug(
            "heap settled in %.1f ms; %d objects frozen",
            (time.perf_counter() - start) * 1e3,
            gc.get_freeze_count(),
        )

    # ------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Load the repository and start watching it (idempotent, safe to race)."""
        if self._started is None:
            self._started = asyncio.get_running_loop().create_task(self._start())
        await asyncio.shield(self._started)

    async def _start(self) -> None:
        await self.repository.refresh()
        if self.config.poll_interval_s:
            self._poller = asyncio.get_running_loop().create_task(self._poll())

    async def _poll(self) -> None:
        interval = self.config.poll_interval_s or 1.0
        while True:
            await asyncio.sleep(interval)
            try:
                await self.repository.refresh()
            except Exception:  # keep serving what is loaded; try again next time
                log.exception("repository scan failed")

    async def stop(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.gather(self._poller, return_exceptions=True)
        await self.repository.close()

    # ------------------------------------------------------------ health and metadata
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        return self.repository.all_ready()

    def server_metadata(self) -> ServerMetadata:
        return ServerMetadata(self.config.server_name, self.version, EXTENSIONS)

    def resolve(self, name: str, version: str | None = None) -> LoadedVersion:
        """The loaded version for a request's model name and version (checked)."""
        return self.repository.get(check_model_name(name), check_version(version))

    def model_ready(self, name: str, version: str | None = None) -> bool:
        self.resolve(name, version)  # raises ModelNotFound / ModelNotReady
        return True

    def model_metadata(self, name: str, version: str | None = None) -> ModelMetadata:
        loaded = self.resolve(name, version)
        model = loaded.model
        props = {
            "max_batch_size": str(
                loaded.batcher.config.max_batch_size if loaded.batcher.batching else 0
            )
        }
        if isinstance(loaded.batcher, GenerationBatcher):
            props.update(loaded.batcher.properties())
        return ModelMetadata(
            name=loaded.name,
            platform=_PLATFORMS.get(model.backend.name, model.backend.name),
            inputs=_metadata_tensors(model.inputs),
            outputs=_metadata_tensors(model.outputs),
            versions=tuple(str(v) for v in self.repository.versions(loaded.name)),
            properties=props,
        )

    def request_limits(self, name: str, version: str | None = None) -> RequestLimits:
        """The limits to read a request for this model under: the server's, with the body
        limit lowered to what the model's inputs can need at :func:`max_rows` rows."""
        loaded = self.resolve(name, version)
        cached = self._limits.get(id(loaded))
        if cached is not None and cached[0] is loaded:
            return cached[1]
        limits = self.config.limits
        rows = max_rows(loaded)
        bound = body_bound(_input_values(loaded.model, rows), limits)
        if bound >= limits.max_body_bytes:
            found = RequestLimits(limits, "the server's limit")
        else:
            at = f"at max_batch_size {rows}" if rows is not None else "at their fixed shapes"
            found = RequestLimits(
                dataclasses.replace(limits, max_body_bytes=bound),
                f"the most a request for model {loaded.name!r} can need, its inputs {at}",
            )
        self._limits[id(loaded)] = (loaded, found)
        return found

    def metrics_label(self, name: str) -> str:
        """The model label for metrics: the name if the repository knows it."""
        return name if self.repository.is_known(name) else UNKNOWN_MODEL

    # ------------------------------------------------------------ inference
    def admit(self, name: str, version: str | None = None, timeout_s: float | None = None) -> None:
        """Refuse at once, before the request is read, when its model is overloaded.

        Raises :class:`~edgeinfer.serve.errors.QueueFull` (with ``retry_after_s``) when the
        model's queue is full or could not start the request within its queue timeout
        (``timeout_s``: the caller's deadline, when it has one); the errors of
        :meth:`resolve` for a bad or unknown model.
        """
        batcher = self.resolve(name, version).batcher
        if isinstance(batcher, GenerationBatcher):
            raise batcher.infer_refusal()  # before its body is read: /infer cannot run it
        batcher.admit(timeout_s)

    async def infer(
        self, request: InferenceRequest, timeout_s: float | None = None
    ) -> InferenceResponse:
        """Run one request through the model's queue; the request names model and version.

        ``timeout_s``: the transport's deadline (a gRPC client's), if any; the request's
        ``timeout`` parameter and the model's queue timeout cap the wait too.
        """
        return (await self.infer_timed(request, timeout_s))[0]

    async def infer_timed(
        self, request: InferenceRequest, timeout_s: float | None = None
    ) -> tuple[InferenceResponse, Timing]:
        """:meth:`infer`, and how long the request queued and the model ran (``Server-Timing``)."""
        loaded = self.resolve(request.model_name, request.model_version or None)
        if isinstance(loaded.batcher, GenerationBatcher):
            raise loaded.batcher.infer_refusal()
        model = loaded.model
        self._check_contract(loaded, request)
        try:
            feeds = model.validate(request.arrays())
        except InputError as exc:
            raise BadRequest(f"model {loaded.name!r}: {exc}") from None
        names = request.output_names
        if names is not None:
            known = {s.name for s in model.outputs}
            unknown = [n for n in names if n not in known]
            if unknown or len(set(names)) != len(names):
                raise BadRequest(
                    f"model {loaded.name!r}: requested outputs {names} must be distinct "
                    f"names among {sorted(known)}"
                )
        timeout = self._timeout(request)
        if timeout_s is not None:
            timeout = timeout_s if timeout is None else min(timeout, timeout_s)
        outputs, timing = await loaded.batcher.infer(feeds, names, timeout)
        response = InferenceResponse(
            model_name=loaded.name,
            model_version=str(loaded.version),
            id=request.id,
            outputs=[InferTensor.from_array(n, a) for n, a in outputs.items()],
        )
        return response, timing

    @staticmethod
    def _check_contract(loaded: LoadedVersion, request: InferenceRequest) -> None:
        """Each input's declared datatype is the model's, and the batch is within
        ``max_batch_size``: refused before anything is converted, queued or run."""
        specs = {s.name: s for s in loaded.model.inputs}
        limit = max_rows(loaded)
        for tensor in request.inputs:
            spec = specs.get(tensor.name)
            if spec is None:
                continue  # validation names the inputs that are missing or unknown
            expected = DTYPES[spec.dtype].oip
            if tensor.datatype != expected:
                raise BadRequest(
                    f"model {loaded.name!r}: input {tensor.name!r} is declared {tensor.datatype},"
                    f" but the model expects {expected}; send {expected} data"
                )
            shape = tensor.data.shape
            if limit is not None and shape and shape[0] > limit:
                raise BadRequest(
                    f"model {loaded.name!r}: input {tensor.name!r} has {shape[0]} rows "
                    f"(shape {format_shape(shape)}), more than its max_batch_size of {limit}; "
                    f"send at most {limit} rows per request"
                )

    def _timeout(self, request: InferenceRequest) -> float | None:
        """The request's ``timeout`` parameter (microseconds, as Triton) caps the queue wait."""
        value = request.parameters.get("timeout")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise BadRequest("parameter 'timeout' must be a positive integer (microseconds)")
        return value / 1e6  # the batcher applies the model's own queue timeout too
