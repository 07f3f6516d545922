"""Serving generative models: the generate extension (JSON and server-sent events) and the
OpenAI-compatible routes, on the tiny language model served for real on 127.0.0.1.

Two models: ``tiny-llm`` (the session's tiny bundle) and ``long``, the same weights with
their rotary tables stretched to a context of 4096 tokens, so that a generation lasts long
enough (a second or more) to be watched running, interrupted and shared.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import openai
import pytest
import serve_helpers as h
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import numpy_helper

from edgeinfer.bundle import Bundle
from edgeinfer.generate import GenerativeModel, create_bundle, load
from edgeinfer.serve import BatchConfig

TOKEN = "gen-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PROMPT = "the quick brown"
LONG_CONTEXT = 4096


def stretch_context(src: Path, out: Path, context: int) -> Path:
    """A copy of a genai model directory whose rotary tables (and stated context) reach
    ``context`` positions: the same model, able to generate for longer."""
    shutil.copytree(src, out)
    model = onnx.load(out / "model.onnx")
    tables = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    cos, sin = tables["cos_cache"], tables["sin_cache"]
    freq = np.arctan2(sin[1].astype(np.float64), cos[1].astype(np.float64))
    angles = np.arange(context, dtype=np.float64)[:, None] * freq[None, :]
    for init in model.graph.initializer:
        if init.name in ("cos_cache", "sin_cache"):
            table = np.cos(angles) if init.name == "cos_cache" else np.sin(angles)
            init.CopyFrom(numpy_helper.from_array(table.astype(np.float32), init.name))
    (out / "model.onnx.data").unlink()
    onnx.save(model, out / "model.onnx", save_as_external_data=True, location="model.onnx.data")
    config = json.loads((out / "genai_config.json").read_text())
    config["model"]["context_length"] = context
    (out / "genai_config.json").write_text(json.dumps(config))
    return out


@pytest.fixture(scope="module")
def repo(tiny_bundle: Bundle, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("gen-repo")
    shutil.copytree(tiny_bundle.path, root / "tiny-llm" / "1")
    long_dir = stretch_context(tiny_dir, root.parent / "long-model", LONG_CONTEXT)
    create_bundle(
        long_dir,
        root / "long" / "1",
        name="long",
        golden_prompts=(PROMPT,),
        golden_max_tokens=4,
        quantization={"precision": "fp32"},
    )
    # three generations at once, one more waits; the next is refused
    (root / "long" / "config.json").write_text(
        json.dumps({"max_batch_size": 3, "max_queue_size": 1, "queue_timeout_s": 30.0})
    )
    h.mlp(root / "mlp" / "1" / "model.onnx")
    return root


@pytest.fixture(scope="module")
def long_model(repo: Path) -> Iterator[GenerativeModel]:
    with load(repo / "long" / "1", threads=1) as model:
        yield model


@pytest.fixture(scope="module")
def server(repo: Path) -> Iterator[Any]:
    cfg = h.config(repo, tokens=(TOKEN,), batching=BatchConfig(max_batch_size=4))
    with h.running(cfg) as srv:
        yield srv


@pytest.fixture
def client(server: Any) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        yield c


@pytest.fixture
def oai(server: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key=TOKEN, max_retries=0)


def events(response: httpx.Response) -> Iterator[Any]:
    """The JSON (or ``[DONE]``) of each server-sent event of a streaming answer."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            yield data if data == "[DONE]" else json.loads(data)
        else:
            assert line == "", f"not SSE framing: {line!r}"


def stream_events(client: httpx.Client, model: str, body: dict[str, Any]) -> list[Any]:
    url = f"/v2/models/{model}/generate_stream"
    with client.stream("POST", url, json=body) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["server-timing"].startswith("queue;dur=")
        return list(events(r))


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    text = client.get("/metrics").text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            got = line[len(name) + 1 : line.index("}")]
            if ",".join(sorted(got.split(","))) == want:
                return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---------------------------------------------------------------- the generate extension
def test_generate_gives_the_local_greedy_tokens(
    client: httpx.Client, tiny: GenerativeModel
) -> None:
    local = tiny.generate(PROMPT, max_tokens=20)
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 20, "temperature": 0}}
    r = client.post("/v2/models/tiny-llm/generate", json=body)
    assert r.status_code == 200, r.text
    assert r.json() == {
        "model_name": "tiny-llm",
        "model_version": "1",
        "text_output": local.text,
        "token_ids": list(local.token_ids),
        "finish_reason": "max_tokens",
    }
    timing = r.headers["server-timing"]
    assert "queue;dur=" in timing and "ttft;dur=" in timing and "compute;dur=" in timing


