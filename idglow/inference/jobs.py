"""A stage submitted to a Ray cluster as a Ray job.

    python -m idglow.inference.jobs <storage root> <request file>

The submitter writes the stage's request (``StageRequest``: the work items, the replica factory,
the batching) under the storage root, which every node mounts at the same path, and submits this
module as the job's entrypoint. The job runs the same ``run_stage`` as an in-process stage, on the
cluster it runs in, and writes the result table and the progress summary beside the request,
atomically; the submitter reads them back (``run_as_job``, shared by both submitters). A
request's folder is keyed by its content, so a resubmitted stage finds its finished outputs
(``run_stage`` skips complete items) and rewrites the same result table.

Two submitters: ``submit_stage`` for a Dagster step (dagster-ray's Pipes client, the job's
progress lines stream into the run through Pipes) and ``submit_stage_job`` for a plain process
such as ``idglow eval external`` (Ray's ``JobSubmissionClient``, the job's log lines echoed as
they come). The job tells the two apart by whether Pipes launched it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from idglow.inference.engine import Replica, StageResult, run_stage
from idglow.storage import write_bytes_atomic, write_json_atomic

if TYPE_CHECKING:  # Ray's job client is imported by the submitter that uses it
    from ray.job_submission import JobStatus, JobSubmissionClient

JOBS_FOLDER = "ray_jobs"
FAILED_LOG_LINES = 40  # how much of a failed job's log its error shows


@dataclass(frozen=True)
class StageRequest:
    """What a Ray job needs to run one stage: plain values, pickled by the process that submits it."""

    stage: str
    items: pa.Table
    replica_factory: Callable[[], Replica]
    batch_size: int
    group_column: str | None
    workers: int | None

    def key(self) -> str:
        """The request's content hash: the same stage over the same items with the same factory."""
        return hashlib.sha256(pickle.dumps(self)).hexdigest()[:16]


class RayJobFailed(RuntimeError):
    """A submitted stage's job ended without succeeding: its id, final status and the tail of its log."""

    def __init__(self, job_id: str, status: str, logs: str):
        tail = "\n".join(logs.splitlines()[-FAILED_LOG_LINES:])
        super().__init__(f"Ray job {job_id} ended {status}; the last lines of its log:\n{tail}")
        self.job_id, self.status, self.logs = job_id, status, logs


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


def summary_path(request_path: str) -> str:
    return str(Path(request_path).with_name("summary.json"))


def job_entrypoint(storage_root: Path, request_path: str, python: str = "python") -> str:
    """The job's command line: this module on the cluster's ``python``, the storage root absolute
    (the job's working directory is not the submitter's)."""
    return f"{python} -m idglow.inference.jobs {Path(storage_root).absolute()} {request_path}"


def write_result(storage_root: Path, request_path: str, result: StageResult) -> None:
    """The job's outputs beside its request: the result table, then the progress summary."""
    sink = pa.BufferOutputStream()
    pq.write_table(result.table, sink)
    write_bytes_atomic(Path(storage_root) / results_path(request_path), sink.getvalue().to_pybytes())
    write_json_atomic(Path(storage_root) / summary_path(request_path), result.progress)


def read_result(storage_root: Path, request_path: str) -> StageResult:
    """What ``write_result`` wrote, as the ``StageResult`` an in-process stage returns."""
    table = pq.read_table(Path(storage_root) / results_path(request_path))
    return StageResult(table, json.loads((Path(storage_root) / summary_path(request_path)).read_text()))


def run_request(storage_root: Path, request_path: str, logger: Any = None) -> StageResult:
    """Run a written request on the Ray this process is connected to (or starts) and write its
    result table and summary beside it."""
    # The request was written by the pipeline's own submitter under the storage root: trusted input.
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
    write_result(storage_root, request_path, result)
    return result


def run_as_job(
    request: StageRequest, storage_root: Path, submit: Callable[[str], None], python: str = "python"
) -> StageResult:
    """What both submitters share: write the request, ``submit`` its entrypoint (which returns
    once the job succeeded and raises otherwise), read the job's result back."""
    request_path = write_request(request, storage_root)
    submit(job_entrypoint(storage_root, request_path, python))
    return read_result(storage_root, request_path)


def submit_stage(context, client, request: StageRequest, storage_root: Path, python: str = "python") -> StageResult:
    """Submit ``request`` as a Ray job through ``client`` (a ``dagster_ray.PipesRayJobClient``),
    wait for it with its logs streamed into the run, and return its result table."""

    def submit(entrypoint: str) -> None:
        client.run(context=context, submit_job_params={"entrypoint": entrypoint})

    return run_as_job(request, storage_root, submit, python)


def submit_stage_job(
    address: str,
    request: StageRequest,
    storage_root: Path,
    *,
    python: str = "python",
    echo: Callable[[str], None] = print,
    poll_seconds: float = 1.0,
) -> StageResult:
    """Submit ``request`` as a Ray job to the dashboard at ``address`` (``http://head:8265``) with
    Ray's own ``JobSubmissionClient``, for a process Dagster did not start: each of the job's log
    lines goes to ``echo`` as it comes; a job that does not succeed raises ``RayJobFailed``."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    submit = partial(_run_job, client, echo=echo, poll_seconds=poll_seconds)
    return run_as_job(request, storage_root, submit, python)


def _run_job(client: JobSubmissionClient, entrypoint: str, *, echo: Callable[[str], None], poll_seconds: float) -> None:
    """Submit ``entrypoint``, follow it to its end, raise ``RayJobFailed`` unless it succeeded."""
    from ray.job_submission import JobStatus

    job_id = client.submit_job(entrypoint=entrypoint)
    status, logs = follow_job(client, job_id, echo, poll_seconds)
    if status != JobStatus.SUCCEEDED:
        raise RayJobFailed(job_id, str(status.value), logs)


def follow_job(
    client: JobSubmissionClient, job_id: str, echo: Callable[[str], None], poll_seconds: float = 1.0
) -> tuple[JobStatus, str]:
    """Poll the job until it ends, echoing each new complete log line once (the last, unfinished
    one when it has ended); returns its final status and whole log."""
    shown = 0
    while True:
        status = client.get_job_status(job_id)  # before the logs: once ended, the logs read after are whole
        logs = client.get_job_logs(job_id)
        upto = len(logs) if status.is_terminal() else logs.rfind("\n") + 1
        for line in logs[shown:upto].splitlines():
            echo(line)
        shown = max(shown, upto)
        if status.is_terminal():
            return status, logs
        time.sleep(poll_seconds)


def _stdout_logger() -> logging.Logger:
    """The job's logger when Pipes did not launch it: plain lines on stdout, which Ray keeps as
    the job's log and the submitter echoes."""
    logger = logging.getLogger("idglow.inference.jobs")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


def launched_by_pipes() -> bool:
    """Whether a Dagster step's Pipes client launched this process (it passes its context in the
    environment, as dagster-ray's ``PipesRayJobClient`` does)."""
    from dagster_pipes import PipesEnvVarParamsLoader

    return PipesEnvVarParamsLoader().is_dagster_pipes_process()


def main(argv: list[str] | None = None) -> None:
    storage_root, request_path = (argv or sys.argv[1:])[:2]
    if not launched_by_pipes():
        run_request(Path(storage_root), request_path, logger=_stdout_logger())
        return
    from dagster_pipes import open_dagster_pipes

    with open_dagster_pipes() as pipes:
        run_request(Path(storage_root), request_path, logger=pipes.log)


if __name__ == "__main__":
    from idglow.environment import settle

    settle()
    main()
