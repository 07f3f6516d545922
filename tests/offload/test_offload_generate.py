"""The generative offloader: local or edge per request, and a stream the network breaks off
finished on the device, token for token what the device alone would have written.

A real ``edgeinfer serve`` runs the tiny language model on loopback, behind the network
emulator where the link is cut; the device runs the same bundle. A server that sends an
``error`` event mid-stream is a small relay in front of the real one (it passes the first
events on, then the error), as the hostile servers of test_offload_hostile.py are.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
import re
import shutil
import socket
import socketserver
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from edgeinfer.bundle import Bundle
from edgeinfer.cli.main import main
from edgeinfer.errors import InputError
from edgeinfer.generate import GenerateOptions, GenerativeModel
from edgeinfer.netem import NetemProxy, OutageMode
from edgeinfer.offload import BreakerConfig
from edgeinfer.offload.generation import (
    GenerativeOffloader,
    GenerativeOffloaderConfig,
    OffloadedGeneration,
)
from edgeinfer.offload.policy import battery_threshold
from edgeinfer.serve import BackgroundServer, ServeConfig

pytestmark = pytest.mark.timeout(120)

PROMPT = "the quick brown"
TOKENS = 100  # long enough that a cut at a token in the first 30 falls mid-stream
# The stall threshold is short so the tests are; a tiny model's tokens come in a millisecond.
CONFIG = GenerativeOffloaderConfig(
    first_token_s=5.0,
    gap_s=0.3,
    probe_timeout_s=0.5,
    breaker=BreakerConfig(failures=3, open_s=0.2, max_open_s=0.5),
)


@pytest.fixture(scope="module")
def server(tiny_bundle: Bundle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``edgeinfer serve`` with the tiny model as ``tiny-llm``; its ``HOST:PORT``."""
    repo = tmp_path_factory.mktemp("generative-repo")
    shutil.copytree(tiny_bundle.path, repo / "tiny-llm" / "1")
    config = ServeConfig(repo, port=0, grpc_port=None, poll_interval_s=None, threads=1)
    with BackgroundServer(config) as s:
        yield s.url.split("//", 1)[1]


@pytest.fixture(scope="module")
def want(tiny: GenerativeModel) -> tuple[int, ...]:
    """The device's own greedy generation of PROMPT: every test's reference."""
    return tiny.generate(PROMPT, max_tokens=TOKENS).token_ids


