"""`idglow demo`: materialise every asset on the demo profile into the persistent instance.

The runs land in ``DAGSTER_HOME`` (``var/dagster`` unless set), so ``make ui`` shows them
afterwards with their metadata.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from assets.preference import generation_rounds
from idglow.storage import write_text_atomic

DEMO_ROUND = "round-000"

REPO_INSTANCE_CONFIG = Path(__file__).resolve().parent.parent / "dagster.yaml"


def ensure_dagster_home(default: Path | None = None) -> Path:
    """Use ``DAGSTER_HOME`` if set, else ``./var/dagster``; make sure it holds the instance config."""
    home = Path(os.environ.get("DAGSTER_HOME") or default or Path.cwd() / "var" / "dagster").absolute()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists() and REPO_INSTANCE_CONFIG.exists():
        config.symlink_to(REPO_INSTANCE_CONFIG)
    os.environ["DAGSTER_HOME"] = str(home)
    return home


@dataclass(frozen=True)
class DemoRun:
    run_id: str
    seconds: float
    storage_root: Path
    summary_path: Path
    materialized: list[str]


def run_demo() -> DemoRun:
    os.environ.setdefault("IDGLOW_PROFILE", "demo")
    if os.environ["IDGLOW_PROFILE"] != "demo":
        raise SystemExit("`idglow demo` runs the demo profile; unset IDGLOW_PROFILE or set it to demo")
    ensure_dagster_home()
    from pipelines.definitions import defs  # noqa: PLC0415 - after the environment is settled

    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(generation_rounds.name, [DEMO_ROUND])
        job = defs.resolve_job_def("materialize_everything")
        result = job.execute_in_process(instance=instance, partition_key=DEMO_ROUND)
    seconds = time.perf_counter() - started

    storage_root = Path(defs.resources["settings"].storage_root)
    lines = [
        "# idglow demo run",
        "",
        "Demo numbers come from tiny random-weight models and a generated dataset: they show the",
        "plumbing works, not model quality.",
        "",
        f"- run id: `{result.run_id}` ({seconds:.1f} s)",
        f"- storage root: `{storage_root}`",
        "",
        "| asset | key outputs |",
        "|---|---|",
    ]
    materialized = []
    for event in result.get_asset_materialization_events():
        materialization = event.event_specific_data.materialization
        name = materialization.asset_key.to_user_string()
        materialized.append(name)
        uris = [f"`{v.value}`" for k, v in materialization.metadata.items() if k.endswith("_uri")]
        lines.append(f"| {name} | {', '.join(uris)} |")
    summary_path = write_text_atomic(storage_root / "demo_summary.md", "\n".join(lines) + "\n")
    return DemoRun(result.run_id, seconds, storage_root, summary_path, materialized)
