"""Promotion: a candidate worse than the current model beyond its confidence interval is blocked."""

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from assets.benchmark import (
    benchmark_new_versions,
    candidate_not_worse_than_current,
    current_model,
    model_versions,
    promotion_candidate,
)
from assets.resources import IdglowSettings
from idglow.profiles import load_profile
from idglow.storage import write_json_atomic, write_parquet_atomic

pytestmark = pytest.mark.slow  # materialises the benchmark assets


def setup(settings: IdglowSettings, candidate_face_sim: float) -> None:
    paths = settings.paths
    registry = pd.DataFrame(
        [
            {
                "version": "dpo-good",
                "kind": "dpo",
                "lora_dir": "/x",
                "checkpoint_sha256": "a" * 64,
                "shard_manifest_sha256": "b" * 64,
                "registered_at": 1.0,
            },
            {
                "version": "dpo-new",
                "kind": "dpo",
                "lora_dir": "/y",
                "checkpoint_sha256": "c" * 64,
                "shard_manifest_sha256": "d" * 64,
                "registered_at": 2.0,
            },
        ]
    )
    write_parquet_atomic(paths.table("model_registry"), registry)
    write_json_atomic(paths.asset_dir("model_registry") / "current.json", {"version": "dpo-good"})
    for version, face_sim in (("dpo-good", 0.6), ("dpo-new", candidate_face_sim)):
        rng = np.random.default_rng(0)  # the same noise for both: only the FaceSim mean differs
        write_parquet_atomic(
            paths.asset_dir("benchmark_results") / f"{version}.parquet",
            pd.DataFrame({"face_sim": rng.normal(face_sim, 0.05, 40), "aesthetic": rng.normal(5.0, 0.2, 40)}),
        )


def promote(settings: IdglowSettings):
    with dg.DagsterInstance.ephemeral() as instance:
        return dg.materialize(
            [promotion_candidate, candidate_not_worse_than_current, current_model],
            instance=instance,
            resources={"settings": settings},
            raise_on_error=False,
        )


def test_a_worse_model_is_not_promoted_and_a_good_one_is(storage_env):
    settings = IdglowSettings.from_profile(load_profile())
    setup(settings, candidate_face_sim=0.4)
    blocked = promote(settings)
    assert {e.asset_key.to_user_string() for e in blocked.get_asset_materialization_events()} == {"promotion_candidate"}
    (check,) = blocked.get_asset_check_evaluations()
    assert not check.passed and check.metadata["worse_on"].value == "face_sim"
    current = settings.paths.asset_dir("model_registry") / "current.json"
    assert '"dpo-good"' in current.read_text()

    setup(settings, candidate_face_sim=0.61)
    promoted = promote(settings)
    assert promoted.get_asset_check_evaluations()[0].passed
    assert '"dpo-new"' in current.read_text()


def test_retraining_sensor_waits_for_enough_newly_accepted_pairs(storage_env):
    from assets.benchmark import enough_new_accepted_pairs

    settings = IdglowSettings.from_profile(load_profile())  # the demo asks for 10 new pairs
    folder = settings.paths.asset_dir("accepted_pairs")
    write_parquet_atomic(folder / "batch-a.parquet", pd.DataFrame({"pair_id": [f"a{i}" for i in range(6)]}))
    with dg.DagsterInstance.ephemeral() as instance:
        waiting = enough_new_accepted_pairs(
            dg.build_sensor_context(instance=instance, resources={"settings": settings})
        )
        assert isinstance(waiting, dg.SkipReason) and "6 new accepted pairs" in waiting.skip_message
        write_parquet_atomic(folder / "batch-b.parquet", pd.DataFrame({"pair_id": [f"b{i}" for i in range(5)]}))
        due = enough_new_accepted_pairs(dg.build_sensor_context(instance=instance, resources={"settings": settings}))
        assert [r.run_key for r in due.run_requests] == ["retrain-11"] and due.cursor == "11"
        after = enough_new_accepted_pairs(
            dg.build_sensor_context(instance=instance, cursor=due.cursor, resources={"settings": settings})
        )
        assert isinstance(after, dg.SkipReason)


def test_new_versions_are_those_of_this_storage_roots_registry(storage_env):
    # The instance keeps the partitions of every storage root it served; another root's versions
    # have no registry entry here and must not be benchmarked.
    settings = IdglowSettings.from_profile(load_profile())
    setup(settings, candidate_face_sim=0.6)
    (settings.paths.asset_dir("benchmark_results") / "dpo-new.parquet").unlink()
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(model_versions.name, ["dpo-good", "dpo-new", "dpo-elsewhere"])
        requests = benchmark_new_versions(dg.build_sensor_context(instance=instance, resources={"settings": settings}))
        assert [r.partition_key for r in requests] == ["dpo-new"]
