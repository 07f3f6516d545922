"""Regenerate the gRPC stubs in this folder from ``open_inference_grpc.proto``.

Run from anywhere, with grpcio-tools installed::

    python -m edgeinfer.protocol.pb.generate

The proto is the Open Inference Protocol's own, unchanged: package ``inference``, service
``inference.GRPCInferenceService``, the name Triton's and KServe's clients call. Two edits
are made to what ``grpc_tools.protoc`` writes:

* the messages are registered in a private descriptor pool instead of protobuf's default
  one, so these stubs load in the same process as other ``inference.*`` stubs (Triton's
  ``tritonclient.grpc`` registers the same message names; the default pool refuses a
  second definition);
* the service module imports the messages relatively, as a package member.

Both files get headers that keep linters and formatters off generated code.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTO = "open_inference_grpc.proto"
HEADER = "# ruff: noqa\n# fmt: off\n# mypy: ignore-errors\n"


def main() -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"--python_out={HERE}",
            f"--grpc_python_out={HERE}",
            f"--pyi_out={HERE}",
            PROTO,
        ],
        check=True,
    )
    pb2 = HERE / "open_inference_grpc_pb2.py"
    text = pb2.read_text()
    text = text.replace(
        "DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(",
        "POOL = _descriptor_pool.DescriptorPool()  # private: see generate.py\n"
        "DESCRIPTOR = POOL.AddSerializedFile(",
    )
    if "POOL = _descriptor_pool.DescriptorPool()" not in text:
        raise SystemExit("protoc output changed: could not switch to a private pool")
    pb2.write_text(HEADER + text)
    grpc_mod = HERE / "open_inference_grpc_pb2_grpc.py"
    text = re.sub(
        r"^import open_inference_grpc_pb2 as",
        "from . import open_inference_grpc_pb2 as",
        grpc_mod.read_text(),
        flags=re.M,
    )
    grpc_mod.write_text(HEADER + text)
    pyi = HERE / "open_inference_grpc_pb2.pyi"
    pyi.write_text(HEADER + pyi.read_text())


if __name__ == "__main__":
    main()
