"""A minimal MLServer custom runtime serving an ONNX model with ONNX Runtime.

Used by bench_server.py to compare edgeinfer with Seldon MLServer on the same model file;
the session options match the edgeinfer server's (threads from ``EDGE_BENCH_THREADS``,
spinning off, all graph optimizations).
"""

import os

import numpy as np
import onnxruntime as ort
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


class OnnxRuntime(MLModel):
    async def load(self) -> bool:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(os.environ.get("EDGE_BENCH_THREADS", "1"))
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        self._session = ort.InferenceSession(
            self.settings.parameters.uri, opts, providers=["CPUExecutionProvider"]
        )
        self._outputs = [o.name for o in self._session.get_outputs()]
        self._types = {i.name: i.type for i in self._session.get_inputs()}
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        feeds = {}
        for inp in payload.inputs:
            arr = NumpyCodec.decode_input(inp)
            if self._types.get(inp.name) == "tensor(float)":
                arr = arr.astype(np.float32, copy=False)
            feeds[inp.name] = arr
        results = self._session.run(self._outputs, feeds)
        return InferenceResponse(
            model_name=self.name,
            model_version=self.version,
            outputs=[
                NumpyCodec.encode_output(n, a) for n, a in zip(self._outputs, results, strict=True)
            ],
        )
