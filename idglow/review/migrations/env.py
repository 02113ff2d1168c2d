"""Alembic environment for the review database (online mode only: the store always has a URL)."""

import sqlalchemy as sa
from alembic import context

url = context.config.get_main_option("sqlalchemy.url")
engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
with engine.connect() as connection:
    context.configure(connection=connection, render_as_batch=url.startswith("sqlite"))
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Concurrent upgrades wait here, then see the revision the first one reached (SQLite:
            # the file lock in idglow/review/migrate.py). The key is arbitrary but fixed.
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(7235101)"))
        context.run_migrations()
