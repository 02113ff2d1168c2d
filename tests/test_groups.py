"""Identity splits and groups: disjoint, complete, deterministic."""

import pandas as pd
import pytest

from idglow.data.groups import (
    TASKS,
    NotEnoughIdentities,
    group_id,
    make_benchmark_groups,
    make_training_groups,
    overlapping_identities,
    split_identities,
)


@pytest.fixture(scope="module")
def catalog(demo_ingest):
    return demo_ingest.catalog


@pytest.fixture(scope="module")
def splits(catalog):
    return split_identities(catalog, benchmark_identities=10, seed=0)


def test_split_is_disjoint_and_benchmark_comes_from_test(catalog, splits):
    assert overlapping_identities(splits) == []
    assert splits["identity"].is_unique
    benchmark = set(splits.loc[splits["split"] == "benchmark", "identity"])
    assert len(benchmark) == 10
    partitions = catalog.groupby("identity")["partition"].agg(set)
    assert all(partitions[i] == {"test"} for i in benchmark)
    train = splits.loc[splits["split"] == "train", "identity"]
    assert all(partitions[i] <= {"train", "val"} for i in train)
    assert len(splits) == catalog["identity"].nunique()


def test_overlap_is_found():
    splits = pd.DataFrame({"identity": [1, 1, 2], "split": ["train", "benchmark", "train"]})
    assert overlapping_identities(splits) == [1]


def test_split_refuses_too_many_benchmark_identities(catalog):
    with pytest.raises(NotEnoughIdentities, match="only 12 identities"):
        split_identities(catalog, benchmark_identities=13, seed=0)


def test_benchmark_groups_use_each_identity_once(catalog, splits):
    groups = make_benchmark_groups(catalog, splits, groups_of_two=2, groups_of_three=2, seed=0)
    assert sorted(groups["n_subjects"]) == [2, 2, 3, 3]
    members = [i for ids in groups["identities"] for i in ids]
    assert sorted(members) == sorted(splits.loc[splits["split"] == "benchmark", "identity"])
    assert groups["group_id"].is_unique
    for _, group in groups.iterrows():
        assert len(group["condition_hq_idx"]) == group["n_subjects"]
        assert list(group["tasks"]) == list(TASKS)
        owners = catalog.set_index("hq_idx").loc[list(group["condition_hq_idx"]), "identity"]
        assert list(owners) == list(group["identities"])


def test_benchmark_groups_are_deterministic(catalog, splits):
    first = make_benchmark_groups(catalog, splits, 2, 2, seed=0)
    again = make_benchmark_groups(catalog, splits, 2, 2, seed=0)
    other = make_benchmark_groups(catalog, splits, 2, 2, seed=1)
    pd.testing.assert_frame_equal(first, again)
    assert set(first["group_id"]) != set(other["group_id"])


def test_benchmark_groups_need_exactly_the_split(catalog, splits):
    with pytest.raises(NotEnoughIdentities, match="need exactly 13"):
        make_benchmark_groups(catalog, splits, groups_of_two=2, groups_of_three=3, seed=0)


def test_group_id_ignores_member_order_and_depends_on_seed():
    assert group_id("bench", [5, 3, 9], 0) == group_id("bench", [9, 5, 3], 0)
    assert group_id("bench", [5, 3, 9], 0) != group_id("bench", [5, 3, 9], 1)
    assert group_id("bench", [5, 3, 9], 0).startswith("bench-3-")


def test_training_groups_condition_differs_from_targets(catalog, splits):
    groups = make_training_groups(catalog, splits, groups_of_two=8, groups_of_three=6, seed=0)
    assert (groups["n_subjects"] == 2).sum() == 8 and (groups["n_subjects"] == 3).sum() == 6
    train_ids = set(splits.loc[splits["split"] == "train", "identity"])
    by_idx = catalog.set_index("hq_idx")["identity"]
    memberships = set()
    for _, group in groups.iterrows():
        ids = list(group["identities"])
        assert len(set(ids)) == len(ids)
        assert set(ids) <= train_ids
        memberships.add(tuple(sorted(ids)))
        for identity, condition, targets in zip(ids, group["condition_hq_idx"], group["target_hq_idx"], strict=True):
            assert by_idx[condition] == identity
            assert len(targets) >= 1 and condition not in list(targets)
            assert all(by_idx[t] == identity for t in targets)
    assert len(memberships) == len(groups)
    pd.testing.assert_frame_equal(groups, make_training_groups(catalog, splits, 8, 6, seed=0))


def test_training_groups_skip_single_portrait_identities(catalog, splits):
    one_each = catalog.drop_duplicates("identity")
    with pytest.raises(NotEnoughIdentities, match="have 2 or more portraits"):
        make_training_groups(one_each, splits, groups_of_two=1, groups_of_three=0, seed=0)
