"""Fleet fixtures: a real PostgreSQL for the session, and fleet services as real processes.

PostgreSQL is Debian's package (scripts/system-deps.sh installs it), run from a temporary
data directory on a free loopback port. Root cannot run postgres, so as root the server
runs as the ``postgres`` user (``runuser``). If it cannot start, the PostgreSQL half of the
suite FAILS with the reason: it is part of what these tests prove, not an optional extra.

A fleet service is ``python -m edgeinfer fleet serve --port 0`` in its own process (so a
test can SIGKILL it); it prints its address on its first line.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fleet_support import FleetProcess, PgCluster, fresh_database, start_fleet


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """``postgresql://fleet@127.0.0.1:PORT``: a PostgreSQL server for the whole session."""
    cluster = PgCluster()
    cluster.start()
    try:
        yield cluster.url
    finally:
        cluster.remove()


@pytest.fixture
def own_postgres() -> Iterator[PgCluster]:
    """A PostgreSQL server for one test alone, which the test may stop and start again."""
    cluster = PgCluster()
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.remove()


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
