"""The agent and the publisher under hostile conditions: a full disk, slow or silent servers,
credentials in URLs, killed publishes, wrong URLs, re-publishing.

Everything runs against a real repository served over HTTP on loopback with a real agent.
A full disk is made two ways: ``OSError(ENOSPC)`` injected at the device's write boundary
(``edgeinfer.deliver._fsutil.write_atomic``), and, where this machine lets a test mount one,
a real tmpfs of a few MB filled to the last byte.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from deliver_support import (
    PYTHON,
    Fault,
    Fleet,
    agent_cli,
    committed,
    copy_state,
    fleet,
    make_bundle,
    run_agent,
)

from edgeinfer.cli.main import main
from edgeinfer.deliver import (
    Agent,
    AgentError,
    DownloadConfig,
    KeyStore,
    KeyStoreError,
    PublishConfig,
    Publisher,
    PublishError,
    SlotStore,
    _fsutil,
)
from edgeinfer.deliver import agent as agent_module
from edgeinfer.deliver._fsutil import CRASH_ENV

pytestmark = pytest.mark.timeout(180)


def cli(*argv: str) -> int:
    try:
        main(list(argv))
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def history(state: Path) -> dict[str, Any]:
    path = state / "history.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    return {"bad": data.get("bad", {}), "strikes": data.get("strikes", {})}


def pointer_state(state: Path) -> str:
    return str(json.loads((state / "active.json").read_text())["state"])


def lock_is_free(state: Path) -> bool:
    import fcntl

    with open(state / ".lock", "a+") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        return True


@pytest.fixture
def f(tmp_path: Path, make_model: Any) -> Iterator[Fleet]:
    with fleet(tmp_path, make_model) as fl:
        yield fl


# ---------------------------------------------------------------- a full disk
class InjectedDisk:
    """The device's write boundary on a disk that fills up: ``full`` -> ENOSPC."""

    def __init__(self, real: Callable[..., None]) -> None:
        self.real = real
        self.full = False
        self.refused: list[str] = []

    def __call__(self, path: Path, data: bytes, *, crash_step: str | None = None) -> None:
        if self.full:
            self.refused.append(path.name)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        self.real(path, data, crash_step=crash_step)


def fill_after_gate(monkeypatch: pytest.MonkeyPatch, fill: Callable[[], object]) -> None:
    """Run the real health gate, then fill the disk: the commit meets a full disk."""
    real_gate = agent_module.run_gate

    def gate_then_fill(*args: Any, **kwargs: Any) -> Any:
        result = real_gate(*args, **kwargs)
        assert result.ok, result
        fill()
        return result

    monkeypatch.setattr(agent_module, "run_gate", gate_then_fill)