def test_input_ids_continue_a_generation_token_for_token(
    client: httpx.Client, tiny: GenerativeModel
) -> None:
    prompt = tiny.prompt_ids(PROMPT)
    whole = tiny.generate(PROMPT, max_tokens=20).token_ids
    params = {"max_tokens": 13, "top_k": None, "stop": None}  # null: the default
    body = {"input_ids": prompt + list(whole[:7]), "parameters": params}
    r = client.post("/v2/models/tiny-llm/versions/1/generate", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["token_ids"] == list(whole[7:])


def test_generate_stream_sends_each_piece_with_its_token_ids(
    client: httpx.Client, tiny: GenerativeModel
) -> None:
    with tiny.stream(PROMPT, max_tokens=30, stop=["lazy"]) as local:
        pieces = list(local)
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 30, "stop": ["lazy"]}}
    got = stream_events(client, "tiny-llm", body)
    assert all(e["model_name"] == "tiny-llm" and e["model_version"] == "1" for e in got)
    assert "finish_reason" not in got[0] and got[-1]["finish_reason"] == "stop"
    assert [e["text_output"] for e in got if e["text_output"]] == pieces
    assert local.result is not None
    assert [t for e in got for t in e["token_ids"]] == list(local.result.token_ids)


def test_a_generative_model_is_listed_and_described(client: httpx.Client) -> None:
    index = client.post("/v2/repository/index").json()
    assert {"name": "tiny-llm", "version": "1", "state": "READY"} in index
    meta = client.get("/v2/models/tiny-llm").json()
    assert meta["platform"] == "onnxruntime-genai"
    assert meta["properties"]["kind"] == "generative"
    assert meta["properties"]["context_length"] == "128"
    assert "generate" in client.get("/v2").json()["extensions"]


# ---------------------------------------------------------------- OpenAI's client
def test_openai_completions_whole_and_streamed(oai: openai.OpenAI, tiny: GenerativeModel) -> None:
    local = tiny.generate(PROMPT, max_tokens=12)
    done = oai.completions.create(model="tiny-llm", prompt=PROMPT, max_tokens=12, temperature=0)
    assert done.choices[0].text == local.text
    assert done.choices[0].finish_reason == "length"
    assert done.usage is not None
    assert (done.usage.prompt_tokens, done.usage.completion_tokens) == (local.prompt_tokens, 12)
    chunks = list(
        oai.completions.create(
            model="tiny-llm", prompt=PROMPT, max_tokens=12, temperature=0, stream=True
        )
    )
    assert "".join(c.choices[0].text for c in chunks) == local.text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_openai_chat_goes_through_the_chat_template(
    oai: openai.OpenAI, tiny: GenerativeModel
) -> None:
    messages: Any = [{"role": "user", "content": "the quick"}]
    local = tiny.generate(messages, max_tokens=10)
    done = oai.chat.completions.create(
        model="tiny-llm", messages=messages, max_tokens=10, temperature=0
    )
    assert done.choices[0].message.content == local.text
    assert done.choices[0].message.role == "assistant"
    stream = oai.chat.completions.create(
        model="tiny-llm",
        messages=messages,
        max_tokens=10,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == local.text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 10
    assert [m.id for m in oai.models.list()] == ["long", "tiny-llm"]  # not the mlp


def test_openai_streams_end_with_done(client: httpx.Client) -> None:
    body = {"model": "tiny-llm", "prompt": PROMPT, "max_tokens": 4, "stream": True}
    body |= {"temperature": 0, "top_p": None}  # greedy: no end-of-sequence in 4 tokens
    with client.stream("POST", "/v1/completions", json=body) as r:
        got = list(events(r))
    assert got[-1] == "[DONE]" and got[-2]["choices"][0]["finish_reason"] == "length"


# ---------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    ("path", "body", "match"),
    [
        ("generate", {"text_input": PROMPT, "parameters": {"max_tokens": -1}}, "max_tokens -1"),
        ("generate", {"text_input": PROMPT, "parameters": {"temperature": -0.5}}, "temperature"),
        ("generate", {"text_input": PROMPT, "parameters": {"max_tokens": "8"}}, "max_tokens '8'"),
        ("generate", {"text_input": PROMPT, "parameters": {"stop": 3}}, "stop must be"),
        ("generate", {"text_input": PROMPT, "parameters": {"beams": 2}}, "unknown"),
        ("generate", {"text_input": PROMPT, "parameters": {"stop": ["a", 1]}}, "stop"),
        ("generate", {"text_input": PROMPT, "parameters": {"seed": -1}}, "seed -1"),
        ("generate", {"text_input": PROMPT, "parameters": {"seed": 2**40}}, "from 0 to"),
        ("generate", {"text_input": PROMPT, "parameters": {"top_k": 1.5}}, "top_k 1.5"),
        ("generate", {"text_input": PROMPT, "parameters": [8]}, "parameters must be an object"),
        ("generate", [PROMPT], "must be a JSON object"),
        ("generate", {"text_input": 5}, "text_input must be a string"),
        ("generate", {"input_ids": [1, "2"]}, "input_ids must be"),
        ("generate", {"input_ids": [1, 100000]}, r"in \[0, 300\)"),
        ("generate", {"text_input": "x", "input_ids": [1]}, "not both"),
        ("generate", {"prompt": PROMPT}, "unknown field"),
        ("generate", {"text_input": "the quick brown fox " * 60}, "context of 128 tokens"),
        ("generate_stream", {"text_input": ""}, "prompt is empty"),
        ("generate_stream", {"text_input": PROMPT, "parameters": {"top_p": 0}}, "top_p"),
        ("infer", h.infer_body([[1, 2, 3]], "input_ids", "INT64"), "/generate"),
    ],
)
def test_bad_generate_requests_are_one_line_400s(
    client: httpx.Client, path: str, body: dict[str, Any], match: str
) -> None:
    r = client.post(f"/v2/models/tiny-llm/{path}", json=body)
    assert r.status_code == 400, r.text
    message = r.json()["error"]
    assert "\n" not in message
    assert re.search(match, message), message


