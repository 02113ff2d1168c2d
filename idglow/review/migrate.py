"""Versioned schema migrations for the review database (Alembic, configured in code).

    idglow review migrate --db var/review.sqlite     # or a postgresql:// URL

Each revision lives in ``idglow/review/migrations/versions``; ``upgrade`` brings any database to
the newest and is run on every start of the store, so an old database is upgraded in place.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def upgrade(url: str, revision: str = "head") -> None:
    command.upgrade(alembic_config(url), revision)


def current_revision(url: str) -> str | None:
    import sqlalchemy as sa
    from alembic.runtime.migration import MigrationContext

    with sa.create_engine(url).connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
