"""The fleet's database: devices, enrollment tokens, reports, merged sketches, rollouts.

SQLAlchemy 2's typed ORM over SQLite (the default: one file, WAL, ``synchronous=FULL``)
or PostgreSQL (``postgresql://``, through psycopg 3), with the schema made and moved only
by the Alembic migrations under ``migrations/``, which :func:`open_store` runs on startup.
The service keeps no state of its own, so replicas share one PostgreSQL database; the rows
that decide something (a device's counter, a sketch being merged) are locked while a
transaction changes them (``SELECT ... FOR UPDATE``; SQLite takes its one write lock at
``BEGIN IMMEDIATE``). One session per request: :meth:`Store.session`, or
:meth:`Store.read` for one that only reads (on SQLite it takes no write lock).
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.exc import ArgumentError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from edgeinfer.fleet.errors import FleetStoreError

__all__ = [
    "Base",
    "Device",
    "EnrollToken",
    "Report",
    "Rollout",
    "RolloutDevice",
    "RolloutEvent",
    "SketchRow",
    "Store",
    "StoreConfig",
    "database_url",
    "open_store",
    "utc_now",
]

MIGRATIONS = Path(__file__).parent / "migrations"


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class Base(DeclarativeBase):
    pass


class EnrollToken(Base):
    """A token an operator handed out; only its SHA-256 is stored."""

    __tablename__ = "enroll_tokens"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)  # shown to operators
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    uses_left: Mapped[int] = mapped_column(Integer)
    uses: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Device(Base):
    """An enrolled device: its key, the last counter it used, and what it last reported."""

    __tablename__ = "devices"
    __table_args__ = (
        # The dashboard's overview groups every device by these (a covering index: no
        # table scan), and lists the devices heard from last (migration 0003).
        Index(
            "ix_devices_overview", "model", "active_version", "state", "revoked_at",
            "last_report_at",
        ),
        Index("ix_devices_last_report_at", "last_report_at"),
    )  # fmt: skip

    id: Mapped[str] = mapped_column(String(32), primary_key=True)  # d- + sha256(key)[:20]
    public_key: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    token_id: Mapped[str | None] = mapped_column(ForeignKey("enroll_tokens.id"))
    enrolled_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    last_counter: Mapped[int] = mapped_column(BigInteger, default=0)
    last_report_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    hardware_class: Mapped[str] = mapped_column(String(128))
    hardware: Mapped[dict[str, Any]] = mapped_column(JSON)
    agent_device_id: Mapped[str | None] = mapped_column(String(128))
    model: Mapped[str | None] = mapped_column(String(128))
    active_version: Mapped[int | None] = mapped_column(Integer)
    bundle_sha256: Mapped[str | None] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="enrolled")  # last cycle result
    reason: Mapped[str | None] = mapped_column(Text)


class Report(Base):
    """One accepted report, kept whole (the signed text and its signature)."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("device_id", "counter", name="uq_reports_device_counter"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), index=True)
    counter: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    created_at_ms: Mapped[int] = mapped_column(BigInteger)
    bundle_sha256: Mapped[str | None] = mapped_column(String(64))
    result: Mapped[str | None] = mapped_column(String(16))
    signed_text: Mapped[str] = mapped_column(Text)
    signature: Mapped[bytes] = mapped_column(LargeBinary(64))


