"""The ingest on the demo dataset and on small hand-built roots: every quarantine reason,
and catalog + quarantine = inputs."""

import io
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from idglow.data.celebahq import (
    ATTRIBUTE_FILE,
    CELEBA_ATTRIBUTES,
    IDENTITY_FILE,
    IMAGE_DIR,
    MAPPING_FILE,
    PARTITION_FILE,
    CelebAHQLayoutError,
    ingest_celebahq,
)
from idglow.storage import sha256_file

SIZE = 32


def jpeg(color=(200, 100, 50), size=SIZE, fmt="JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buffer, format=fmt)
    return buffer.getvalue()


def build_root(
    root: Path,
    images: dict[str, bytes],
    mapping: list[str],
    identities: list[str],
    attributes: list[str],
    partitions: list[str] | None = None,
) -> Path:
    (root / IMAGE_DIR).mkdir(parents=True)
    for name, payload in images.items():
        (root / IMAGE_DIR / name).write_bytes(payload)
    (root / MAPPING_FILE).write_text("idx orig_idx orig_file\n" + "\n".join(mapping) + "\n")
    (root / IDENTITY_FILE).write_text("\n".join(identities) + "\n")
    header = [str(len(attributes)), " ".join(CELEBA_ATTRIBUTES)]
    (root / ATTRIBUTE_FILE).write_text("\n".join(header + attributes) + "\n")
    if partitions is not None:
        (root / PARTITION_FILE).write_text("\n".join(partitions) + "\n")
    return root


def attribute_row(idx: int, value: str = "1") -> str:
    return f"{idx}.jpg  " + " ".join([value] * 40)


def reasons_by_path(result) -> dict[str, str]:
    return dict(zip(result.quarantine["path"], result.quarantine["reason"], strict=True))


def test_demo_dataset_reconciles_and_quarantines_every_broken_record(demo_dataset, demo_ingest):
    counts = demo_ingest.counts
    assert counts["catalog"] == demo_dataset.good_images == 160
    assert counts["catalog"] + counts["quarantine"] == counts["inputs"]
    assert counts["identities"] == 40
    found = reasons_by_path(demo_ingest)
    assert set(found) == set(demo_dataset.expected_quarantine)
    for path, fragment in demo_dataset.expected_quarantine.items():
        assert fragment in found[path], (path, found[path])


def test_catalog_columns_and_values(demo_dataset, demo_ingest):
    catalog = demo_ingest.catalog
    assert list(catalog.columns[:9]) == [
        "hq_idx", "celeba_file", "orig_idx", "identity", "partition", "width", "height", "sha256", "path",
    ]
    assert list(catalog.columns[9:]) == list(CELEBA_ATTRIBUTES)
    assert all(catalog[name].dtype == bool for name in CELEBA_ATTRIBUTES)
    assert catalog["hq_idx"].is_unique
    assert (catalog["width"] == 256).all() and (catalog["height"] == 256).all()
    first = catalog.iloc[0]
    assert first["sha256"] == sha256_file(demo_dataset.root / first["path"])
    assert first["celeba_file"] == f"{first['orig_idx'] + 1:06d}.jpg"
    assert set(catalog["partition"]) == {"train", "val", "test"}


def test_every_reason_on_a_hand_built_root(tmp_path):
    good = jpeg()
    images = {
        "0.jpg": good,
        "1.jpg": b"",
        "2.jpg": good[: len(good) // 2],
        "3.jpg": b"plain text",
        "4.jpg": jpeg(size=SIZE * 2),
        "5.jpg": jpeg(fmt="PNG"),
        "6.jpg": jpeg((1, 2, 3)),  # no mapping row
        "7.jpg": jpeg((4, 5, 6)),  # mapping row, no identity row
        "8.jpg": jpeg((7, 8, 9)),  # conflicting identity rows
        "9.jpg": jpeg((10, 11, 12)),  # no attribute row
        "10.jpg": good,  # same bytes as 0.jpg
        "notes.md": b"hello",
    }
    mapping = [f"{i} {100 + i} {101 + i:06d}.jpg" for i in (0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 11)]
    mapping.append("0 100 000101.jpg")  # duplicate, same values
    mapping.append("bad line")
    identities = [f"{101 + i:06d}.jpg 1" for i in (0, 1, 2, 3, 4, 5, 9, 10, 11)]
    identities += ["000109.jpg 1", "000109.jpg 2"]  # 8.jpg's file, conflicting
    attributes = [attribute_row(i) for i in (0, 1, 2, 3, 4, 5, 6, 7, 8, 10)]
    root = build_root(tmp_path / "root", images, mapping, identities, attributes)

    result = ingest_celebahq(root, expected_size=SIZE, workers=1, progress=False)
    found = reasons_by_path(result)
    expected = {
        f"{IMAGE_DIR}/1.jpg": "empty file",
        f"{IMAGE_DIR}/2.jpg": "truncated",
        f"{IMAGE_DIR}/3.jpg": "not an image",
        f"{IMAGE_DIR}/4.jpg": f"size {2 * SIZE}x{2 * SIZE}, expected {SIZE}x{SIZE}",
        f"{IMAGE_DIR}/5.jpg": "not a JPEG (found PNG)",
        f"{IMAGE_DIR}/6.jpg": "image without mapping row",
        f"{IMAGE_DIR}/7.jpg": "no identity for 000108.jpg",
        f"{IMAGE_DIR}/8.jpg": "conflicting duplicate rows in identity_CelebA.txt",
        f"{IMAGE_DIR}/9.jpg": "no attribute row",
        f"{IMAGE_DIR}/10.jpg": "duplicate image content of 0.jpg",
        f"{IMAGE_DIR}/11.jpg": "mapping row without image",
        f"{IMAGE_DIR}/notes.md": "unexpected file name",
        f"{MAPPING_FILE}:13": "duplicate row for 0 (first on line 2, same values)",
        f"{MAPPING_FILE}:14": "malformed row",
        f"{IDENTITY_FILE}:11": "conflicting values",
    }
    assert set(found) == set(expected)
    for path, fragment in expected.items():
        assert fragment in found[path], (path, found[path])
    assert list(result.catalog["hq_idx"]) == [0]
    counts = result.counts
    assert counts["inputs"] == len(images) + 1 + 3  # 12 entries, 1 orphan row, 3 bad annotation rows
    assert counts["catalog"] + counts["quarantine"] == counts["inputs"]


def test_partition_file_wins_over_file_numbers(tmp_path):
    images = {"0.jpg": jpeg(), "1.jpg": jpeg((0, 0, 0))}
    mapping = ["0 0 000001.jpg", "1 1 000002.jpg"]
    identities = ["000001.jpg 7", "000002.jpg 8"]
    partitions = ["000001.jpg 2"]  # 000001 would be train by number; 000002 has no row
    root = build_root(tmp_path / "root", images, mapping, identities, [attribute_row(0), attribute_row(1)], partitions)
    result = ingest_celebahq(root, expected_size=SIZE, workers=1, progress=False)
    assert result.catalog.set_index("hq_idx").loc[0, "partition"] == "test"
    assert reasons_by_path(result) == {f"{IMAGE_DIR}/1.jpg": "no partition row for 000002.jpg"}


def test_parallel_and_serial_checks_agree(demo_dataset):
    serial = ingest_celebahq(demo_dataset.root, expected_size=256, workers=1, progress=False)
    parallel = ingest_celebahq(demo_dataset.root, expected_size=256, workers=2, progress=False)
    pd.testing.assert_frame_equal(serial.catalog, parallel.catalog)
    pd.testing.assert_frame_equal(serial.quarantine, parallel.quarantine)


def test_missing_layout_file_is_one_clear_error(tmp_path):
    root = build_root(tmp_path / "root", {"0.jpg": jpeg()}, ["0 0 000001.jpg"], ["000001.jpg 1"], [attribute_row(0)])
    (root / IDENTITY_FILE).unlink()
    with pytest.raises(CelebAHQLayoutError, match="identity_CelebA.txt"):
        ingest_celebahq(root, expected_size=SIZE, progress=False)


def test_attribute_names_out_of_order_is_a_layout_error(tmp_path):
    root = build_root(tmp_path / "root", {"0.jpg": jpeg()}, ["0 0 000001.jpg"], ["000001.jpg 1"], [attribute_row(0)])
    lines = (root / ATTRIBUTE_FILE).read_text().splitlines()
    lines[1] = " ".join(reversed(CELEBA_ATTRIBUTES))
    (root / ATTRIBUTE_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(CelebAHQLayoutError, match="attribute names"):
        ingest_celebahq(root, expected_size=SIZE, progress=False)
