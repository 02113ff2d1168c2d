"""Identity splits, the blocking check that keeps them disjoint, and the groups of people."""

import dagster as dg
import pandas as pd

from assets.metadata import data_version_of, file_metadata, preview
from assets.resources import IdglowSettings
from idglow.data.groups import (
    make_benchmark_groups,
    make_training_groups,
    overlapping_identities,
    split_identities,
)
from idglow.storage import write_parquet_atomic


@dg.asset(group_name="identities", code_version="1", deps=["celebahq_images"], kinds={"parquet"})
def identity_splits(settings: IdglowSettings) -> dg.MaterializeResult:
    """Each identity assigned to `benchmark` (held out from all training), `train` or `unused`.

    Benchmark identities are drawn (seeded) from CelebA's test partition, as many as the
    benchmark groups need; training identities come from the train and val partitions.
    """
    profile = settings.resolved()
    catalog = pd.read_parquet(settings.paths.catalog)
    splits = split_identities(
        catalog,
        benchmark_identities=profile.benchmark_identities,
        seed=profile.seed,
        benchmark_partitions=profile.benchmark_partitions,
        training_partitions=profile.training_partitions,
    )
    write_parquet_atomic(settings.paths.identity_splits, splits)
    counts = splits["split"].value_counts()
    return dg.MaterializeResult(
        metadata={
            **file_metadata("splits", settings.paths.identity_splits),
            **{
                f"identities_{name}": dg.MetadataValue.int(int(counts.get(name, 0)))
                for name in ("benchmark", "train", "unused")
            },
            "dagster/row_count": dg.MetadataValue.int(len(splits)),
        },
        data_version=data_version_of(settings.paths.identity_splits),
    )


@dg.asset_check(
    asset=identity_splits, blocking=True, description="No identity is on both the training and the benchmark side."
)
def identity_splits_are_disjoint(settings: IdglowSettings) -> dg.AssetCheckResult:
    splits = pd.read_parquet(settings.paths.identity_splits)
    overlap = overlapping_identities(splits)
    return dg.AssetCheckResult(
        passed=not overlap,
        severity=dg.AssetCheckSeverity.ERROR,
        metadata={
            "overlapping_identities": dg.MetadataValue.int(len(overlap)),
            "examples": dg.MetadataValue.json(overlap[:20]),
        },
    )


def _groups_metadata(path, groups: pd.DataFrame) -> dict[str, dg.MetadataValue]:
    sizes = groups["n_subjects"].value_counts().sort_index()
    return {
        **file_metadata("groups", path),
        **{f"groups_of_{n}": dg.MetadataValue.int(int(c)) for n, c in sizes.items()},
        "distinct_identities": dg.MetadataValue.int(len({i for ids in groups["identities"] for i in ids})),
        "preview": preview(groups[["group_id", "n_subjects", "identities", "condition_hq_idx"]]),
        "dagster/row_count": dg.MetadataValue.int(len(groups)),
    }


@dg.asset(group_name="identities", code_version="1", deps=[identity_splits, "celebahq_images"], kinds={"parquet"})
def benchmark_groups(settings: IdglowSettings) -> dg.MaterializeResult:
    """The benchmark's groups: every held-out identity exactly once, in groups of two and three,
    one reference portrait each. The same groups serve Task 1 (direct group fusion) and Task 2
    (the same people rendered as young children)."""
    profile = settings.resolved()
    groups = make_benchmark_groups(
        pd.read_parquet(settings.paths.catalog),
        pd.read_parquet(settings.paths.identity_splits),
        groups_of_two=profile.benchmark_groups_of_two,
        groups_of_three=profile.benchmark_groups_of_three,
        seed=profile.seed,
    )
    write_parquet_atomic(settings.paths.benchmark_groups, groups)
    return dg.MaterializeResult(
        metadata=_groups_metadata(settings.paths.benchmark_groups, groups),
        data_version=data_version_of(settings.paths.benchmark_groups),
    )


@dg.asset(group_name="identities", code_version="1", deps=[identity_splits, "celebahq_images"], kinds={"parquet"})
def training_groups(settings: IdglowSettings) -> dg.MaterializeResult:
    """Groups of training identities with two or more portraits each, so the condition portrait
    shown to the model differs from the portraits a group photo reproduces."""
    profile = settings.resolved()
    groups = make_training_groups(
        pd.read_parquet(settings.paths.catalog),
        pd.read_parquet(settings.paths.identity_splits),
        groups_of_two=profile.training_groups_of_two,
        groups_of_three=profile.training_groups_of_three,
        seed=profile.seed,
        min_portraits=profile.min_portraits_per_training_identity,
    )
    write_parquet_atomic(settings.paths.training_groups, groups)
    return dg.MaterializeResult(
        metadata=_groups_metadata(settings.paths.training_groups, groups),
        data_version=data_version_of(settings.paths.training_groups),
    )
