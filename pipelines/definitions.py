"""The code location ``workspace.yaml`` loads: ``defs`` for the profile in ``IDGLOW_PROFILE``."""

from __future__ import annotations

import dagster as dg

from assets import benchmark, groups, ingest, models, preference, review, training
from assets.sensors import celebahq_source_changed
from idglow.profiles import Profile, load_profile
from pipelines.resources import resources_for

ASSET_MODULES = (ingest, groups, models, preference, review, benchmark)

everything_job = dg.define_asset_job(
    "materialize_everything",
    selection=dg.AssetSelection.all()
    - dg.AssetSelection.assets("accepted_pairs").downstream()
    - dg.AssetSelection.assets("review_decisions", "sft_ablation"),
    description="Every asset up to the review queue and SFT, in dependency order (what `make demo` runs first; "
    "the review sensor requests train_on_reviewed_pairs for each finished batch).",
)
data_foundation_job = dg.define_asset_job(
    "ingest_and_groups",
    selection=dg.AssetSelection.groups("ingest", "identities"),
    description="Ingest CelebA-HQ, split identities, and form the benchmark and training groups.",
)


def build_definitions(profile: Profile) -> dg.Definitions:
    """Assemble the pipeline for ``profile``.

    The demo profile executes each run in one process (a laptop CPU gains nothing from a
    process per step and pays for each start); the real profile uses the multiprocess executor.
    """
    executor = dg.in_process_executor if profile.name == "demo" else dg.multiprocess_executor
    return dg.Definitions(
        assets=[
            *dg.load_assets_from_modules(ASSET_MODULES),
            *training.build_training_assets(profile.training_gpus, profile),
            *benchmark.build_ablation_assets(profile),
            review.review_decisions,
        ],
        asset_checks=dg.load_asset_checks_from_modules(ASSET_MODULES),
        jobs=[
            everything_job,
            data_foundation_job,
            review.train_on_reviewed_pairs,
            benchmark.register_models,
            benchmark.benchmark_model,
            benchmark.promote_and_report,
            benchmark.retrain,
            benchmark.ablation_job,
        ],
        schedules=[benchmark.weekly_retraining],
        sensors=[
            celebahq_source_changed,
            review.review_batches_finished,
            benchmark.benchmark_new_versions,
            benchmark.enough_new_accepted_pairs,
        ],
        resources=resources_for(profile),
        executor=executor,
    )


defs = build_definitions(load_profile())
