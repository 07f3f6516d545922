"""The edge server: the Open Inference Protocol (KServe V2) over REST and gRPC.

Layers, outside in: :mod:`.app` (REST routes) and :mod:`.grpc` (gRPC servicer) decode with
:mod:`edgeinfer.protocol` and call :mod:`.dataplane`, which finds the model in
:mod:`.repository` and queues the request on its :mod:`.batching` batcher, whose
:mod:`.admission` control refuses an overload early (both transports ask it before they read
the request, and every 503 says when to retry); :mod:`.auth`, :mod:`.metrics` and
:mod:`.errors` serve all layers. Generative models get :mod:`.generation`'s batcher
(streams taken in turn in a child process, :mod:`.genproc` and :mod:`.genworker`, or by a
:mod:`.stepper` thread) and the routes of
:mod:`.generate_routes` and :mod:`.openai_routes`. :mod:`.server` runs it (foreground or
background thread); :mod:`.ray` runs it as a Ray Serve deployment.

>>> from edgeinfer.serve import BackgroundServer, ServeConfig
>>> config = ServeConfig(Path("models"), port=0, grpc_port=0)
>>> with BackgroundServer(config) as srv:  # doctest: +SKIP
...     print(srv.url, srv.grpc_target)
"""

from __future__ import annotations

from edgeinfer.serve.config import BatchConfig, ServeConfig
from edgeinfer.serve.server import BackgroundServer, run_server

__all__ = ["BackgroundServer", "BatchConfig", "ServeConfig", "run_server"]