class SketchRow(Base):
    """The merged KLL sketch of one (model, version, hardware class, metric)."""

    __tablename__ = "sketches"
    __table_args__ = (
        UniqueConstraint("model", "version", "hardware_class", "metric", name="uq_sketches_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(128))
    version: Mapped[int] = mapped_column(Integer)
    hardware_class: Mapped[str] = mapped_column(String(128))
    metric: Mapped[str] = mapped_column(String(80))
    n: Mapped[int] = mapped_column(BigInteger)
    kll: Mapped[bytes] = mapped_column(LargeBinary)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


class Rollout(Base):
    """A staged rollout of one model version; ``revision`` grows with every change of it.

    Shares are percents of the model's devices; thresholds are fractions (0.1 = 10 %).
    """

    __tablename__ = "rollouts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[int] = mapped_column(Integer)
    target_sha256: Mapped[str | None] = mapped_column(String(64))  # the TUF target, if named
    target_length: Mapped[int | None] = mapped_column(BigInteger)  # bytes
    previous_version: Mapped[int | None] = mapped_column(Integer)  # latency baseline
    stages: Mapped[list[float]] = mapped_column(JSON)  # percents, increasing, last 100
    stage: Mapped[int] = mapped_column(Integer)  # index into stages
    state: Mapped[str] = mapped_column(String(16))  # running|paused|halted|aborted|done
    max_failure: Mapped[float] = mapped_column(Float)  # failure share that halts
    min_devices: Mapped[int] = mapped_column(Integer)  # reporting before a halt can trip
    max_latency_regression: Mapped[float | None] = mapped_column(Float)  # p95 ratio - 1
    soak_s: Mapped[float] = mapped_column(Float)  # seconds a stage lasts at least
    created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    stage_started_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    halt_rule: Mapped[str | None] = mapped_column(String(32))
    halt_detail: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    revision: Mapped[int] = mapped_column(Integer)


class RolloutEvent(Base):
    """One change of a rollout (started, promoted, halted, ...), with the figures behind it."""

    __tablename__ = "rollout_events"
    __table_args__ = (
        # one change per revision: two replicas deciding the same stage cannot both record it
        UniqueConstraint("rollout_id", "revision", name="uq_rollout_events_revision"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer)
    at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    kind: Mapped[str] = mapped_column(String(16))
    stage: Mapped[int] = mapped_column(Integer)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)


class RolloutDevice(Base):
    """What one device's reports say of a rollout's version: ``ok`` or ``failed``."""

    __tablename__ = "rollout_devices"

    rollout_id: Mapped[int] = mapped_column(ForeignKey("rollouts.id"), primary_key=True)
    device_id: Mapped[str] = mapped_column(ForeignKey("devices.id"), primary_key=True)
    outcome: Mapped[str] = mapped_column(String(8))
    stage: Mapped[int] = mapped_column(Integer)  # the stage when it first reported
    reason: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))


@dataclass(frozen=True)
class StoreConfig:
    url: str  # sqlite:///path.db, a bare file path, or postgresql://user@host:port/db
    busy_timeout_s: float = 30.0  # SQLite: seconds a writer waits for the write lock
    pool_size: int = 5  # PostgreSQL connections kept open per service process


def database_url(url: str) -> str:
    """``url`` as SQLAlchemy needs it: a bare path is SQLite, ``postgresql://`` uses psycopg 3."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    if scheme in ("sqlite", "postgresql+psycopg"):
        return url
    raise FleetStoreError(
        f"--db {scheme}://...: unsupported database; expected a file path, sqlite:///PATH "
        "or postgresql://USER@HOST:PORT/DB"
    )


def _engine(config: StoreConfig) -> Engine:
    url = database_url(config.url)
    try:
        if url.startswith("sqlite"):
            engine = create_engine(url, connect_args={"timeout": config.busy_timeout_s})
            _sqlite_pragmas(engine)
            return engine
        return create_engine(url, pool_size=config.pool_size, pool_pre_ping=True)
    except (ArgumentError, ImportError, ValueError) as exc:
        raise FleetStoreError(f"--db: cannot open {config.url!r}: {exc}") from None


def _sqlite_pragmas(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        # SQLAlchemy, not the sqlite3 module, decides when transactions begin (below)
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")  # a commit is on disk before the answer
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        # take the write lock up front: two deferred transactions that both read and then
        # write would deadlock (SQLITE_BUSY at once, busy timeout ignored); a read-only
        # session (Store.read) takes none, WAL readers run beside the writer
        read_only = conn.get_execution_options().get(_READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


_READ_ONLY = "edgeinfer_read_only"


class Store:
    """An engine and its session factory; ``session()`` is one unit of work."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._reads = sessionmaker(
            engine.execution_options(**{_READ_ONLY: True}), expire_on_commit=False
        )
        # SQLite has one writer at a time. This process's writers queue on a lock instead
        # of in SQLite's busy handler, which sleeps up to 100 ms between its tries (under a
        # burst of reports most of a request's time went there).
        self._writer = threading.RLock() if engine.dialect.name == "sqlite" else None

    @property
    def is_sqlite(self) -> bool:
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session whose transaction commits when the block ends, or rolls back."""
        if self._writer is None:
            with self._sessions() as session, session.begin():
                yield session
            return
        with self._writer, self._sessions() as session, session.begin():
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session that only reads: on SQLite it runs beside the writer (no write lock)."""
        with self._reads() as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()


def _migrate(engine: Engine) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # replicas starting together: one migrates, the others wait and find it done
            conn.execute(text("SELECT pg_advisory_xact_lock(7316424271)"))
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def open_store(config: StoreConfig) -> Store:
    """Connect and bring the schema to the newest migration."""
    engine = _engine(config)
    try:
        _migrate(engine)
    except OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise FleetStoreError(f"--db: cannot open {config.url!r}: {reason}") from None
    return Store(engine)
