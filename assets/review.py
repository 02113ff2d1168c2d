"""Stage 2 of the filtering (section 3.4.4): people accept or reject each automatically kept pair.

``review_queue`` publishes the kept pairs as one review batch (a dynamic partition of
``review_batches``, never one per item). The reviewers work in the web app
(``idglow review serve``). The sensor ``review_batches_finished`` notices finished batches (its
cursor is the last finish time), records ``review_decisions`` for the batch (an external asset:
the decisions live in the review database) and requests ``train_on_reviewed_pairs``, which writes
``accepted_pairs`` for the batch (gated by a blocking check on the acceptance rate), the DPO
shards and the DPO checkpoint. In review mode ``auto`` (the demo) a written rule decides every
item at publication, each decision labelled automatic, so the sensor finds the batch finished.
"""

import dagster as dg
import pandas as pd

from assets.metadata import file_metadata, preview
from assets.partitions import add_partitions, add_request
from assets.resources import IdglowSettings
from idglow.review.batches import kept_pairs_batch
from idglow.review.rules import AUTO_RULE_NAME, FinalRule, auto_decision
from idglow.review.store import ReviewStore, default_database
from idglow.storage import write_parquet_atomic

GROUP = "review"
review_batches = dg.DynamicPartitionsDefinition(name="review_batches")
review_decisions = dg.AssetSpec(
    "review_decisions",
    group_name=GROUP,
    partitions_def=review_batches,
    deps=["review_queue"],
    description="The reviewers' decisions on one batch, in the review database (recorded by the sensor "
    "review_batches_finished when the batch is finished).",
)


def store_for(settings: IdglowSettings) -> ReviewStore:
    return ReviewStore(default_database(settings.paths.root))


@dg.asset(group_name=GROUP, code_version="1", deps=["auto_filtered_pairs"], kinds={"sqlite"})
def review_queue(context: dg.AssetExecutionContext, settings: IdglowSettings) -> dg.MaterializeResult:
    """Publish the automatically kept pairs as a review batch; in review mode ``auto`` decide
    them at once by the written rule (accept when every score delta agrees with the preference)."""
    profile, paths = settings.resolved(), settings.paths
    batch_id, payloads = kept_pairs_batch(pd.read_parquet(paths.table("auto_filtered_pairs")))
    store = store_for(settings)
    overlap = 1 if profile.review_mode == "auto" else profile.review_overlap  # the written rule is one reviewer
    count = store.publish(
        batch_id, "auto_filtered_pairs", payloads, overlap=overlap, rule=FinalRule.for_overlap(overlap)
    )
    add_partitions(context.instance, review_batches, [batch_id])
    automatic = 0
    if profile.review_mode == "auto":
        automatic = store.decide_automatically(batch_id, AUTO_RULE_NAME, auto_decision)
        context.log.warning(f"review mode auto: {automatic} decisions written by rule, not by people")
    return dg.MaterializeResult(
        metadata={
            "batch_id": dg.MetadataValue.text(batch_id),
            "items": dg.MetadataValue.int(count),
            "review_mode": dg.MetadataValue.text(profile.review_mode),
            "automatic_decisions": dg.MetadataValue.int(automatic),
            "database": dg.MetadataValue.text(store.url),
            "serve": dg.MetadataValue.md("`idglow review serve` and open http://127.0.0.1:8765 to review by hand."),
        }
    )


