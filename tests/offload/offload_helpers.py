"""Models and running servers for the offloading tests (real parts only)."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edgeinfer.serve import BackgroundServer, ServeConfig

IR_VERSION = 9


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=IR_VERSION
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    return path


def mlp(path: Path, seed: int = 1) -> Path:
    """x: float32 [N, 4] -> logits: float32 [N, 3] (a MatMul and a Relu)."""
    w = np.random.default_rng(seed).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["logits"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(graph, path)


def two_output_mlp(path: Path) -> Path:
    """x: float32 [N, 4] -> logits: float32 [N, 3], probs: float32 [N, 3]."""
    w = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
        ],
        "two",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [
            helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 3]),
        ],
        [numpy_helper.from_array(w, "w")],
    )
    return _save(graph, path)


@dataclass
class Served:
    """A running server: its REST URL, gRPC target and where its models are."""

    server: BackgroundServer
    repo: Path

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def address(self) -> str:
        return self.server.url.split("//", 1)[1]

    @property
    def grpc_url(self) -> str:
        return f"grpc://{self.server.grpc_target}"

    def infer_count(self, model: str = "mlp") -> int:
        """Inference requests the server has seen for ``model`` (from its /metrics)."""
        text = httpx.get(self.url + "/metrics", headers=self._auth()).text
        pattern = re.compile(rf'^edgeinfer_requests_total\{{[^}}]*model="{model}"[^}}]*\}} (\S+)$')
        return int(sum(float(m.group(1)) for line in text.splitlines()
                       if (m := pattern.match(line))))  # fmt: skip

    def _auth(self) -> dict[str, str]:
        tokens = self.server.config.tokens
        return {"Authorization": f"Bearer {tokens[0]}"} if tokens else {}

    def admin(self, action: str, model: str = "mlp") -> None:
        """Unload or load ``model`` through the repository API (needs an admin token)."""
        token = self.server.config.admin_tokens[0]
        r = httpx.post(
            f"{self.url}/v2/repository/models/{model}/{action}",
            headers={"Authorization": f"Bearer {token}"},
        )
        r.raise_for_status()


@contextlib.contextmanager
def serve_repository(repo: Path, **config: object) -> Iterator[Served]:
    cfg = ServeConfig(repo, port=0, grpc_port=0, poll_interval_s=None, **config)  # type: ignore[arg-type]
    with BackgroundServer(cfg) as server:
        yield Served(server, repo)
