"""CelebA-HQ ingest: the catalog every later stage reads, and the quarantine of what was refused."""

import dagster as dg

from assets.metadata import data_version_of, file_metadata, preview
from assets.resources import IdglowSettings
from idglow.data.celebahq import ingest_celebahq
from idglow.data.demo_celebahq import write_demo_celebahq
from idglow.storage import write_parquet_atomic


@dg.asset(group_name="ingest", code_version="1", kinds={"parquet"})
def celebahq_images(context: dg.AssetExecutionContext, settings: IdglowSettings) -> dg.MaterializeResult:
    """The CelebA-HQ catalog: one row per usable image with its CelebA file, identity, the 40
    attributes, size, SHA-256 and CelebA partition; every refused input is in the quarantine
    with its reason (catalog + quarantine = inputs).

    Reads the official layout from the profile's CelebA-HQ root; the demo profile first writes
    its own small dataset in that layout. Nothing is downloaded.
    """
    profile = settings.resolved()
    source = profile.celebahq_source
    if profile.celebahq_root is None and profile.generate_demo_data:
        dataset = write_demo_celebahq(source, profile.demo_dataset)
        context.log.info(f"demo dataset at {dataset.root} ({dataset.good_images} good images)")
    result = ingest_celebahq(source, expected_size=profile.image_size, workers=profile.ingest_workers)
    paths = settings.paths
    write_parquet_atomic(paths.catalog, result.catalog)
    write_parquet_atomic(paths.quarantine, result.quarantine)

    reasons = result.quarantine["reason"].str.replace(r" \(.*\)$", "", regex=True).value_counts()
    if len(result.quarantine):
        context.log.warning(f"{len(result.quarantine)} of {result.counts['inputs']} inputs quarantined")
    return dg.MaterializeResult(
        metadata={
            "source_root": dg.MetadataValue.path(str(source)),
            **{f"count_{k}": dg.MetadataValue.int(v) for k, v in result.counts.items()},
            **file_metadata("catalog", paths.catalog),
            **file_metadata("quarantine", paths.quarantine),
            "partitions": dg.MetadataValue.json(result.catalog["partition"].value_counts().to_dict()),
            "quarantine_reasons": dg.MetadataValue.md(reasons.rename("records").to_markdown()),
            "catalog_preview": preview(result.catalog[["hq_idx", "celeba_file", "identity", "partition", "sha256"]]),
            "dagster/row_count": dg.MetadataValue.int(len(result.catalog)),
        },
        data_version=data_version_of(paths.catalog),
    )
