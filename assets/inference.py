"""The Ray resource of the batch-inference stages (idglow.inference, docs/deployment.md)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import dagster as dg
import pyarrow as pa
from dagster_ray import Lifecycle, PipesRayJobClient, RayResource
from pydantic import Field

from idglow.inference.engine import RayOptions, Replica, StageResult, init_ray, ray_session, run_stage
from idglow.inference.jobs import StageRequest, submit_stage


class IdglowRay(RayResource):
    """Ray for the batch-inference stages (``idglow.inference``; docs/deployment.md), as a
    dagster-ray resource: with no ``address`` each stage starts a local Ray for its own duration
    (no dashboard, sized to the machine) and the demo runs as on a laptop; with one
    (``IDGLOW_RAY_ADDRESS``: ``host:port`` of a head, or ``ray://host:10001``) it joins that
    cluster. Another dagster-ray resource (a ``KubeRayCluster``) can stand in for it under the
    same key: the stages use the Ray it connected."""

    address: str | None = Field(default=None, description="A Ray cluster to join; unset: a local Ray per stage.")
    job_address: str | None = Field(
        default=None,
        description="A Ray cluster's dashboard (http://head:8265) to submit each stage to as a Ray job, through "
        "dagster-ray's Pipes client; unset: stages run in the step (on address's cluster or a local Ray).",
    )
    job_python: str = Field(default="python", description="The interpreter a submitted job runs on the cluster.")
    workers: int | None = Field(default=None, description="Model replicas per stage; unset: one per GPU, else one.")
    num_cpus: int | None = Field(default=None, description="The local Ray's CPUs; unset: the machine's.")
    object_store_mb: int = Field(default=256, description="The local Ray's object store (items and results only).")
    # Connected by each stage for its duration (idglow.inference.engine.ray_session), not for the
    # whole run: a run's other steps never pay for an idle Ray. A plain default, not a
    # default_factory: Dagster builds the config schema's default from it, and with a factory a run
    # got dagster-ray's own (connect=True), starting Ray when the resource was initialised.
    lifecycle: Lifecycle = Field(default=Lifecycle(connect=False, cleanup="never"))

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> IdglowRay:
        env = os.environ if env is None else env
        variables = {"address": "IDGLOW_RAY_ADDRESS", "job_address": "IDGLOW_RAY_JOB_ADDRESS"}
        return cls(**{field: dg.EnvVar(variable) for field, variable in variables.items() if env.get(variable)})

    @property
    def host(self) -> str:
        return self.address.removeprefix("ray://").rsplit(":", 1)[0] if self.address else "127.0.0.1"

    @property
    def name(self) -> str:
        return f"Ray cluster at {self.address}" if self.address else "embedded Ray"

    @property
    def ray_address(self) -> str | None:  # type: ignore[override]
        return self.address or None

    @property
    def created(self) -> bool:
        return True

    @property
    def ready(self) -> bool:
        return True

    def options(self) -> RayOptions:
        return RayOptions(self.ray_address, self.workers, self.num_cpus, self.object_store_mb * 1024**2)

    def connect(self, context):
        """With ``lifecycle.connect`` set: the same ``ray.init`` a stage makes, for the whole step."""
        self._context = init_ray(self.options())
        return self._context


def ray_options(ray_cluster: RayResource) -> RayOptions:
    """Where a stage runs for a dagster-ray resource: an ``IdglowRay``'s options, else the Ray
    that resource connected (its address if it left Ray unconnected)."""
    return ray_cluster.options() if isinstance(ray_cluster, IdglowRay) else RayOptions(ray_cluster.ray_address)


@contextlib.contextmanager
def one_ray_for_the_step(ray_cluster: RayResource) -> Iterator[None]:
    """Several stages of one step on one Ray: started (or joined) once, each stage inside uses it,
    so a step of N stages pays an embedded Ray's start-up once, not N times. Submitted stages
    (``job_address``) start nothing here: each is its own Ray job."""
    if isinstance(ray_cluster, IdglowRay) and ray_cluster.job_address:
        yield
        return
    with ray_session(ray_options(ray_cluster)):
        yield


def run_on_ray(
    context: dg.AssetExecutionContext,
    ray_cluster: RayResource,
    items: pa.Table,
    replica_factory: Callable[[], Replica],
    storage_root: Path,
    *,
    stage: str,
    batch_size: int,
    group_column: str | None = None,
) -> StageResult:
    """Run a stage where the resource says: submitted as a Ray job (``job_address``: dagster-ray's
    ``PipesRayJobClient``, the job's progress streamed into this run), or in this step on the Ray
    ``ray_options`` names. Either way ``run_stage`` does the work, so the outputs are the same."""
    if isinstance(ray_cluster, IdglowRay) and ray_cluster.job_address:
        request = StageRequest(stage, items, replica_factory, batch_size, group_column, ray_cluster.workers)
        client = PipesRayJobClient(address=ray_cluster.job_address, poll_interval=1.0)
        return submit_stage(context, client, request, storage_root, python=ray_cluster.job_python)
    return run_stage(
        items,
        replica_factory,
        storage_root,
        stage=stage,
        options=ray_options(ray_cluster),
        batch_size=batch_size,
        group_column=group_column,
        logger=context.log,
    )