_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner),
    max_leaves=5,
)
_PARAMS = st.dictionaries(
    st.sampled_from(["max_tokens", "temperature", "top_p", "top_k", "stop", "seed", "n"]),
    _JSON | st.integers(0, 300) | st.floats(0, 2),
    max_size=4,
)
_GENERATE = st.fixed_dictionaries(
    {},
    optional={
        "text_input": _JSON | st.text(max_size=40),
        "input_ids": st.lists(st.integers(-2, 320), max_size=6) | _JSON,
        "parameters": _PARAMS | _JSON,
        "extra": _JSON,
    },
)
_OPENAI = st.fixed_dictionaries(
    {"model": st.sampled_from(["tiny-llm", "mlp", "nope"]) | _JSON},
    optional={
        "prompt": st.text(max_size=30) | st.lists(st.integers(-2, 320), max_size=4) | _JSON,
        "messages": st.lists(
            st.fixed_dictionaries(
                {"role": st.sampled_from(["user", "system", "robot"]) | _JSON},
                optional={"content": st.text(max_size=20) | _JSON},
            ),
            max_size=3,
        )
        | _JSON,
        "max_tokens": st.integers(-2, 200) | _JSON,
        "temperature": st.floats(-1, 3) | _JSON,
        "stream": st.booleans() | _JSON,
        "stream_options": _JSON,
        "n": _JSON,
    },
)
_FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)


_JSON_TYPE = {"content-type": "application/json"}


def _encoded(body: Any) -> bytes:
    """The body as Python's json writes it: infinities as the bare words Infinity and
    -Infinity, which are not JSON (httpx's own encoder refuses to send them)."""
    return json.dumps(body).encode()


def _no_server_error(r: httpx.Response) -> None:
    assert r.status_code in (200, 400, 404), r.text
    if r.status_code != 200:
        error = r.json()["error"]
        message = error["message"] if isinstance(error, dict) else error
        assert message and "\n" not in message


@_FUZZ
@given(body=_GENERATE, stream=st.booleans())
def test_generate_fuzzed_bodies_get_200_or_one_line_400(
    server: Any, body: dict[str, Any], stream: bool
) -> None:
    path = "/v2/models/tiny-llm/" + ("generate_stream" if stream else "generate")
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        r = c.post(path, content=_encoded(body), headers=_JSON_TYPE)
        _no_server_error(r)


