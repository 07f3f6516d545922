"""Shared parts of the delivery tests: a real HTTP server with byte ranges and scripted
faults, bundle builders, a device-state fingerprint, and a metadata forger for attacks.

The forger plays the attacker the way python-tuf's ``tests/repository_simulator.py`` does,
but on real files served over real HTTP: it writes new versions of metadata signed with
whatever keys the attacker holds.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from edgeinfer.bundle import GOLDEN_FILE, MANIFEST_FILE, Bundle, FileRef, Golden
from edgeinfer.deliver import Agent, AgentConfig, GateConfig, KeyStore, Publisher
from edgeinfer.deliver.download import DownloadConfig

GOLDEN_X = np.random.default_rng(0).standard_normal((4, 4)).astype(np.float32)
PYTHON = sys.executable


# ---------------------------------------------------------------- HTTP server
@dataclasses.dataclass
class Fault:
    """What the server does wrong for URLs containing ``match``."""

    match: str
    kind: str  # "stall": send `after` bytes then hang; "endless": never stop sending;
    # "trickle": one byte every `every` seconds; "silent": never answer at all
    after: int = 0  # bytes
    every: float = 0.0  # seconds


class _Handler(SimpleHTTPRequestHandler):
    server: RepoServer

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log.append(self.path)

    def do_POST(self) -> None:
        size = int(self.headers.get("Content-Length", "0"))
        self.server.posts.append(json.loads(self.rfile.read(size)))
        self.send_response(204)
        self.end_headers()

    def do_GET(self) -> None:
        self.server.requests.append((self.path, self.headers.get("Range")))
        if self.server.auth is not None:
            import base64

            token = base64.b64encode(":".join(self.server.auth).encode()).decode()
            if self.headers.get("Authorization") != f"Basic {token}":
                self.send_error(401)
                return
        fault = next((f for f in self.server.faults if f.match in self.path), None)
        if fault is not None and fault.kind == "silent":
            self.server.release.wait(60)
            self.close_connection = True
            return
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        if fault is not None and fault.kind == "endless":
            self.send_response(200)
            self.end_headers()  # no Content-Length: the body ends when the server says so
            try:
                self.wfile.write(data)
                for _ in range(4096):  # 256 MB at most, then give up
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
            self.close_connection = True
            return
        start = 0
        m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if m and self.server.ranges and int(m[1]) < len(data):
            start = int(m[1])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        try:
            if fault is not None and fault.kind == "trickle":
                for i in range(len(body)):
                    self.wfile.write(body[i : i + 1])
                    self.wfile.flush()
                    if self.server.release.wait(fault.every):
                        break
                return
            if fault is not None and fault.kind == "stall":
                self.wfile.write(body[: fault.after])
                self.wfile.flush()
                self.server.release.wait(30)
                return
            self.wfile.write(body)
        except OSError:
            pass


class RepoServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, directory: Path) -> None:
        super().__init__(("127.0.0.1", 0), functools.partial(_Handler, directory=str(directory)))
        self.faults: list[Fault] = []
        self.ranges = True
        self.release = threading.Event()
        self.requests: list[tuple[str, str | None]] = []
        self.posts: list[Any] = []
        self.log: list[str] = []
        self.auth: tuple[str, str] | None = None  # (user, password) required when set

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@contextmanager
def serve(directory: Path) -> Iterator[RepoServer]:
    server = RepoServer(directory)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.release.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# ---------------------------------------------------------------- bundles
def shared_make_mlp() -> Callable[..., Path]:
    """``make_mlp`` from tests/conftest.py, for module-scoped fixtures (which cannot use the
    function-scoped ``make_model`` fixture). Loaded by path under its own module name: the
    bare name ``conftest`` may be another directory's conftest by the time this runs."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "conftest.py"
    spec = importlib.util.spec_from_file_location("_edgeinfer_root_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fn: Callable[..., Path] = module.make_mlp
    return fn


def make_bundle(make_model: Callable[..., Path], tmp: Path, version: int, seed: int) -> Path:
    """A tiny MLP bundle ``mlp`` at ``version`` with a golden sample."""
    out = tmp / f"bundle-{version}-{seed}"
    if out.is_dir():  # same version and seed: the very same bytes
        return out
    model = make_model(tmp / f"mlp-{version}-{seed}.onnx", seed=seed)
    b = Bundle.create(
        model, tmp / f"bundle-{version}-{seed}", name="mlp", version=version, golden_inputs=GOLDEN_X
    )
    return b.path


def make_bad_golden_bundle(make_model: Callable[..., Path], tmp: Path, version: int) -> Path:
    """A consistent bundle (hashes fine) whose golden outputs the model does not reproduce."""
    path = make_bundle(make_model, tmp, version, seed=40 + version)
    b = Bundle.open(path)
    golden = b.golden()
    assert golden is not None
    wrong = {k: v + 1.0 for k, v in golden.outputs.items()}
    Golden(golden.inputs, wrong, golden.atol, golden.rtol).save(path / GOLDEN_FILE)
    manifest = dataclasses.replace(b.manifest, golden=FileRef.of(path / GOLDEN_FILE))
    (path / MANIFEST_FILE).write_text(json.dumps(manifest.to_dict(), indent=2))
    Bundle.open(path)  # still a valid bundle
    return path


# ---------------------------------------------------------------- device
def fingerprint(state: Path) -> dict[str, str]:
    """sha256 and mtime of every file in the slots and the pointer: proves "nothing written"."""
    out = {}
    for p in sorted([*state.glob("slots/**/*"), state / "active.json"]):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(state))] = (
                f"{hashlib.sha256(p.read_bytes()).hexdigest()}:{st.st_mtime_ns}"
            )
    return out


