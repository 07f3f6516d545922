"""The schema comes from the migrations alone, matches the ORM, and opens twice."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from fleet_support import free_port
from sqlalchemy import text

from edgeinfer.fleet.errors import FleetStoreError
from edgeinfer.fleet.store import Base, StoreConfig, database_url, open_store

pytestmark = pytest.mark.timeout(120)


def test_the_migrations_make_exactly_the_orm_schema(database: str) -> None:
    store = open_store(StoreConfig(database))
    try:
        with store.engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
            assert diff == []
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0003"
            if store.is_sqlite:
                assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
    finally:
        store.close()
    open_store(StoreConfig(database)).close()  # already at head: nothing to do


def test_database_urls() -> None:
    assert database_url("postgresql://u@h:5/db") == "postgresql+psycopg://u@h:5/db"
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"
    assert database_url("fleet.db").startswith("sqlite:////")
    with pytest.raises(FleetStoreError, match="unsupported database"):
        database_url("mysql://u@h/db")


def test_a_database_that_cannot_be_reached_is_one_line(tmp_path: object) -> None:
    url = f"postgresql://fleet@127.0.0.1:{free_port()}/fleet?connect_timeout=5"
    with pytest.raises(FleetStoreError, match="cannot open") as caught:
        open_store(StoreConfig(url))
    assert "\n" not in str(caught.value)
