"""The review queue in Dagster: the sensor notices finished batches (and only new ones), and the
blocking acceptance-rate check keeps a suspicious batch from becoming DPO shards."""

import dagster as dg
import pandas as pd
import pytest

from assets.preference import dpo_shards
from assets.resources import IdglowSettings
from assets.review import (
    acceptance_rate_within_bounds,
    accepted_pairs,
    review_batches,
    review_batches_finished,
    store_for,
)
from idglow.profiles import load_profile
from idglow.storage import write_parquet_atomic

pytestmark = pytest.mark.slow  # materialises the review assets


def settings_with(**overrides) -> IdglowSettings:
    return type(IdglowSettings.from_profile(load_profile()))(**overrides)


@pytest.fixture
def batch(storage_env):
    """A published batch of four pairs decided automatically: one accept, three rejects."""
    settings = settings_with()
    pairs = [{"pair_id": f"pair-{i}", "deltas": {"identity": 0.1 if i == 0 else -0.1}} for i in range(4)]
    store = store_for(settings)
    store.publish("batch-test", "test", pairs)
    store.decide_automatically(
        "batch-test", "auto-rule", lambda p: "accept" if p["deltas"]["identity"] > 0 else "reject"
    )
    write_parquet_atomic(
        settings.paths.table("auto_filtered_pairs"),
        pd.DataFrame({"pair_id": [p["pair_id"] for p in pairs], "source": "test", "kept": True}),
    )
    return "batch-test"


def test_sensor_reports_finished_batches_once_and_requests_the_training_run(batch):
    settings = settings_with()
    with dg.DagsterInstance.ephemeral() as instance:
        context = dg.build_sensor_context(instance=instance, resources={"settings": settings})
        result = review_batches_finished(context)
        assert [r.partition_key for r in result.run_requests] == [batch]
        assert result.run_requests[0].run_key == f"review-{batch}"
        (event,) = result.asset_events
        assert event.asset_key == dg.AssetKey("review_decisions") and event.partition == batch
        assert event.metadata["accepted"].value == 1 and event.metadata["automatic"].value is True
        # Published outside Dagster (as `idglow review publish` does): the sensor adds the partition.
        assert [r.partition_keys for r in result.dynamic_partitions_requests] == [[batch]]
        again = review_batches_finished(
            dg.build_sensor_context(instance=instance, cursor=result.cursor, resources={"settings": settings})
        )
        assert again.run_requests == [] and again.asset_events == []


def test_acceptance_rate_outside_the_bounds_fails_the_gate_and_no_shards_are_built(batch):
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(review_batches.name, [batch])
        result = dg.materialize(
            [accepted_pairs, acceptance_rate_within_bounds, dpo_shards],
            instance=instance,
            partition_key=batch,
            resources={"settings": settings_with(acceptance_rate_min=0.5, acceptance_rate_max=1.0)},
            raise_on_error=False,
        )
        materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert materialized == {"accepted_pairs"}
        (check,) = result.get_asset_check_evaluations()
        assert not check.passed and check.metadata["acceptance_rate"].value == pytest.approx(0.25)
        assert not (settings_with().paths.asset_dir("dpo_shards") / "manifest.json").exists()

        passing = dg.materialize(
            [accepted_pairs, acceptance_rate_within_bounds],
            instance=instance,
            partition_key=batch,
            resources={"settings": settings_with(acceptance_rate_min=0.2, acceptance_rate_max=0.3)},
        )
        assert passing.get_asset_check_evaluations()[0].passed
        written = pd.read_parquet(settings_with().paths.asset_dir("accepted_pairs") / f"{batch}.parquet")
        assert list(written["pair_id"]) == ["pair-0"] and set(written["review_mode"]) == {"auto (no human review)"}