def active_slot_fingerprint(state: Path) -> dict[str, str]:
    pointer = json.loads((state / "active.json").read_text())
    slot = pointer["active"]["slot"]
    return {k: v for k, v in fingerprint(state).items() if k.startswith(f"slots/{slot}/")}


def committed(state: Path) -> tuple[str, int, str] | None:
    from edgeinfer.deliver import SlotStore

    info = SlotStore(state).committed()
    return None if info is None else (info.name, info.version, info.sha256)


def temp_files(state: Path) -> list[str]:
    """Anything a crash could leave behind that recovery must remove."""
    found = []
    for p in state.rglob("*"):
        name = p.name
        if (
            name.startswith((".tmp-", ".staging-", ".old-", ".bundle", "tmp"))
            or name.endswith(".part")
            or (p.parent.name == "downloads")
        ):
            found.append(str(p.relative_to(state)))
    return sorted(found)


def agent_config(server: RepoServer, state: Path, repo: Path, **kw: Any) -> AgentConfig:
    kw.setdefault("gate", GateConfig(latency_factor=100.0, latency_slack_ms=1000.0))
    kw.setdefault("download", DownloadConfig(read_timeout=5.0))
    kw.setdefault("min_free_bytes", 0)
    return AgentConfig(server.url, state, root=repo / "metadata" / "1.root.json", **kw)


def run_agent(server: RepoServer, state: Path, repo: Path, **kw: Any) -> Any:
    return Agent(agent_config(server, state, repo, **kw)).run_once()


def agent_cli(
    server_url: str, state: Path, root: Path, *extra: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    cmd = [
        PYTHON,
        "-m",
        "edgeinfer",
        "agent",
        "--repo-url",
        server_url,
        "--state-dir",
        str(state),
        "--root",
        str(root),
        "--once",
        "--min-free-mb",
        "0",
        *extra,
    ]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )


# ---------------------------------------------------------------- attacker
def forge_targets(
    repo: Path,
    targets_signers: list[Any],
    snapshot_signers: list[Any],
    timestamp_signers: list[Any],
    mutate: Callable[[Any], None],
    *,
    expires_in: float = 30.0,  # days
) -> None:
    """Write the next targets/snapshot/timestamp versions, signed with the given keys."""
    from tuf.api.metadata import Metadata, MetaFile
    from tuf.api.serialization.json import JSONSerializer

    md_dir = repo / "metadata"
    ts = Metadata.from_file(str(md_dir / "timestamp.json"))
    snap = Metadata.from_file(str(md_dir / f"{ts.signed.snapshot_meta.version}.snapshot.json"))
    tv = snap.signed.meta["targets.json"].version
    targets = Metadata.from_file(str(md_dir / f"{tv}.targets.json"))
    expires = datetime.now(timezone.utc) + timedelta(days=expires_in)

    def finish(md: Any, signers: list[Any], name: str) -> bytes:
        md.signed.version += 1
        md.signed.expires = expires
        md.signatures.clear()
        for s in signers:
            md.sign(s, append=True)
        data: bytes = md.to_bytes(JSONSerializer())
        (md_dir / name.format(v=md.signed.version)).write_bytes(data)
        return data

    mutate(targets.signed)
    data = finish(targets, targets_signers, "{v}.targets.json")
    snap.signed.meta["targets.json"] = MetaFile.from_data(targets.signed.version, data, ["sha256"])
    data = finish(snap, snapshot_signers, "{v}.snapshot.json")
    ts.signed.snapshot_meta = MetaFile.from_data(snap.signed.version, data, ["sha256"])
    finish(ts, timestamp_signers, "timestamp.json")


def add_target_file(repo: Path, path: str, data: bytes, custom: dict[str, Any]) -> Any:
    """Put a target file in the repository; returns its TargetFile (for forge_targets)."""
    from tuf.api.metadata import TargetFile

    tf = TargetFile.from_data(path, data, ["sha256"])
    tf.unrecognized_fields["custom"] = custom
    parent, _, name = path.rpartition("/")
    dest = repo / "targets" / parent / f"{tf.hashes['sha256']}.{name}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)
    return tf


@dataclasses.dataclass
class Fleet:
    """A repository with keys, a server, and one device on v1."""

    tmp: Path
    keys: KeyStore
    repo: Path
    pub: Publisher
    server: RepoServer
    state: Path
    v1: Path
    make_model: Callable[..., Path]

    def bundle(self, version: int, seed: int | None = None) -> Path:
        return make_bundle(
            self.make_model, self.tmp, version, seed=version if seed is None else seed
        )

    def agent(self, **kw: Any) -> Any:
        return run_agent(self.server, self.state, self.repo, **kw)

    def target_file(self, path: str) -> Path:
        tf = self.pub.targets().targets[path]
        parent, _, name = path.rpartition("/")
        return self.repo / "targets" / parent / f"{tf.hashes['sha256']}.{name}"


@contextmanager
def fleet(tmp: Path, make_model: Callable[..., Path], **keys: int) -> Iterator[Fleet]:
    """Keys, a repository with v1 published, served over HTTP, and a device running v1."""
    store = KeyStore.init(tmp / "keys", keys or None)
    repo = tmp / "repo"
    pub = Publisher(repo, store)
    v1 = make_bundle(make_model, tmp, 1, seed=1)
    pub.publish(v1)
    with serve(repo) as server:
        f = Fleet(tmp, store, repo, pub, server, tmp / "device", v1, make_model)
        result = f.agent()
        assert result.result == "updated", result
        yield f


def copy_state(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst
