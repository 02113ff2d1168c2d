"""Jobs that span stages (a stage's own jobs live in its module)."""

import dagster as dg

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
    description="Ingest CelebA-HQ, split identities, and form the benchmark and training groups "
    "(requested by the sensor celebahq_source_changed, assets.sensors).",
)
