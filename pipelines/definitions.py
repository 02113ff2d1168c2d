"""The code location ``workspace.yaml`` loads: ``defs`` for the profile in ``IDGLOW_PROFILE``."""

from __future__ import annotations

import dagster as dg

from assets import groups, ingest, models, preference, training
from assets.sensors import celebahq_source_changed
from idglow.profiles import Profile, load_profile
from pipelines.resources import resources_for

ASSET_MODULES = (ingest, groups, models, preference)

everything_job = dg.define_asset_job(
    "materialize_everything",
    selection=dg.AssetSelection.all(),
    description="Every asset of the pipeline, in dependency order (what `make demo` runs).",
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
        assets=[*dg.load_assets_from_modules(ASSET_MODULES), *training.build_training_assets(profile.training_gpus)],
        asset_checks=dg.load_asset_checks_from_modules(ASSET_MODULES),
        jobs=[everything_job, data_foundation_job],
        sensors=[celebahq_source_changed],
        resources=resources_for(profile),
        executor=executor,
    )


defs = build_definitions(load_profile())