def test_full_disk_at_commit_is_never_a_strike(
    f: Fleet, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    disk = InjectedDisk(_fsutil.write_atomic)
    monkeypatch.setattr(_fsutil, "write_atomic", disk)
    fill_after_gate(monkeypatch, lambda: setattr(disk, "full", True))
    f.pub.publish(f.bundle(2))
    v1 = committed(f.state)
    caplog.set_level(logging.INFO, logger="edgeinfer.deliver")
    for _ in range(3):  # more than max_trial_crashes: a crash would have marked v2 bad
        disk.full = False
        result = f.agent()
        assert result.result == "failed", result
        assert "is full" in result.reason and "committing version 2" in result.reason
        assert "stays on version 1" in result.reason
        assert committed(f.state) == v1
        assert "active.json" in disk.refused
        assert history(f.state) == {"bad": {}, "strikes": {}}
        # status.json could not be written: gone rather than describing an older cycle
        assert not (f.state / "status.json").exists()
    assert "died" not in caplog.text and "not a crash" in caplog.text

    monkeypatch.undo()  # space again: the same version goes in
    result = f.agent()
    assert result.result == "updated", result
    assert committed(f.state)[1] == 2  # type: ignore[index]
    assert pointer_state(f.state) == "committed"
    assert history(f.state) == {"bad": {}, "strikes": {}}
    status = json.loads((f.state / "status.json").read_text())
    assert status["last_cycle"] == result.to_dict()


def test_status_is_written_when_only_the_old_status_fits(
    f: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = _fsutil.write_atomic
    status = f.state / "status.json"

    def full_while_old_status_exists(path: Path, data: bytes, **kw: Any) -> None:
        if path == status and status.exists():
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data, **kw)

    monkeypatch.setattr(_fsutil, "write_atomic", full_while_old_status_exists)
    result = f.agent()
    assert result.result == "up-to-date"
    assert json.loads(status.read_text())["last_cycle"] == result.to_dict()


def test_a_trial_cut_short_by_a_crash_still_counts(
    f: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    f.pub.publish(f.bundle(2))
    root = f.repo / "metadata" / "1.root.json"
    crashed = agent_cli(f.server.url, f.state, root, env={CRASH_ENV: "gate"})
    assert crashed.returncode == 137, crashed.stderr
    assert (f.state / "trial-running").exists()
    caplog.set_level(logging.WARNING, logger="edgeinfer.deliver")
    f.agent()
    assert "rolled back mlp v2: its trial was cut short by a crash (1 of 2 allowed)" in caplog.text


# ---------------------------------------------------------------- a real full disk (tmpfs)
@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs, mounted for this test only."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; the injected ENOSPC tests cover this path")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"mount refused ({done.stderr.strip()}); the injected ENOSPC tests run")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def fill_disk(directory: Path) -> Path:
    """Write zeros into ``directory/filler`` until the file system has no byte left."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for size in (1 << 20, 1 << 16, 1 << 12, 1):
            block = b"\0" * size
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


@pytest.mark.slow
@pytest.mark.parametrize("when", ["install", "gate"])
def test_real_full_disk_is_never_a_strike(
    f: Fleet, small_disk: Path, monkeypatch: pytest.MonkeyPatch, when: str
) -> None:
    state = copy_state(f.state, small_disk / "device")
    f.pub.publish(f.bundle(2))
    if when == "gate":
        fill_after_gate(monkeypatch, lambda: fill_disk(small_disk))
    else:  # the download fits; the disk fills before unpacking
        real_install = SlotStore.install

        def fill_then_install(self: SlotStore, *args: Any) -> Any:
            fill_disk(small_disk)
            return real_install(self, *args)

        monkeypatch.setattr(SlotStore, "install", fill_then_install)
    result = run_agent(f.server, state, f.repo)
    if when == "install":
        assert result.result == "failed" and "is full" in result.reason, result
        assert "installing version 2" in result.reason
    else:  # the crash marker's block is freed before the commit is written
        assert result.result in ("updated", "failed"), result
    assert pointer_state(state) == "committed"  # never left on trial
    assert history(state)["bad"] == {}
    status = json.loads((state / "status.json").read_text())
    assert status["last_cycle"] == result.to_dict()

    monkeypatch.undo()
    (small_disk / "filler").unlink()
    again = run_agent(f.server, state, f.repo)
    assert committed(state)[1] == 2, again  # type: ignore[index]
    assert history(state) == {"bad": {}, "strikes": {}}


@pytest.mark.slow
def test_disk_filling_at_any_moment_of_a_cycle(f: Fleet, small_disk: Path) -> None:
    """Another process fills the disk at a random moment of the update, 20 times over.

    Whatever the moment: the cycle ends in a result (no exception), the version is never
    marked bad nor given a strike, the pointer is never left on trial nor a crash marker
    behind, and the next cycle with space again ends on version 2, committed.
    """
    import random
    import threading

    f.pub.publish(f.bundle(2))
    rng = random.Random(7)
    outcomes = []
    for trial in range(20):
        state = copy_state(f.state, small_disk / f"device-{trial}")
        filler = threading.Thread(
            target=lambda delay: (threading.Event().wait(delay), fill_disk(small_disk)),
            args=(rng.uniform(0.0, 0.6),),
        )
        filler.start()
        try:
            result = run_agent(f.server, state, f.repo)
        finally:
            filler.join(timeout=60)
        outcomes.append(result.result)
        assert result.result in ("updated", "failed", "refused"), result
        assert history(state) == {"bad": {}, "strikes": {}}
        assert not (state / "trial-running").exists()
        assert pointer_state(state) == "committed"  # never left on trial
        status = state / "status.json"
        if status.exists():
            assert json.loads(status.read_text())["last_cycle"] == result.to_dict()
        (small_disk / "filler").unlink()
        again = run_agent(f.server, state, f.repo)
        assert committed(state)[1] == 2, again  # type: ignore[index]
        assert pointer_state(state) == "committed"
        assert history(state) == {"bad": {}, "strikes": {}}
        shutil.rmtree(state)
    assert "failed" in outcomes or "refused" in outcomes  # the disk did fill mid-cycle


@pytest.mark.slow
def test_agent_on_a_full_disk_reports_and_exits_cleanly(f: Fleet, small_disk: Path) -> None:
    state = copy_state(f.state, small_disk / "device")
    f.pub.publish(f.bundle(2))
    fill_disk(small_disk)
    out = agent_cli(f.server.url, state, f.repo / "metadata" / "1.root.json")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    printed = json.loads(out.stdout)
    assert printed["result"] in ("failed", "refused") and "full" in printed["reason"]
    status = json.loads((state / "status.json").read_text())
    assert status["last_cycle"] == printed  # this cycle, not the previous one
    assert committed(state)[1] == 1 and history(state)["bad"] == {}  # type: ignore[index]


# ---------------------------------------------------------------- slow and silent servers
def test_trickled_metadata_ends_the_cycle_and_frees_the_lock(f: Fleet) -> None:
    f.pub.publish(f.bundle(2))
    f.server.faults.append(Fault("timestamp.json", "trickle", every=0.25))
    slow = DownloadConfig(read_timeout=5.0, min_rate=100.0, rate_window=1.0)
    result = f.agent(download=slow, cycle_timeout=60.0)
    assert result.result == "failed", result
    assert "timestamp.json" in result.reason and "below the minimum of 100 B/s" in result.reason
    status = json.loads((f.state / "status.json").read_text())
    assert status["last_cycle"]["reason"] == result.reason
    assert lock_is_free(f.state)
    assert committed(f.state)[1] == 1  # type: ignore[index]


def test_silent_server_ends_at_the_cycle_deadline(f: Fleet) -> None:
    f.server.faults.append(Fault("timestamp.json", "silent"))
    no_rate = DownloadConfig(read_timeout=120.0, min_rate=0.0)
    result = f.agent(download=no_rate, cycle_timeout=1.5)
    assert result.result == "failed", result
    assert "ran out of its 1.5 s (--cycle-timeout)" in result.reason
    assert lock_is_free(f.state)


@pytest.mark.slow
def test_trickled_bundle_stops_at_the_deadline_then_resumes(f: Fleet) -> None:
    v2 = f.pub.publish(f.bundle(2))
    f.server.faults.append(Fault("mlp-2.tar", "trickle", every=0.002))
    result = f.agent(use_deltas=False, cycle_timeout=4.0)
    assert result.result == "failed", result
    assert "mlp-2.tar" in result.reason and "--cycle-timeout" in result.reason
    assert 0 < result.bytes_downloaded < v2.length
    assert lock_is_free(f.state)
    f.server.faults.clear()
    done = f.agent(use_deltas=False)
    assert done.result == "updated", done
    assert done.bytes_downloaded == v2.length - result.bytes_downloaded  # resumed


@pytest.mark.slow
def test_cli_cycle_timeout(f: Fleet) -> None:
    f.server.faults.append(Fault("timestamp.json", "silent"))
    root = f.repo / "metadata" / "1.root.json"
    out = agent_cli(f.server.url, f.state, root, "--cycle-timeout", "2", "--min-rate", "10")
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert "--cycle-timeout" in json.loads(out.stdout)["reason"]
    assert lock_is_free(f.state)


def test_rate_and_deadline_options_are_checked(tmp_path: Path) -> None:
    out = agent_cli("http://127.0.0.1:9", tmp_path / "s", tmp_path / "r", "--min-rate", "-1")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    with pytest.raises(AgentError, match="cycle timeout"):
        Agent(agent_module.AgentConfig("http://127.0.0.1:9", tmp_path / "s", cycle_timeout=0))


# ---------------------------------------------------------------- credentials in URLs
def test_credentials_never_reach_status_logs_or_reports(
    f: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "s3cret-Pa55"
    f.server.auth = ("edge", secret)
    port = f.server.server_address[1]
    url = f"http://edge:{secret}@127.0.0.1:{port}"
    report = f"http://reporter:{secret}@127.0.0.1:{port}/report"
    caplog.set_level(logging.DEBUG)
    f.pub.publish(f.bundle(2))
    v3 = f.pub.publish(f.bundle(3))
    f.target_file(v3.path).unlink()  # v3's download fails: its URL lands in the reason
    cfg = agent_module.AgentConfig(
        url,
        f.state,
        report_url=report,
        use_deltas=False,
        min_free_bytes=0,
        download=DownloadConfig(read_timeout=5.0),
    )
    result = Agent(cfg).run_once()
    assert result.result == "failed" and "HTTP 404" in result.reason, result
    assert f"http://127.0.0.1:{port}/targets/" in result.reason  # the URL, without them
    f.pub.publish(f.bundle(4))
    Agent(cfg).run_once()  # credentials accepted: the update goes through
    assert committed(f.state)[1] == 4  # type: ignore[index]
    status = (f.state / "status.json").read_text()
    assert secret not in status and secret not in caplog.text
    assert len(f.server.posts) == 2 and secret not in json.dumps(f.server.posts)


# ---------------------------------------------------------------- a killed publish
def publish_cli(
    bundle: Path, repo: Path, keys: Path, *extra: str, env: dict[str, str] | None = None
) -> Any:
    cmd = [PYTHON, "-m", "edgeinfer", "publish", str(bundle), "--repo", str(repo)]
    return subprocess.run(
        [*cmd, "--keys", str(keys), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


def leftovers(repo: Path) -> list[str]:
    found = [*repo.glob("targets/.staging.*"), *repo.glob("metadata/.*")]
    return sorted(str(p.relative_to(repo)) for p in found)


@pytest.mark.slow
@pytest.mark.parametrize("step", ["publish-targets", "publish-snapshot", "publish-timestamp"])
def test_killed_publish_is_cleaned_by_the_next(f: Fleet, step: str) -> None:
    v2 = f.bundle(2)
    killed = publish_cli(v2, f.repo, f.keys.path, env={CRASH_ENV: step})
    assert killed.returncode == 137, killed.stderr
    left = leftovers(f.repo)
    assert any(p.startswith("targets/.staging.") for p in left), left
    assert any(p.startswith("metadata/.") for p in left), left
    assert f.agent().result == "up-to-date"  # devices still see one coherent v1 repository

    assert Publisher(f.repo, f.keys).publish(v2).created  # orphan metadata does not count
    assert leftovers(f.repo) == []
    versions = {p.name for p in (f.repo / "metadata").glob("*.targets.json")}
    assert len(versions) == Publisher(f.repo, f.keys).targets().version  # no orphan left
    assert f.agent().result == "updated"
    assert committed(f.state)[1] == 2  # type: ignore[index]


def test_publish_waits_for_the_lock_and_spares_a_running_publish(f: Fleet) -> None:
    staging = f.repo / "targets" / ".staging.running"
    staging.mkdir()
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(60)\n",
            str(f.repo),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        pub = Publisher(f.repo, f.keys, PublishConfig(lock_timeout=0.5))
        with pytest.raises(PublishError, match="another publish holds the repository"):
            pub.publish(f.bundle(2))
        assert staging.is_dir()  # owned by the running publish: untouched
    finally:
        holder.kill()
        holder.wait(timeout=30)
        if holder.stdout is not None:
            holder.stdout.close()
    assert Publisher(f.repo, f.keys).publish(f.bundle(2)).created
    assert not staging.exists()


# ---------------------------------------------------------------- keys inside a repository
def test_keys_init_refuses_a_directory_inside_a_repository(f: Fleet, capsys: Any) -> None:
    inside = f.repo / "keys"
    assert cli("keys", "init", "--keys", str(inside)) == 2
    err = capsys.readouterr().err
    assert "inside the repository" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not inside.exists()
    with pytest.raises(urllib.error.HTTPError) as got:
        urllib.request.urlopen(f"{f.server.url}/keys/keys.json", timeout=10)
    got.value.close()
    assert got.value.code == 404
    deeper = f.repo / "targets" / "k"
    with pytest.raises(KeyStoreError, match="inside the repository"):
        KeyStore.init(deeper)


def test_keys_rotate_refuses_a_store_inside_a_repository(tmp_path: Path, make_model: Any) -> None:
    store = KeyStore.init(tmp_path / "repo" / "keys")  # no repository there yet
    shutil.copytree(tmp_path / "repo" / "keys", tmp_path / "keys")
    Publisher(tmp_path / "repo", KeyStore.open(tmp_path / "keys")).publish(
        make_bundle(make_model, tmp_path, 1, seed=1)
    )
    with pytest.raises(KeyStoreError, match="inside the repository"):
        store.rotate("targets")


# ---------------------------------------------------------------- wrong URLs
@pytest.mark.parametrize("url", ["127.0.0.1:8000/repo", "updates.local", "ftp://host/repo"])
def test_repo_url_without_http_is_refused_at_start(tmp_path: Path, url: str, capsys: Any) -> None:
    state = tmp_path / "state"
    argv = ["agent", "--repo-url", url, "--state-dir", str(state), "--once"]
    assert cli(*argv, "--root", str(tmp_path / "root.json")) == 2
    err = capsys.readouterr().err
    assert "expected http:// or https://" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not state.exists()  # refused before anything was written


@pytest.mark.parametrize(
    ("url", "cause"),
    [
        ("http://127.0.0.1:9", "connection refused"),
        ("http://no-such-repository.invalid", "unknown host"),
    ],
)
def test_unreachable_repository_is_one_line(f: Fleet, url: str, cause: str) -> None:
    out = agent_cli(url, f.state, f.repo / "metadata" / "1.root.json")
    assert out.returncode == 0, out.stderr
    reason = json.loads(out.stdout)["reason"]
    assert url in reason and reason.count(cause) == 1 and "\n" not in reason
    assert "urllib3" not in out.stderr and "Retrying" not in out.stderr


# ---------------------------------------------------------------- re-publishing
def test_republishing_the_same_bundle_writes_nothing(f: Fleet, capsys: Any) -> None:
    before = {p.name: p.read_bytes() for p in (f.repo / "metadata").iterdir()}
    assert cli("publish", str(f.v1), "--repo", str(f.repo), "--keys", str(f.keys.path)) == 0
    assert "already published, nothing to do" in capsys.readouterr().out
    assert {p.name: p.read_bytes() for p in (f.repo / "metadata").iterdir()} == before
    assert f.pub.publish(f.v1, channel="beta").changed  # a new channel is a change


def test_an_older_version_needs_allow_older(f: Fleet, capsys: Any) -> None:
    f.pub.publish(f.bundle(3))
    v2 = f.bundle(2)
    argv = ["publish", str(v2), "--repo", str(f.repo), "--keys", str(f.keys.path)]
    assert cli(*argv) == 2
    err = capsys.readouterr().err
    assert "older than version 3" in err and "--allow-older" in err and "Traceback" not in err
    assert "models/mlp/mlp-2.tar" not in f.pub.targets().targets
    assert cli(*argv, "--allow-older") == 0
    assert "models/mlp/mlp-2.tar" in f.pub.targets().targets
    assert not f.pub.publish(f.v1).changed  # an unchanged older version: nothing to do


# ---------------------------------------------------------------- messages name CLI flags
def test_existing_bundle_message_names_the_flag(
    tmp_path: Path, make_model: Any, capsys: Any
) -> None:
    model = make_model(tmp_path / "m.onnx")
    out = tmp_path / "b"
    argv = ["bundle", "create", str(model), "--out", str(out), "--name", "m"]
    assert cli(*argv) == 0
    assert cli(*argv) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "Traceback" not in err
