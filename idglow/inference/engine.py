"""One engine for batch inference: a Ray Data pipeline over work items (issue #15).

A stage is a table of work items, one row per item, each with an ``item_id`` and the
``output_path`` of its one output file (storage-relative, a function of the item's id and the
stage's settings: ``output_path``). ``run_stage`` maps batches of items over a pool of Ray actors,
each holding one model replica (one per GPU, ``num_gpus=1``; CPU actors on a laptop) that it loads
once. The actor writes each output atomically under the storage root and returns one result row
per item (storage-relative paths only, so the table holds nothing machine-local).

Exactly once under faults: an item whose output is already complete is skipped, a partial one
left by a killed writer is removed (``idglow.storage.remove_stale_partials``) and written again.
Ray Data restarts an actor that dies and retries its batch (``max_restarts`` /
``max_task_retries``), so a killed worker costs its batch again, never an item twice: results
come back once per batch that finished, and the stage checks every item is there exactly once.

Embedded by default, a cluster by configuration: with no address the stage starts a local Ray for
its own duration (no dashboard, sized to the machine); with one (``IDGLOW_RAY_ADDRESS``, read at
the entry point and passed down) it connects to that cluster; when Ray is already initialised (a
dagster-ray resource connected it) the stage uses that connection and leaves it open.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from idglow.storage import atomic_path, remove_stale_partials, resolve_under

log = logging.getLogger(__name__)

ITEM_ID = "item_id"
OUTPUT_PATH = "output_path"
# What the engine adds to each item's result row; a replica's ``describe`` adds its own columns.
RESULT_COLUMNS = (ITEM_ID, OUTPUT_PATH, "generated", "worker", "seconds")
DEFAULT_OBJECT_STORE_BYTES = 256 * 1024**2  # work items and result rows are small: a laptop keeps its memory


class Replica:
    """One model replica inside one Ray actor: ``run`` computes the outputs of the items whose
    output is missing, ``write`` saves one of them to a (temporary) path, ``is_complete`` tells a
    finished output from a truncated one, ``describe`` adds result columns for every item (also
    the skipped ones). Built once per actor by the stage's picklable replica factory."""

    def run(self, items: list[dict[str, Any]]) -> list[Any]:
        raise NotImplementedError

    def write(self, output: Any, path: Path) -> None:
        raise NotImplementedError

    def is_complete(self, path: Path) -> bool:
        return path.is_file() and path.stat().st_size > 0

    def describe(self, item: dict[str, Any], path: Path) -> dict[str, Any]:
        return {}


def settings_hash(settings: Any) -> str:
    """A short stable hash of a stage's settings (a dataclass or a mapping of plain values)."""
    values = asdict(settings) if is_dataclass(settings) else dict(settings)
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def output_path(stage: str, item_id: str, settings: Any, suffix: str) -> str:
    """The storage-relative output of one item: the stage's folder, the settings' hash, the id."""
    return f"{stage}/{settings_hash(settings)}/{item_id}{suffix}"


@dataclass(frozen=True)
class RayOptions:
    """Where a stage runs. ``address`` unset: a local Ray inside the run with ``num_cpus`` (unset:
    the machine's) and a small object store; set: the cluster there (``host:port`` of its GCS or
    ``ray://host:10001``). ``workers``: model replicas (actors) per stage, unset: one per GPU of
    the cluster, else one."""

    address: str | None = None
    workers: int | None = None
    num_cpus: int | None = None
    object_store_bytes: int = DEFAULT_OBJECT_STORE_BYTES
    log_to_driver: bool = False  # the actors' output stays in Ray's log folder; errors still reach the driver


def init_options(options: RayOptions) -> dict[str, Any]:
    """``ray.init`` arguments for ``options``: sized for an embedded Ray, only the address otherwise
    (a running cluster refuses resource sizes)."""
    common = {"log_to_driver": options.log_to_driver, "configure_logging": False}
    if options.address:
        return {"address": options.address, **common}
    return {
        "address": "local",
        "num_cpus": options.num_cpus or os.cpu_count() or 1,
        "include_dashboard": False,
        "object_store_memory": options.object_store_bytes,
        **common,
    }


