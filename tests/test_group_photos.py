"""Group photo manifests a user points at, and the demo's drawn photos."""

import pandas as pd
from PIL import Image

from idglow.data.group_photos import GROUP_PHOTO_COLUMNS, read_group_photo_manifest, write_demo_group_photos
from idglow.data.groups import make_training_groups, split_identities


def test_csv_manifest_with_relative_paths(tmp_path):
    for name in ("g.jpg", "a.jpg", "b.jpg"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    (tmp_path / "photos.csv").write_text("photo_path,condition_paths,caption\ng.jpg,a.jpg;b.jpg,Two friends.\n")
    frame = read_group_photo_manifest(tmp_path / "photos.csv")
    assert list(frame.columns) == list(GROUP_PHOTO_COLUMNS)
    row = frame.iloc[0]
    assert row["photo_path"] == str(tmp_path / "g.jpg")
    assert row["condition_paths"] == [str(tmp_path / "a.jpg"), str(tmp_path / "b.jpg")]
    assert row["n_subjects"] == 2


def test_manifest_without_required_columns_is_a_clear_error(tmp_path):
    (tmp_path / "bad.csv").write_text("photo_path\nx.jpg\n")
    try:
        read_group_photo_manifest(tmp_path / "bad.csv")
    except ValueError as error:
        assert "condition_paths" in str(error) and "caption" in str(error)
    else:
        raise AssertionError("expected a ValueError")


def test_demo_photos_mix_pairs_and_triples(demo_dataset, demo_ingest, tmp_path):
    catalog = demo_ingest.catalog
    groups = make_training_groups(catalog, split_identities(catalog, 10, 0), 4, 4, seed=0)
    photos = write_demo_group_photos(groups, catalog, demo_dataset.root, tmp_path, 4, 128, 0)
    assert sorted(photos["n_subjects"]) == [2, 2, 3, 3]
    for row in photos.itertuples():
        assert Image.open(row.photo_path).size == (128, 128)
        assert len(row.condition_paths) == row.n_subjects == len(row.identities)
        assert "Picture 1" in row.caption
    assert isinstance(photos, pd.DataFrame)
