"""Fleet fixtures: a real PostgreSQL for the session, and fleet services as real processes.

PostgreSQL is Debian's package (scripts/system-deps.sh installs it), run from a temporary
data directory on a free loopback port. Root cannot run postgres, so as root the server
runs as the ``postgres`` user (``runuser``). If it cannot start, the PostgreSQL half of the
suite FAILS with the reason: it is part of what these tests prove, not an optional extra.

A fleet service is ``python -m edgeinfer fleet serve --port 0`` in its own process (so a
test can SIGKILL it); it prints its address on its first line.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_support import FleetProcess, free_port, fresh_database, start_fleet


def _pg_bin(name: str) -> str:
    found = shutil.which(name) or next(
        iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None
    )
    if found is None:
        pytest.fail(
            f"PostgreSQL's {name} is not installed: run scripts/system-deps.sh "
            "(apt-get install postgresql) to run the fleet tests on PostgreSQL"
        )
    return found


def _as_pg_user(cmd: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return cmd
    if shutil.which("runuser") is None:
        pytest.fail("running as root, and runuser is missing to run postgres as another user")
    return ["runuser", "-u", "postgres", "--", *cmd]


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """``postgresql://fleet@127.0.0.1:PORT``: a PostgreSQL server for the whole session."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    # not under pytest's base temp dir: that one is private to root (0700)
    root = Path(tempfile.mkdtemp(prefix="edgeinfer-pg-"))
    data, log = root / "data", root / "server.log"
    if os.geteuid() == 0:
        import pwd

        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            pytest.fail("running as root and there is no 'postgres' user to run PostgreSQL")
        os.chown(root, pw.pw_uid, pw.pw_gid)
    port = free_port()
    run = subprocess.run(
        _as_pg_user([initdb, "-D", str(data), "-A", "trust", "-U", "fleet", "--no-sync"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if run.returncode != 0:
        pytest.fail(f"initdb failed: {run.stderr.strip()[-500:]}")
    options = f"-h 127.0.0.1 -p {port} -k {root} -c fsync=off -c max_connections=200"
    start = subprocess.run(
        _as_pg_user([pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "start"]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    if start.returncode != 0:
        tail = log.read_text()[-500:] if log.exists() else ""
        pytest.fail(f"PostgreSQL did not start: {start.stderr.strip()[-300:]} {tail}")
    try:
        yield f"postgresql://fleet@127.0.0.1:{port}"
    finally:
        subprocess.run(
            _as_pg_user([pg_ctl, "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def fleet(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FleetProcess]:
    """One fleet service per backend for a test module (tests use their own devices)."""
    db = fresh_database(request, request.param, tmp_path_factory.mktemp("fleetdb"))
    service = start_fleet(db)
    try:
        yield service
    finally:
        service.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database of each backend, for tests that start their own service."""
    return fresh_database(request, request.param, tmp_path)
