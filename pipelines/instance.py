"""The Dagster instance home (``DAGSTER_HOME``) that `idglow demo` and `make ui` share.

Two processes may start on a fresh home at once (`make ui` while `make demo` runs, two demo
runs): without care one fails on the config link or in Dagster's schema migration, and a
migration cut short leaves a home that no later process can open. The first start therefore
happens under an exclusive lock on ``<home>/.init.lock``: the config is linked and the instance's
SQLite storage is created once, then ``.initialized`` marks the home complete.

    python -m pipelines.instance          # prints the home, ready to use
"""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from idglow.storage import exclusive_lock

REPO_INSTANCE_CONFIG = Path(__file__).resolve().parent.parent / "dagster.yaml"
INITIALIZED_MARKER = ".initialized"


def ensure_dagster_home(default: Path | None = None) -> Path:
    """Use ``DAGSTER_HOME`` if set, else ``default``, else ``./var/dagster``; make sure it holds the
    instance config and a complete instance storage, and export it as ``DAGSTER_HOME``."""
    home = Path(os.environ.get("DAGSTER_HOME") or default or Path.cwd() / "var" / "dagster").absolute()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(home)
    if (home / INITIALIZED_MARKER).exists():
        return home
    with exclusive_lock(home / ".init.lock", f"the first start of the Dagster home {home}"):
        if not (home / INITIALIZED_MARKER).exists():
            config = home / "dagster.yaml"
            if not config.exists() and not config.is_symlink() and REPO_INSTANCE_CONFIG.exists():
                config.symlink_to(REPO_INSTANCE_CONFIG)
            with dg.DagsterInstance.get():  # creates and migrates the storage, once
                pass
            (home / INITIALIZED_MARKER).touch()
    return home


if __name__ == "__main__":
    print(ensure_dagster_home())
