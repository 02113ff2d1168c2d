"""A stage submitted to a Ray cluster as a Ray job, through dagster-ray's Pipes client.

    python -m idglow.inference.jobs <storage root> <request file>

The Dagster step writes the stage's request (``StageRequest``: the work items, the replica
factory, the batching) under the storage root, which every node mounts at the same path, and
submits this module as the job's entrypoint (``submit_stage``). The job runs the same
``run_stage`` as an in-process stage, on the cluster it runs in, streams its progress lines to
the Dagster run through Pipes, and writes the result table beside the request, atomically; the
step reads it back. A request's folder is keyed by its content, so a resubmitted stage finds its
finished outputs (``run_stage`` skips complete items) and rewrites the same result table.
"""

from __future__ import annotations

import hashlib
import pickle
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from idglow.inference.engine import Replica, StageResult, run_stage
from idglow.storage import write_bytes_atomic

JOBS_FOLDER = "ray_jobs"


@dataclass(frozen=True)
class StageRequest:
    """What a Ray job needs to run one stage: plain values, pickled by the step that submits it."""

    stage: str
    items: pa.Table
    replica_factory: Callable[[], Replica]
    batch_size: int
    group_column: str | None
    workers: int | None

    def key(self) -> str:
        """The request's content hash: the same stage over the same items with the same factory."""
        return hashlib.sha256(pickle.dumps(self)).hexdigest()[:16]


def request_folder(request: StageRequest) -> str:
    """The request's storage-relative folder: ``ray_jobs/<stage>-<content hash>``."""
    return f"{JOBS_FOLDER}/{request.stage.replace(' ', '-')}-{request.key()}"


def write_request(request: StageRequest, storage_root: Path) -> str:
    """Write the request under the storage root; returns its storage-relative path."""
    path = f"{request_folder(request)}/request.pkl"
    write_bytes_atomic(Path(storage_root) / path, pickle.dumps(request))
    return path


def results_path(request_path: str) -> str:
    return str(Path(request_path).with_name("results.parquet"))


def run_request(storage_root: Path, request_path: str, logger: Any = None) -> StageResult:
    """Run a written request on the Ray this process is connected to (or starts) and write its
    result table beside it."""
    # The request was written by the pipeline's own step under the storage root: trusted input.
    request: StageRequest = pickle.loads((Path(storage_root) / request_path).read_bytes())
    from idglow.inference.engine import RayOptions

    result = run_stage(
        request.items,
        request.replica_factory,
        storage_root,
        stage=request.stage,
        options=RayOptions(address="auto", workers=request.workers),
        batch_size=request.batch_size,
        group_column=request.group_column,
        logger=logger,
    )
    sink = pa.BufferOutputStream()
    pq.write_table(result.table, sink)
    write_bytes_atomic(Path(storage_root) / results_path(request_path), sink.getvalue().to_pybytes())
    return result


def submit_stage(
    context,
    client,
    request: StageRequest,
    storage_root: Path,
    python: str = "python",
) -> StageResult:
    """Submit ``request`` as a Ray job through ``client`` (a ``dagster_ray.PipesRayJobClient``),
    wait for it with its logs streamed into the run, and return its result table."""
    request_path = write_request(request, storage_root)
    root = str(Path(storage_root).absolute())
    invocation = client.run(
        context=context,
        submit_job_params={"entrypoint": f"{python} -m idglow.inference.jobs {root} {request_path}"},
    )
    table = pq.read_table(Path(storage_root) / results_path(request_path))
    summary = next(
        (message["summary"] for message in _custom_messages(invocation) if "summary" in message),
        {"stage": request.stage, "items": len(table)},
    )
    return StageResult(table, summary)


def _custom_messages(invocation) -> list[dict]:
    """The custom messages a Pipes job reported (``report_custom_message``), oldest first."""
    return [message for message in invocation.get_custom_messages() if isinstance(message, dict)]


def main(argv: list[str] | None = None) -> None:
    from dagster_pipes import open_dagster_pipes

    storage_root, request_path = (argv or sys.argv[1:])[:2]
    with open_dagster_pipes() as pipes:
        result = run_request(Path(storage_root), request_path, logger=pipes.log)
        pipes.report_custom_message({"summary": result.progress})


if __name__ == "__main__":
    from idglow.environment import settle

    settle()
    main()