@dg.asset(
    group_name=GROUP,
    code_version="1",
    deps=[review_decisions, "auto_filtered_pairs"],
    partitions_def=review_batches,
    kinds={"parquet"},
)
def accepted_pairs(context: dg.AssetExecutionContext, settings: IdglowSettings) -> dg.MaterializeResult:
    """The batch's pairs whose final decision is accept (gold items left out), with how they were
    decided; the acceptance rate feeds the gate below."""
    batch_id = context.partition_key
    outcomes = pd.DataFrame(store_for(settings).item_outcomes(batch_id))
    if outcomes["final"].isna().any():
        raise dg.Failure(f"batch {batch_id} is not finished: {int(outcomes['final'].isna().sum())} items undecided")
    pairs = outcomes[~outcomes["is_gold"]]
    accepted = pairs[pairs["final"] == "accept"]
    filtered = pd.read_parquet(settings.paths.table("auto_filtered_pairs")).set_index("pair_id")
    table = (
        filtered.loc[accepted["pair_id"]]
        .reset_index()
        .assign(
            review_decision="accept",
            review_batch=batch_id,
            review_mode=["auto (no human review)" if a else "human" for a in accepted["automatic"]],
        )
    )
    path = settings.paths.asset_dir("accepted_pairs") / f"{batch_id}.parquet"
    write_parquet_atomic(path, table)
    rate = len(accepted) / len(pairs) if len(pairs) else 0.0
    return dg.MaterializeResult(
        metadata={
            **file_metadata("accepted_pairs", path),
            "decided": dg.MetadataValue.int(len(pairs)),
            "accepted": dg.MetadataValue.int(len(accepted)),
            "acceptance_rate": dg.MetadataValue.float(rate),
            "automatic": dg.MetadataValue.bool(bool(pairs["automatic"].all())),
            "preview": preview(table[["pair_id", "source", "review_mode"]]),
        }
    )


@dg.asset_check(
    asset=accepted_pairs, blocking=True, description="The batch's acceptance rate is within the configured bounds."
)
def acceptance_rate_within_bounds(
    context: dg.AssetCheckExecutionContext, settings: IdglowSettings
) -> dg.AssetCheckResult:
    profile = settings.resolved()
    low, high = profile.acceptance_rate_min, profile.acceptance_rate_max
    event = context.instance.get_latest_materialization_event(accepted_pairs.key)
    rate = float(event.asset_materialization.metadata["acceptance_rate"].value)
    return dg.AssetCheckResult(
        passed=low <= rate <= high,
        metadata={"acceptance_rate": rate, "lower_bound": low, "upper_bound": high},
        description=None
        if low <= rate <= high
        else f"acceptance rate {rate:.2f} is outside [{low}, {high}]: "
        "check the filter or the reviewers before training on it",
    )


train_on_reviewed_pairs = dg.define_asset_job(
    "train_on_reviewed_pairs",
    selection=dg.AssetSelection.assets("accepted_pairs", "dpo_shards", "dpo_checkpoint"),
    partitions_def=review_batches,
    description="A finished review batch's accepted pairs, then the DPO shards and the DPO checkpoint.",
)


@dg.sensor(job=train_on_reviewed_pairs, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def review_batches_finished(context: dg.SensorEvaluationContext, settings: IdglowSettings) -> dg.SensorResult:
    """Finished review batches since the cursor: record their decisions and request the run
    that builds the DPO shards from the accepted pairs."""
    after = float(context.cursor or 0)
    store = store_for(settings)
    events, requests = [], []
    known = set(context.instance.get_dynamic_partitions(review_batches.name))
    finished = store.finished_batches(after)
    new_partitions = [batch_id for batch_id, _ in finished if batch_id not in known]  # e.g. `idglow review publish`
    for batch_id, finished_at in finished:
        outcomes = store.item_outcomes(batch_id)
        accepted = sum(o["final"] == "accept" for o in outcomes)
        events.append(
            dg.AssetMaterialization(
                asset_key="review_decisions",
                partition=batch_id,
                metadata={
                    "items": len(outcomes),
                    "accepted": accepted,
                    "rejected": len(outcomes) - accepted,
                    "automatic": all(o["automatic"] for o in outcomes),
                    "database": store.url,
                },
            )
        )
        requests.append(dg.RunRequest(run_key=f"review-{batch_id}", partition_key=batch_id))
        after = max(after, finished_at)
    return dg.SensorResult(
        run_requests=requests,
        asset_events=events,
        cursor=str(after),
        dynamic_partitions_requests=add_request(review_batches, new_partitions),
    )
