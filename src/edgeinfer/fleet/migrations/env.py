"""Alembic environment: run on the connection :func:`edgeinfer.fleet.store.open_store` gives.

There is no alembic.ini: the service builds its Config in code and passes its open
connection in ``config.attributes["connection"]``.
"""

from __future__ import annotations

from alembic import context

from edgeinfer.fleet.store import Base

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying
)
with context.begin_transaction():
    context.run_migrations()