def init_ray(options: RayOptions):
    """Start (embedded) or join (address) Ray; returns ``ray.init``'s context."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports from an offline machine
    import ray

    return ray.init(**init_options(options))


@contextlib.contextmanager
def ray_session(options: RayOptions) -> Iterator[None]:
    """Ray for the duration of a stage: the existing connection if there is one (left open),
    else a new one, shut down at the end (an embedded Ray's processes end with it)."""
    import ray

    if ray.is_initialized():
        yield
        return
    init_ray(options)
    try:
        yield
    finally:
        ray.shutdown()


class _StageActor:
    """The Ray Data callable class: one per actor, holding one replica."""

    def __init__(self, replica_factory: Callable[[], Replica], storage_root: str):
        import ray

        self.replica = replica_factory()
        self.root = Path(storage_root)
        actor_id = ray.get_runtime_context().get_actor_id() or f"pid{os.getpid()}"
        self.worker = actor_id[:8]  # stable over the actor's restarts (its process id is not)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        paths = [resolve_under(self.root, row[OUTPUT_PATH]) for row in rows]
        for folder in sorted({path.parent for path in paths}):
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale_partials(folder)  # what a killed attempt of this batch left half written
        todo = [i for i, path in enumerate(paths) if not (path.exists() and self.replica.is_complete(path))]
        started = time.perf_counter()
        if todo:
            outputs = self.replica.run([rows[i] for i in todo])
            if len(outputs) != len(todo):
                raise ValueError(f"the replica returned {len(outputs)} outputs for {len(todo)} items")
            for i, output in zip(todo, outputs, strict=True):
                with atomic_path(paths[i]) as tmp:
                    self.replica.write(output, tmp)
        seconds = time.perf_counter() - started
        generated = set(todo)
        extras = [self.replica.describe(row, path) for row, path in zip(rows, paths, strict=True)]
        columns: dict[str, list] = {
            ITEM_ID: [row[ITEM_ID] for row in rows],
            OUTPUT_PATH: [row[OUTPUT_PATH] for row in rows],
            "generated": [i in generated for i in range(len(rows))],
            "worker": [self.worker] * len(rows),
            "seconds": [seconds / len(todo) if i in generated else 0.0 for i in range(len(rows))],
        }
        for name in extras[0] if extras else ():
            columns[name] = [extra[name] for extra in extras]
        return pa.table(columns)


def batches_of(items: pa.Table, batch_size: int, group_column: str | None = None) -> list[pa.Table]:
    """``items`` cut into batches of about ``batch_size`` rows (one Ray Data block each, so one
    task per batch and a killed worker costs one batch); with ``group_column``, a run of rows with
    one value (a job's K candidates) is never split, so its shared encoding is done once."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    if group_column is None:
        return [items.slice(start, batch_size) for start in range(0, items.num_rows, batch_size)]
    groups = items.column(group_column).to_pylist()
    batches, start = [], 0
    for end in range(1, len(groups) + 1):
        group_ends = end == len(groups) or groups[end] != groups[end - 1]
        if group_ends and (end - start >= batch_size or end == len(groups)):
            batches.append(items.slice(start, end - start))
            start = end
    return batches


@dataclass
class Progress:
    """Items done of the total, images (outputs computed now) per second and the ETA, in total
    and per worker; ``update`` logs one line per finished batch."""

    stage: str
    total: int
    logger: Any = None
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    generated: int = 0
    workers: dict[str, dict[str, float]] = field(default_factory=dict)

    def update(self, results: pa.Table) -> None:
        generated = results.column("generated").to_pylist()
        seconds = results.column("seconds").to_pylist()
        worker = results.column("worker")[0].as_py() if results.num_rows else "-"
        self.done += results.num_rows
        self.generated += sum(generated)
        entry = self.workers.setdefault(worker, {"items": 0, "generated": 0, "busy_s": 0.0})
        entry["items"] += results.num_rows
        entry["generated"] += sum(generated)
        entry["busy_s"] += sum(s for s, g in zip(seconds, generated, strict=True) if g)
        (self.logger or log).info(self.line(worker))

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.started, 1e-9)

    def line(self, worker: str | None = None) -> str:
        rate, items_rate = self.generated / self.elapsed(), self.done / self.elapsed()
        eta = (self.total - self.done) / items_rate if items_rate else float("inf")
        text = (
            f"{self.stage}: {self.done}/{self.total} items, {self.generated} generated, "
            f"{rate:.2f} images/s, ETA {_duration(eta)}"
        )
        if worker is not None:
            entry = self.workers[worker]
            text += f" (worker {worker}: {int(entry['items'])} items, {_rate(entry):.2f} images/s)"
        return text

    def summary(self) -> dict[str, Any]:
        return {
            "items_done": self.done,
            "items_total": self.total,
            "generated": self.generated,
            "seconds": round(self.elapsed(), 3),
            "images_per_second": round(self.generated / self.elapsed(), 4),
            "workers": {
                name: {"items": int(e["items"]), "generated": int(e["generated"]), "images_per_second": _rate(e)}
                for name, e in sorted(self.workers.items())
            },
        }


def _rate(entry: Mapping[str, float]) -> float:
    return round(entry["generated"] / entry["busy_s"], 4) if entry["busy_s"] else 0.0


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


@dataclass
class StageResult:
    table: pa.Table  # the items' rows in their order, with RESULT_COLUMNS and the replica's columns
    progress: dict[str, Any]

    @property
    def generated(self) -> int:
        return int(pc.sum(self.table.column("generated")).as_py() or 0)


def run_stage(
    items: pa.Table,
    replica_factory: Callable[[], Replica],
    storage_root: str | os.PathLike[str],
    *,
    stage: str,
    options: RayOptions = RayOptions(),
    batch_size: int = 8,
    group_column: str | None = None,
    logger: Any = None,
) -> StageResult:
    """Run one stage over ``items`` (``item_id``, ``output_path`` and whatever the replica reads)
    on Ray Data; returns one result row per item in the items' order and the progress summary.
    ``replica_factory`` is a picklable callable (plain values, no resources) that each actor calls
    once to build its replica."""
    for column in (ITEM_ID, OUTPUT_PATH):
        if column not in items.column_names:
            raise ValueError(f"work items need a {column!r} column")
    ids = items.column(ITEM_ID).to_pylist()
    if len(set(ids)) != len(ids):
        raise ValueError(f"{stage}: item ids must be unique")
    if not ids:
        return StageResult(_empty_results(), Progress(stage, 0, logger).summary())
    started = time.perf_counter()
    with ray_session(options):
        import ray

        ray_start_s = time.perf_counter() - started
        progress = Progress(stage, len(ids), logger)

        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the stage logs its own progress line per batch
        context.print_on_execution_start = False
        gpus = int(ray.cluster_resources().get("GPU", 0))
        workers = options.workers or max(gpus, 1)
        dataset = ray.data.from_arrow(batches_of(items, batch_size, group_column)).map_batches(
            _StageActor,
            fn_constructor_kwargs={"replica_factory": replica_factory, "storage_root": str(storage_root)},
            batch_size=None,  # one block is one batch (batches_of)
            batch_format="pyarrow",
            # Ray Data's actor pools restart a dead actor (its replica loaded again) and retry its
            # batch without limit by default (max_restarts=-1, max_task_retries=-1 in Ray 2.60's
            # ActorPoolMapOperator); a retried batch skips the outputs the dead attempt completed.
            compute=ray.data.ActorPoolStrategy(size=workers),
            num_gpus=1 if gpus else 0,
            num_cpus=1,
        )
        parts = []
        for results in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
            progress.update(results)
            parts.append(results)
    table = pa.concat_tables(parts, promote_options="default")
    got = table.column(ITEM_ID).to_pylist()
    if sorted(got) != sorted(ids):
        raise RuntimeError(f"{stage}: {len(got)} results for {len(ids)} items (some missing or duplicated)")
    position = {item: i for i, item in enumerate(ids)}
    table = table.take(pc.sort_indices(pa.array([position[item] for item in got])))
    (logger or log).info(progress.line())
    return StageResult(table, {**progress.summary(), "ray_start_s": round(ray_start_s, 3)})


def _empty_results() -> pa.Table:
    return pa.table(
        {
            ITEM_ID: pa.array([], pa.string()),
            OUTPUT_PATH: pa.array([], pa.string()),
            "generated": pa.array([], pa.bool_()),
            "worker": pa.array([], pa.string()),
            "seconds": pa.array([], pa.float64()),
        }
    )