def _offloader(tiny: GenerativeModel, url: str, **config: Any) -> GenerativeOffloader:
    cfg = dataclasses.replace(CONFIG, **config)
    return GenerativeOffloader(tiny, url, "remote", model="tiny-llm", config=cfg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- resuming on the device
@pytest.mark.parametrize("exact", [True, False])
@pytest.mark.parametrize("stop", [None, ["lazy"]])
def test_resume_continues_token_for_token(
    tiny: GenerativeModel, stop: list[str] | None, exact: bool
) -> None:
    """Token for token either way on this fp32 model (``exact=False`` may drift on int4)."""
    whole = tiny.generate(PROMPT, max_tokens=40, stop=stop)
    ids = tiny.prompt_ids(PROMPT)
    opts = GenerateOptions.of(max_tokens=40, stop=stop)
    for k in sorted({0, 1, 5, len(whole.token_ids) // 2, len(whole.token_ids)}):
        done = whole.token_ids[:k]
        shown = tiny.decode(done) if stop is None else ""
        rest = tiny.resume(ids, done, opts, shown=shown, exact=exact)
        assert shown + "".join(rest) == whole.text, k
        assert rest.result is not None
        assert rest.result.token_ids == whole.token_ids
        assert rest.result.text == whole.text
        assert rest.result.stop_reason == whole.stop_reason


def test_a_follower_goes_on_from_the_tokens_fed_to_it(tiny: GenerativeModel) -> None:
    whole = tiny.generate(PROMPT, max_tokens=40)
    ids = tiny.prompt_ids(PROMPT)
    for fed, k in ((0, 0), (3, 10), (10, 10), (40, 40)):
        follower = tiny.follow(ids, GenerateOptions(max_tokens=40))
        for token in whole.token_ids[:fed]:
            follower.feed(token)
        rest = follower.resume(whole.token_ids[:k])
        assert "".join(rest) == whole.text, (fed, k)
        assert rest.result is not None and rest.result.token_ids == whole.token_ids
    follower = tiny.follow(ids, GenerateOptions(max_tokens=40))
    follower.feed(whole.token_ids[0])
    with pytest.raises(InputError, match="must begin with the tokens fed to the follower"):
        follower.resume([whole.token_ids[0] + 1])


def test_resume_refuses_ids_outside_the_vocabulary(tiny: GenerativeModel) -> None:
    with pytest.raises(InputError, match=r"generated token ids must be ids in \[0, "):
        tiny.resume(tiny.prompt_ids(PROMPT), [tiny.vocab_size], GenerateOptions())


# ---------------------------------------------------------------- no network at all
def test_private_requests_never_touch_the_network(tiny: GenerativeModel, server: str) -> None:
    with NetemProxy(server) as proxy, _offloader(tiny, proxy.url) as off:
        for _ in range(3):
            r = off.generate(PROMPT, max_tokens=12, private=True)
            assert r.where == "local"
            assert r.token_ids == tiny.generate(PROMPT, max_tokens=12).token_ids
        assert proxy.stats.connections == 0
        assert off.stats.remote == 0


def test_offline_from_the_start_runs_locally(tiny: GenerativeModel, want: tuple[int, ...]) -> None:
    with _offloader(tiny, f"http://127.0.0.1:{_free_port()}") as off:
        results = [off.generate(PROMPT, max_tokens=TOKENS) for _ in range(4)]
        assert all(r.token_ids == want for r in results)
        assert all(r.parts[-1].placement == "local" for r in results)
        tried = [r for r in results if r.placement == "remote"]
        # the server was tried at most until its breaker opened, and never gave a token
        assert all(r.switched_at == 0 and "refused" in (r.fallback_reason or "") for r in tried)
        assert results[-1].where == "local"
        assert not off.breaker(0).closed


# ---------------------------------------------------------------- through the server
def test_a_good_link_offloads(tiny: GenerativeModel, server: str, want: tuple[int, ...]) -> None:
    with NetemProxy(server, rtt="2ms") as proxy, _offloader(tiny, proxy.url) as off:
        pieces = off.stream(PROMPT, max_tokens=TOKENS)
        text = "".join(pieces)
        r = pieces.result
    assert r is not None and r.where == "remote" and not r.fallback
    assert [(p.placement, p.start, p.end) for p in r.parts] == [("remote", 0, TOKENS)]
    assert r.token_ids == want
    assert text == r.text == tiny.decode(want)
    assert r.stop_reason == "max_tokens"


def _cut_once(
    tiny: GenerativeModel, server: str, at: int, mode: OutageMode, follow: bool
) -> tuple[str, GenerativeOffloader, OffloadedGeneration]:
    """Stream PROMPT through a fresh link; cut it (``mode``) once piece ``at`` arrived."""
    with NetemProxy(server) as proxy, _offloader(tiny, proxy.url, follow=follow) as off:
        pieces = off.stream(PROMPT, max_tokens=TOKENS)
        text = []
        for i, piece in enumerate(pieces):
            text.append(piece)
            if i == at:
                proxy.outage(None, mode=mode)
        assert pieces.result is not None
        return "".join(text), off, pieces.result


@pytest.mark.parametrize(
    ("mode", "follow"), [("refuse", False), ("blackhole", False), ("refuse", True)]
)
def test_a_link_cut_at_a_random_token_is_finished_locally(
    tiny: GenerativeModel, server: str, want: tuple[int, ...], mode: OutageMode, follow: bool
) -> None:
    """``refuse`` resets the connection; ``blackhole`` stalls it past the gap threshold;
    ``follow``: the device fed the server's tokens to its model as they came."""
    rng = random.Random()
    for _ in range(3):  # a cut after the server's last event has nothing left to cut
        at = rng.randrange(1, 30)
        text, off, r = _cut_once(tiny, server, at, mode, follow)
        assert r.token_ids == want, f"cut after piece {at}"
        assert text == r.text == tiny.decode(want)
        if r.fallback:
            break
    assert r.fallback, "no cut fell inside the stream"
    switched = r.switched_at
    assert at < switched < TOKENS
    assert [(p.placement, p.start, p.end) for p in r.parts] == [
        ("remote", 0, switched),
        ("local", switched, TOKENS),
    ]
    why = r.fallback_reason or ""
    assert ("stalled" in why) if mode == "blackhole" else ("connection" in why), why
    assert off.stats.fallbacks == 1


ERROR_EVENT = b'data: {"error": "the model was unloaded"}\n\n'


class _Relay(socketserver.ThreadingTCPServer):
    """Passes the real server's first ``events`` events on, then ``ending`` (an error
    event by default) and closes the connection."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, target: str, events: int, ending: bytes) -> None:
        super().__init__(("127.0.0.1", 0), _RelayHandler)
        self.target, self.events, self.ending = target, events, ending


class _RelayHandler(socketserver.StreamRequestHandler):
    server: _Relay

    def handle(self) -> None:
        line = self.rfile.readline()
        length = 0
        while (header := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = self.rfile.read(length)
        method, path = line.split()[:2]
        url = f"http://{self.server.target}{path.decode()}"
        if method != b"POST":
            answer = httpx.get(url)
            head = f"HTTP/1.1 {answer.status_code} OK\r\nContent-Length: {len(answer.content)}"
            self.wfile.write(f"{head}\r\nConnection: close\r\n\r\n".encode() + answer.content)
            return
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n")
        self.wfile.write(b"Connection: close\r\n\r\n")
        sent = 0
        with httpx.stream("POST", url, content=body) as answer:
            for event in answer.iter_lines():
                if sent == self.server.events:
                    break
                if event.startswith("data:"):
                    self.wfile.write(f"{event}\n\n".encode())
                    sent += 1
        self.wfile.write(self.server.ending)


@contextlib.contextmanager
def _relay(target: str, events: int, ending: bytes = ERROR_EVENT) -> Iterator[str]:
    relay = _Relay(target, events, ending)
    thread = threading.Thread(target=relay.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{relay.server_address[1]}"
    finally:
        relay.shutdown()
        relay.server_close()


def test_an_error_event_is_finished_locally(
    tiny: GenerativeModel, server: str, want: tuple[int, ...]
) -> None:
    at = random.Random().randrange(1, 30)
    with _relay(server, at) as url, _offloader(tiny, url) as off:
        pieces = off.stream(PROMPT, max_tokens=TOKENS)
        text = "".join(pieces)
        r = pieces.result
    assert r is not None and r.fallback
    assert r.token_ids == want
    assert text == r.text == tiny.decode(want)
    assert at <= r.switched_at < TOKENS  # type: ignore[operator]
    assert "the stream broke off: the model was unloaded" in (r.fallback_reason or "")


@pytest.mark.parametrize(
    ("ending", "why"),
    [
        (b"", "the stream ended before its last event"),
        (b"data: {not json\n\n", "a stream event is not JSON"),
        (b'data: {"text_output": 5, "token_ids": []}\n\n', "a stream event is not {text_output"),
        (b'data: {"text_output": "", "token_ids": [-1]}\n\n', "a stream event is not {text_output"),
        (b"data: " + b"x" * (1 << 21), "a stream event is longer than 1048576 bytes"),
    ],
)
def test_a_broken_stream_is_finished_locally(
    tiny: GenerativeModel, server: str, want: tuple[int, ...], ending: bytes, why: str
) -> None:
    with _relay(server, 4, ending) as url, _offloader(tiny, url) as off:
        r = off.generate(PROMPT, max_tokens=TOKENS)
    assert r.token_ids == want and r.text == tiny.decode(want)
    assert r.switched_at is not None and 4 <= r.switched_at < TOKENS
    assert why in (r.fallback_reason or ""), r.fallback_reason


def test_an_error_before_the_stream_began_is_run_locally(
    tiny: GenerativeModel, server: str, want: tuple[int, ...]
) -> None:
    url = f"http://{server}"
    with GenerativeOffloader(tiny, url, "remote", model="no-such-model", config=CONFIG) as off:
        r = off.generate(PROMPT, max_tokens=TOKENS)
    assert r.token_ids == want and r.switched_at == 0
    assert [p.placement for p in r.parts] == ["local"]
    assert "request rejected, HTTP 404" in (r.fallback_reason or "")


# ---------------------------------------------------------------- deciding
def _measured(off: GenerativeOffloader, local_s: float, remote_s: float) -> None:
    """Teach both sides' estimates: ``local_s``/``remote_s`` seconds per token."""
    for _ in range(3):
        off.local_est.observe(4, 4 * local_s, 10, 9 * local_s, 1e12)
        off.remote_est[0].observe(4, 4 * remote_s, 10, 9 * remote_s, 1e12)


def test_the_faster_side_is_chosen_from_the_estimates(tiny: GenerativeModel) -> None:
    config = GenerativeOffloaderConfig(explore_after_s=None)
    url = f"http://127.0.0.1:{_free_port()}"
    with GenerativeOffloader(tiny, url, "latency", config=config) as off:
        _measured(off, local_s=0.050, remote_s=0.005)
        assert off.decide(PROMPT, max_tokens=64).placement.kind == "remote"
        assert off.decide(PROMPT, max_tokens=64, private=True).placement.kind == "local"
        _measured(off, local_s=0.001, remote_s=0.005)
        for _ in range(5):  # the EWMA follows the new medians
            _measured(off, local_s=0.001, remote_s=0.005)
        assert off.decide(PROMPT, max_tokens=64).placement.kind == "local"


def test_a_low_battery_offloads(tiny: GenerativeModel) -> None:
    config = GenerativeOffloaderConfig(explore_after_s=None)
    url = f"http://127.0.0.1:{_free_port()}"
    policy = battery_threshold(0.2)
    with GenerativeOffloader(tiny, url, policy, config=config, battery=lambda: 0.1) as off:
        _measured(off, local_s=0.001, remote_s=0.005)
        d = off.decide(PROMPT, max_tokens=64)
        assert d.placement.kind == "remote" and d.reason.startswith("battery 10% < 20%")


def test_bad_arguments_are_one_line_errors(tiny: GenerativeModel) -> None:
    with pytest.raises(InputError, match="needs a local generative model"):
        GenerativeOffloader(None, "http://127.0.0.1:1")
    with pytest.raises(InputError, match=r"expected an http:// or https:// server address"):
        GenerativeOffloader(tiny, "grpc://127.0.0.1:1")
    with pytest.raises(InputError, match=r"gap_s 0 is invalid; expected seconds > 0"):
        GenerativeOffloaderConfig(gap_s=0)
    with GenerativeOffloader(tiny, f"http://127.0.0.1:{_free_port()}") as off:
        with pytest.raises(InputError, match="max_tokens 0 is invalid"):
            off.generate(PROMPT, max_tokens=0)
        with pytest.raises(InputError, match="prompt is empty"):
            off.generate("")


# ---------------------------------------------------------------- the command line
def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as info:
        main(["generate", *args])
        raise SystemExit(0)
    out = capsys.readouterr()
    return int(info.value.code or 0), out.out, out.err


def _ran(err: str) -> str:
    """The CLI's "ran:" line, its continuation lines (wrapped at 80 columns) joined back."""
    lines = err.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("ran: "))
    rest = [line.strip() for line in lines[start + 1 :] if line.startswith("  ")]
    return " ".join([lines[start], *rest])


def test_the_cli_says_where_it_ran_and_where_it_switched(
    tiny_bundle: Bundle,
    tiny: GenerativeModel,
    server: str,
    want: tuple[int, ...],
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = [str(tiny_bundle.path), "-p", PROMPT, "-n", str(TOKENS), "--threads", "1"]
    with _relay(server, 5) as url:
        code, out, err = _cli([*args, "--stream", "--offload", url], capsys)
    assert code == 0, err
    assert out == tiny.decode(want) + "\n"
    ran = _ran(err)
    assert re.match(r"ran: remote -> local at token (\d+); tokens 0-\1 remote \(http://", ran), ran
    assert "switched because: the stream broke off: the model was unloaded (http://" in ran

    with _relay(server, 5) as url:
        code, out, err = _cli([*args, "--offload", url, "--follow"], capsys)
    assert code == 0, err
    assert out == tiny.decode(want) + "\n"
    assert re.match(r"ran: remote -> local at token \d+;", _ran(err)), err

    code, out, err = _cli([*args, "--offload", f"http://{server}"], capsys)
    assert code == 0, err
    assert out == tiny.decode(want) + "\n"
    assert _ran(err) == f"ran: remote; tokens 0-{TOKENS} remote (http://{server})"

    code, _, err = _cli([*args, "--offload", "grpc://127.0.0.1:1"], capsys)
    assert code == 2
    assert err.strip() == (
        "error: url 'grpc://127.0.0.1:1': expected an http:// or https:// server address"
    )