@_FUZZ
@given(body=_OPENAI, chat=st.booleans())
def test_openai_fuzzed_bodies_get_200_or_one_line_4xx(
    server: Any, body: dict[str, Any], chat: bool
) -> None:
    path = "/v1/chat/completions" if chat else "/v1/completions"
    with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as c:
        r = c.post(path, content=_encoded(body), headers=_JSON_TYPE)
        _no_server_error(r)


def test_grpc_inference_on_a_generative_model_points_at_generate(server: Any) -> None:
    from tritonclient import grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(server.grpc_target)
    try:
        ids = np.asarray([1, 2, 3], dtype=np.int64)
        inp = grpcclient.InferInput("input_ids", list(ids.shape), "INT64")
        inp.set_data_from_numpy(ids)
        with pytest.raises(InferenceServerException, match="/generate") as err:
            client.infer("tiny-llm", [inp], headers={"authorization": AUTH["Authorization"]})
        assert "INVALID_ARGUMENT" in str(err.value.status())
    finally:
        client.close()


def test_bad_openai_requests_are_openai_errors(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError, match="n=2 is not supported"):
        oai.completions.create(model="tiny-llm", prompt=PROMPT, n=2)
    with pytest.raises(openai.BadRequestError, match="max_tokens 0 is invalid"):
        oai.completions.create(model="tiny-llm", prompt=PROMPT, max_tokens=0)
    with pytest.raises(openai.BadRequestError, match="temperature -1"):
        oai.chat.completions.create(
            model="tiny-llm", messages=[{"role": "user", "content": "hi"}], temperature=-1
        )
    with pytest.raises(openai.BadRequestError, match="role 'robot'"):
        oai.chat.completions.create(
            model="tiny-llm",
            messages=[{"role": "robot", "content": "hi"}],  # type: ignore[misc,list-item]
        )
    with pytest.raises(openai.BadRequestError, match="one prompt per request"):
        oai.completions.create(model="tiny-llm", prompt=[PROMPT, PROMPT])
    with pytest.raises(openai.BadRequestError, match="messages must be a non-empty list"):
        oai.chat.completions.create(model="tiny-llm", messages=[])
    with pytest.raises(openai.NotFoundError, match="unknown model 'nope'"):
        oai.completions.create(model="nope", prompt=PROMPT)
    with pytest.raises(openai.BadRequestError, match="not a generative model"):
        oai.completions.create(model="mlp", prompt=PROMPT)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=str(oai.base_url), api_key="wrong", max_retries=0).models.list()


def test_the_generate_routes_need_the_token(server: Any) -> None:
    body = {"text_input": PROMPT}
    with httpx.Client(base_url=server.url) as c:
        assert c.post("/v2/models/tiny-llm/generate", json=body).status_code == 401
        assert c.post("/v2/models/tiny-llm/generate_stream", json=body).status_code == 401
        assert c.post("/v1/completions", json={"model": "tiny-llm"}).status_code == 401


# ---------------------------------------------------------------- sharing the model
def _stream_in_thread(
    url: str,
    body: dict[str, Any],
    out: dict[str, Any],
    key: str,
    *,
    leave_after: int | None = None,
    hold: threading.Event | None = None,
) -> threading.Thread:
    """Stream ``body`` from the long model on a thread: ``out[key]`` gets the arrival times
    and events; with ``leave_after``, the client leaves after that many events (once
    ``hold`` is set, if given)."""

    def run() -> None:
        stamps, got = [], []
        with (
            httpx.Client(base_url=url, headers=AUTH, timeout=60) as c,
            c.stream("POST", "/v2/models/long/generate_stream", json=body) as r,
        ):
            assert r.status_code == 200
            for event in events(r):
                stamps.append(time.perf_counter())
                got.append(event)
                if leave_after is not None and len(got) >= leave_after:
                    out[key + ".left"] = True
                    if hold is not None:
                        hold.wait(30)
                    break
        out[key] = (stamps, got)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def _cancelled(client: httpx.Client) -> float:
    return metric(client, "edgeinfer_generations_total", model="long", finish_reason="cancelled")


