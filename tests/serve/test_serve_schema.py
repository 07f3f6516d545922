"""Property-based run of the Open Inference Protocol's OpenAPI spec against a real server.

schemathesis generates requests from ``open_inference_rest.yaml`` (valid and invalid) and
checks that no answer is a server error and that every documented answer matches its
schema. Two runs: the spec as written (its paths spell ``${MODEL_NAME}``, so the names it
generates start with ``$`` and are refused), and the spec bound to the real model names so
that generated bodies reach a model. Bounded: a few dozen examples per operation.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serve_helpers as h
import yaml

from edgeinfer.serve import BackgroundServer

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, settings  # noqa: E402
from schemathesis.checks import (  # noqa: E402
    not_a_server_error,
    response_schema_conformance,
)

SPEC = Path(__file__).resolve().parents[3] / "shared/spec/open-inference-protocol"
SPEC_FILE = SPEC / "open_inference_rest.yaml"
if not SPEC_FILE.is_file():  # pragma: no cover - the spec lives beside the repository
    pytest.skip(f"{SPEC_FILE} not found", allow_module_level=True)

pytestmark = pytest.mark.slow
CHECKS = [not_a_server_error, response_schema_conformance]
EXAMPLES = 30


def _bound(raw: dict[str, Any]) -> dict[str, Any]:
    """The spec with ``${X}`` read as ``{X}`` and the path parameters pinned to real models."""
    spec = copy.deepcopy(raw)
    paths = {}
    for path, item in spec["paths"].items():
        for param in item.get("parameters", []):
            if param["name"] == "MODEL_NAME":
                param["schema"] = {"type": "string", "enum": ["mlp", "fixed"]}
            elif param["name"] == "MODEL_VERSION":
                param["schema"] = {"type": "string", "enum": ["1", "2"]}
        paths[path.replace("${", "{")] = item
    spec["paths"] = paths
    return spec


RAW = yaml.safe_load(SPEC_FILE.read_text())
as_written = schemathesis.openapi.from_dict(RAW)
bound = schemathesis.openapi.from_dict(_bound(RAW))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BackgroundServer]:
    root = h.repository(tmp_path_factory.mktemp("repo"))
    with h.running(h.config(root, grpc_port=None)) as srv:
        yield srv


_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)


@as_written.parametrize()
@_SETTINGS
def test_spec_as_written(case: Any, server: BackgroundServer) -> None:
    case.call_and_validate(base_url=server.url, checks=CHECKS)


@bound.parametrize()
@_SETTINGS
def test_spec_bound_to_real_models(case: Any, server: BackgroundServer) -> None:
    case.call_and_validate(base_url=server.url, checks=CHECKS)


def test_server_still_healthy(server: BackgroundServer) -> None:
    import httpx

    assert httpx.get(server.url + "/v2/health/ready").json() == {"ready": True}
    r = httpx.post(server.url + "/v2/models/mlp/infer", json=h.infer_body([[1, 2, 3, 4]]))
    assert r.status_code == 200


@pytest.mark.parametrize(
    ("path", "method", "params", "body"),
    [
        ("/v2/", "GET", {}, None),
        (
            "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}",
            "GET",
            {"MODEL_NAME": "mlp", "MODEL_VERSION": "2"},
            None,
        ),
        (
            "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer",
            "POST",
            {"MODEL_NAME": "mlp", "MODEL_VERSION": "1"},
            h.infer_body([[1.0, 2.0, 3.0, 4.0]], id="42", outputs=[{"name": "probs"}]),
        ),
        (
            "/v2/models/{MODEL_NAME}/versions/{MODEL_VERSION}/infer",
            "POST",
            {"MODEL_NAME": "fixed", "MODEL_VERSION": "1"},
            h.infer_body([[1, 2, 3], [4, 5, 6]], name="a", datatype="INT64"),
        ),
    ],
)
def test_valid_answers_match_the_schema(
    server: BackgroundServer, path: str, method: str, params: dict[str, str], body: Any
) -> None:
    operation = bound[path][method]
    kwargs: dict[str, Any] = {"path_parameters": params}
    if body is not None:
        kwargs["body"] = body
        kwargs["media_type"] = "application/json"
    response = operation.Case(**kwargs).call_and_validate(base_url=server.url, checks=CHECKS)
    assert response.status_code == 200
