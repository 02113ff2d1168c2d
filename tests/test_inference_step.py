"""Several stages of one Dagster step on one Ray (``assets.inference.one_ray_for_the_step``), as
``benchmark_results`` and ``sft_ablation`` run their images and their scores: Ray is started once,
each stage uses it and leaves it up, and it is gone when the step's block ends."""

import dagster as dg
import pyarrow as pa
import pytest
import ray
from dagster_ray import RayResource

from assets.inference import IdglowRay, one_ray_for_the_step, run_on_ray
from idglow.inference.engine import output_path
from idglow.inference.toy import ToyReplicaFactory, toy_output

pytestmark = pytest.mark.slow  # starts a Ray (seconds)


def _items(stage: str, n: int) -> pa.Table:
    ids = [f"{stage}-{i}" for i in range(n)]
    return pa.table({"item_id": ids, "output_path": [output_path(stage, i, {"size": 8}, ".rgb") for i in ids]})


def test_the_stages_of_one_step_share_one_ray_that_ends_with_the_step(tmp_path):
    seen = {}

    @dg.asset
    def two_stages(context: dg.AssetExecutionContext, ray_cluster: RayResource) -> None:
        with one_ray_for_the_step(ray_cluster):
            seen["before"] = ray.is_initialized()
            first = run_on_ray(
                context,
                ray_cluster,
                _items("first", 3),
                ToyReplicaFactory(size=8),
                tmp_path,
                stage="first",
                batch_size=2,
            )
            seen["between"] = ray.is_initialized()  # a stage that started its own Ray would have shut it down
            second = run_on_ray(
                context,
                ray_cluster,
                _items("second", 2),
                ToyReplicaFactory(size=8),
                tmp_path,
                stage="second",
                batch_size=2,
            )
            seen["results"] = [first.table.to_pylist(), second.table.to_pylist()]
        seen["after"] = ray.is_initialized()

    assert not ray.is_initialized()
    dg.materialize([two_stages], resources={"ray_cluster": IdglowRay(num_cpus=1)})
    assert (seen["before"], seen["between"], seen["after"]) == (True, True, False)
    rows = [row for table in seen["results"] for row in table]
    assert [row["item_id"] for row in rows] == ["first-0", "first-1", "first-2", "second-0", "second-1"]
    for row in rows:
        assert (tmp_path / row["output_path"]).read_bytes() == toy_output(row["item_id"], 0, 8)