def test_concurrent_streams_share_the_model(server: Any, long_model: GenerativeModel) -> None:
    prompts = ["the quick brown", "edge devices run", "a small model"]
    want = {p: long_model.generate(p, max_tokens=900).token_ids for p in prompts}
    out: dict[str, Any] = {}
    body = {"parameters": {"max_tokens": 900}}
    threads = [_stream_in_thread(server.url, {**body, "text_input": p}, out, p) for p in prompts]
    for t in threads:
        t.join()
    for p in prompts:
        assert [t for e in out[p][1] for t in e["token_ids"]] == list(want[p])
    # streams ran side by side: two of them overlapped (all three at once is what an idle
    # machine shows, but a loaded one may start a thread late)
    spans = [(out[p][0][0], out[p][0][-1]) for p in prompts]
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(spans) for b in spans[i + 1 :])


def test_a_client_that_leaves_cancels_its_generation(server: Any, client: httpx.Client) -> None:
    before = _cancelled(client)
    tokens = metric(client, "edgeinfer_generated_tokens_total", model="long")
    out: dict[str, Any] = {}
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 1900}}
    _stream_in_thread(server.url, body, out, "left", leave_after=3).join()
    assert len(out["left"][1]) == 3
    _wait_for(lambda: _cancelled(client) > before, "the generation was cancelled")
    # it stopped well before its 1900 tokens, and the model serves on
    assert metric(client, "edgeinfer_generated_tokens_total", model="long") - tokens < 1900
    short = {"text_input": PROMPT, "parameters": {"max_tokens": 3}}
    r = client.post("/v2/models/long/generate", json=short)
    assert r.status_code == 200 and len(r.json()["token_ids"]) == 3


def test_a_client_that_leaves_a_whole_answer_cancels_it_too(
    server: Any, client: httpx.Client
) -> None:
    before = _cancelled(client)
    tokens = metric(client, "edgeinfer_generated_tokens_total", model="long")
    body = json.dumps({"text_input": PROMPT, "parameters": {"max_tokens": 1900}}).encode()
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port))) as sock:
        head = (
            f"POST /v2/models/long/generate HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body)
    _wait_for(lambda: _cancelled(client) > before, "the generation was cancelled")
    assert metric(client, "edgeinfer_generated_tokens_total", model="long") - tokens < 1900


def test_generations_beyond_the_slots_and_the_queue_are_refused(
    server: Any, client: httpx.Client
) -> None:
    out: dict[str, Any] = {}
    hold = threading.Event()
    body = {"text_input": PROMPT, "parameters": {"max_tokens": 1900}}
    before = _cancelled(client)
    # three generations take long's three slots (its config.json) ...
    streams = [
        _stream_in_thread(server.url, body, out, f"s{i}", leave_after=1, hold=hold)
        for i in range(3)
    ]
    _wait_for(lambda: all(f"s{i}.left" in out for i in range(3)), "three streams began")
    # ... a fourth waits for one (max_queue_size 1) ...
    short = {"text_input": PROMPT, "parameters": {"max_tokens": 3}}
    waiting: dict[str, httpx.Response] = {}

    def wait_in_queue() -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=60) as c:
            waiting["r"] = c.post("/v2/models/long/generate", json=short)

    queued = threading.Thread(target=wait_in_queue)
    queued.start()
    _wait_for(lambda: metric(client, "edgeinfer_queue_depth", model="long") == 1, "one queued")
    # ... and a fifth is refused at once, with when to come back
    r = client.post("/v2/models/long/generate_stream", json=short)
    assert r.status_code == 503, r.text
    assert "overloaded" in r.json()["error"] and int(r.headers["retry-after"]) >= 1
    r = client.post("/v1/completions", json={"model": "long", "prompt": PROMPT})
    assert r.status_code == 503 and r.json()["error"]["type"] == "overloaded_error"
    hold.set()  # the three leave: their generations stop, the fourth runs
    for t in [*streams, queued]:
        t.join()
    assert waiting["r"].status_code == 200 and len(waiting["r"].json()["token_ids"]) == 3
    _wait_for(lambda: _cancelled(client) >= before + 3, "the three were cancelled")


@pytest.mark.parametrize("word", ["Infinity", "-Infinity", "NaN"])
def test_non_json_numbers_are_one_line_400s(server: Any, client: httpx.Client, word: str) -> None:
    for path, body in (
        ("/v2/models/tiny-llm/generate", '{"text_input": "hi", "parameters": {"temperature": %s}}'),
        ("/v1/completions", '{"model": "tiny-llm", "prompt": "hi", "temperature": %s}'),
    ):
        r = client.post(path, content=(body % word).encode(), headers=_JSON_TYPE)
        assert r.status_code == 400, (path, r.text)
        _no_server_error(r)
