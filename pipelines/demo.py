"""`idglow demo`: materialise every asset on the demo profile into the persistent instance.

The runs land in ``DAGSTER_HOME`` (``var/dagster`` unless set), so ``make ui`` shows them
afterwards with their metadata.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from assets.partitions import add_partitions
from assets.preference import generation_rounds
from idglow.storage import write_text_atomic
from pipelines.instance import ensure_dagster_home

DEMO_ROUND = "round-000"


@dataclass(frozen=True)
class DemoRun:
    run_id: str
    seconds: float
    storage_root: Path
    summary_path: Path
    materialized: list[str]


def run_sensor(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    name: str,
    rounds: int = 1,
    execute: Callable[[str, dict], object] | None = None,
) -> list:
    """What the daemon does with a sensor, in this process: evaluate it (up to ``rounds`` times,
    carrying its cursor, until it skips or requests nothing), record the asset events and the
    partitions it reports, and execute the runs it requests: in this process, or with
    ``execute(job_name, tags)`` (the partition key among the tags). Returns the runs' results."""
    sensor = defs.get_sensor_def(name)
    cursor, results = None, []
    for _ in range(rounds):
        context = dg.build_sensor_context(
            instance=instance, cursor=cursor, resources={"settings": defs.resources["settings"]}
        )
        answer = sensor(context)
        if isinstance(answer, dg.SkipReason):
            break
        result = answer if isinstance(answer, dg.SensorResult) else dg.SensorResult(run_requests=list(answer))
        for request in result.dynamic_partitions_requests or []:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        for event in result.asset_events or []:
            instance.report_runless_asset_event(event)
        cursor = result.cursor or cursor
        if not result.run_requests:
            break
        for request in result.run_requests:
            job_name = request.job_name or sensor.job_name
            if execute is not None:
                partition = {"dagster/partition": request.partition_key} if request.partition_key else {}
                results.append(execute(job_name, {**request.tags, **partition}))
                continue
            job = defs.resolve_job_def(job_name)
            results.append(
                job.execute_in_process(instance=instance, partition_key=request.partition_key, tags=request.tags)
            )
    return results


def run_demo() -> DemoRun:
    os.environ.setdefault("IDGLOW_PROFILE", "demo")
    if os.environ["IDGLOW_PROFILE"] != "demo":
        raise SystemExit("`idglow demo` runs the demo profile; unset IDGLOW_PROFILE or set it to demo")
    ensure_dagster_home()
    from pipelines.definitions import defs  # noqa: PLC0415 - after the environment is settled

    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        add_partitions(instance, generation_rounds, [DEMO_ROUND])
        job = defs.resolve_job_def("materialize_everything")
        result = job.execute_in_process(instance=instance, partition_key=DEMO_ROUND)
        # What the daemon does for a finished review batch (auto mode finishes it at once), then
        # registration, Table 3's ablation (its task-adaptive and + DPO runs are the pipeline's
        # own, reused), the benchmark of every version, promotion and the report, which
        # tabulates the ablation too.
        reviewed = run_sensor(defs, instance, "review_batches_finished")
        reviewed.append(defs.resolve_job_def("register_models").execute_in_process(instance=instance))
        reviewed.append(defs.resolve_job_def("sft_ablation_job").execute_in_process(instance=instance))
        reviewed += run_sensor(defs, instance, "benchmark_new_versions", rounds=3)
    seconds = time.perf_counter() - started

    storage_root = defs.resources["settings"].paths.root  # storage_root may be a dg.EnvVar here, outside a run
    lines = [
        "# idglow demo run",
        "",
        "Demo numbers come from tiny models on a generated world (a generator pre-trained on its group",
        "scenes, face and prompt models trained on it, CLIP and the aesthetic head random): they show",
        "what the method does on that world, not the quality of any real model.",
        "",
        f"- run ids: `{result.run_id}` (everything up to the review queue), "
        + ", ".join(f"`{r.run_id}` ({r.job_def.name})" for r in reviewed)
        + f" ({seconds:.1f} s)",
        f"- storage root: `{storage_root}`",
        "",
        "| asset | key outputs |",
        "|---|---|",
    ]
    materialized = []
    events = [e for run in (result, *reviewed) for e in run.get_asset_materialization_events()]
    for event in events:
        materialization = event.event_specific_data.materialization
        name = materialization.asset_key.to_user_string()
        materialized.append(name)
        uris = [f"`{v.value}`" for k, v in materialization.metadata.items() if k.endswith("_uri")]
        lines.append(f"| {name} | {', '.join(uris)} |")
    summary_path = write_text_atomic(storage_root / "demo_summary.md", "\n".join(lines) + "\n")
    return DemoRun(result.run_id, seconds, storage_root, summary_path, materialized)
