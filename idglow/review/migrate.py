"""Versioned schema migrations for the review database (Alembic, configured in code).

    idglow review migrate --db var/storage/demo-review/review.sqlite     # or a postgresql:// URL

Each revision lives in ``idglow/review/migrations/versions``; ``upgrade`` brings any database to
the newest and is run on every start of the store, so an old database is upgraded in place.

Several processes may start on a fresh database at once (the server, a Dagster run, the CLI).
SQLite runs Alembic's DDL outside a transaction, so two of them would both see an empty database
and both create the tables; one fails half-way. An exclusive lock on a file beside the database
lets one upgrade while the others wait, and they then find it at the newest revision. Postgres
takes a transaction-scoped advisory lock in ``migrations/env.py`` for the same reason.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from alembic import command
from alembic.config import Config

from idglow.storage import exclusive_lock

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    with _migration_lock(url):
        command.upgrade(alembic_config(url), revision)


@contextmanager
def _migration_lock(url: str) -> Iterator[None]:
    if not url.startswith("sqlite:///") or url == "sqlite:///:memory:":
        yield
        return
    database = url.removeprefix("sqlite:///")
    with exclusive_lock(database + ".migrate-lock", f"the schema upgrade of {database}"):
        yield


def current_revision(url: str) -> str | None:
    import sqlalchemy as sa
    from alembic.runtime.migration import MigrationContext

    with sa.create_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
