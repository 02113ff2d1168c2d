"""The ingest on the demo dataset and on small hand-built roots: every quarantine reason,
and catalog + quarantine = inputs."""

import io
import os
import struct
import zlib
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from idglow.data.celebahq import (
    ATTRIBUTE_FILE,
    CELEBA_ATTRIBUTES,
    ENTRY_FILE,
    IDENTITY_FILE,
    IMAGE_DIR,
    MAPPING_FILE,
    PARTITION_FILE,
    REASON_NAME_NON_CANONICAL,
    REASON_NAME_NOT_UTF8,
    REASON_NOT_REGULAR,
    REASON_PIXEL_LIMIT,
    REASON_SYMLINK,
    REASON_UNREADABLE,
    CelebAHQLayoutError,
    FolderEntry,
    check_image,
    ingest_celebahq,
    max_image_bytes,
    triage_entries,
)
from idglow.data.images import is_rgb_source, load_rgb
from idglow.storage import sha256_file, write_parquet_atomic

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
        "hq_idx",
        "celeba_file",
        "orig_idx",
        "identity",
        "partition",
        "width",
        "height",
        "sha256",
        "path",
    ]
    assert list(catalog.columns[9:49]) == list(CELEBA_ATTRIBUTES)
    assert list(catalog.columns[49:]) == ["mode"]
    assert set(catalog["mode"]) == {"RGB"}
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
    expected = {
        f"{IMAGE_DIR}/1.jpg": "empty file (0 bytes)",
        f"{IMAGE_DIR}/2.jpg": "corrupt or truncated image",
        f"{IMAGE_DIR}/3.jpg": "not an image",
        f"{IMAGE_DIR}/4.jpg": f"size {2 * SIZE}x{2 * SIZE}, expected {SIZE}x{SIZE}",
        f"{IMAGE_DIR}/5.jpg": "not a JPEG (found PNG)",
        f"{IMAGE_DIR}/6.jpg": "image without mapping row",
        f"{IMAGE_DIR}/7.jpg": "no identity for 000108.jpg",
        f"{IMAGE_DIR}/8.jpg": "conflicting duplicate rows in identity_CelebA.txt for 000109.jpg",
        f"{IMAGE_DIR}/9.jpg": "no attribute row for 9.jpg",
        f"{IMAGE_DIR}/10.jpg": "duplicate image content of 0.jpg",
        f"{IMAGE_DIR}/11.jpg": "mapping row without image",
        f"{IMAGE_DIR}/notes.md": "unexpected file name (expected <index>.jpg)",
        f"{MAPPING_FILE}:13": "duplicate row for 0 (first on line 2, same values)",
        f"{MAPPING_FILE}:14": "malformed row: expected 'idx orig_idx orig_file', got 'bad line'",
        f"{IDENTITY_FILE}:11": "duplicate row for 000109.jpg (first on line 10, conflicting values)",
    }
    assert reasons_by_path(result) == expected
    details = dict(zip(result.quarantine["path"], result.quarantine["detail"], strict=True))
    assert details[f"{IMAGE_DIR}/2.jpg"]  # PIL's own words, apart from the exact reason
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


# ------------------------------------------------------------------ hostile inputs (Hardening)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with almost no pixel data behind it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")
    )


def jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) is rewritten to declare width x height."""
    data = bytearray(jpeg())
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def cut_in_scan(data: bytes) -> bytes:
    """The JPEG's headers and the first bytes of its scan: the header is whole, the pixels are not."""
    return data[: data.find(b"\xff\xda") + 20]


def jpeg_with(mode: str = "RGB", orientation: int | None = None, color=(90, 60, 30)) -> bytes:
    image = Image.new("RGB", (SIZE, SIZE), color).convert(mode)
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def simple_root(tmp_path: Path, images: dict[str, bytes], indices: range) -> Path:
    mapping = [f"{i} {i} {i + 1:06d}.jpg" for i in indices]
    identities = [f"{i + 1:06d}.jpg {i + 1}" for i in indices]
    return build_root(tmp_path / "root", images, mapping, identities, [attribute_row(i) for i in indices])


def ingest(root: Path):
    result = ingest_celebahq(root, expected_size=SIZE, workers=1, progress=False)
    counts = result.counts
    assert counts["catalog"] + counts["quarantine"] == counts["inputs"]
    return result


def test_decompression_bombs_are_refused_from_the_header(tmp_path):
    images = {
        "0.jpg": jpeg(),
        "1.jpg": png_header(100_000, 100_000),  # over twice PIL's limit: PIL raises
        "2.jpg": jpeg_declaring(60_000, 60_000),
        "3.jpg": png_header(10_000, 10_000),  # between the limit and twice it: PIL only warns
        "4.jpg": cut_in_scan(jpeg_declaring(2 * SIZE, 2 * SIZE)),  # cut off, but its header already says no
    }
    result = ingest(simple_root(tmp_path, images, range(5)))
    assert reasons_by_path(result) == {
        f"{IMAGE_DIR}/1.jpg": REASON_PIXEL_LIMIT,
        f"{IMAGE_DIR}/2.jpg": REASON_PIXEL_LIMIT,
        f"{IMAGE_DIR}/3.jpg": REASON_PIXEL_LIMIT,
        f"{IMAGE_DIR}/4.jpg": f"size {2 * SIZE}x{2 * SIZE}, expected {SIZE}x{SIZE}",
    }
    assert list(result.catalog["hq_idx"]) == [0]


def test_a_file_too_large_for_its_size_is_refused_unread(tmp_path):
    padded = jpeg() + b"\0" * max_image_bytes(SIZE)  # a valid JPEG, then more than any SxS JPEG needs
    result = ingest(simple_root(tmp_path, {"0.jpg": padded}, range(1)))
    assert reasons_by_path(result) == {
        f"{IMAGE_DIR}/0.jpg": (
            f"file of {len(padded)} bytes, over the {max_image_bytes(SIZE)}-byte limit for a {SIZE}x{SIZE} JPEG"
        ),
    }


def test_symlinks_are_quarantined_and_never_followed(tmp_path):
    outside = tmp_path / "outside.jpg"
    outside.write_bytes(jpeg((1, 1, 1)))
    root = simple_root(tmp_path, {"0.jpg": jpeg()}, range(3))
    folder = root / IMAGE_DIR
    os.symlink(folder / "b", folder / "a")  # a -> b -> a: a loop
    os.symlink(folder / "a", folder / "b")
    os.symlink(outside, folder / "1.jpg")  # a link to a perfectly good JPEG outside the root
    (folder / "2.jpg").mkdir()
    result = ingest(root)
    assert reasons_by_path(result) == {
        f"{IMAGE_DIR}/a": REASON_SYMLINK,
        f"{IMAGE_DIR}/b": REASON_SYMLINK,
        f"{IMAGE_DIR}/1.jpg": REASON_SYMLINK,
        f"{IMAGE_DIR}/2.jpg": REASON_NOT_REGULAR,
    }  # and rows 1 and 2 are not "mapping row without image": their entries are there
    assert result.quarantine.set_index("path").loc[f"{IMAGE_DIR}/1.jpg", "hq_idx"] == 1
    assert list(result.catalog["hq_idx"]) == [0]


def test_a_file_name_that_is_not_utf8_is_quarantined_and_written(tmp_path):
    root = simple_root(tmp_path, {"0.jpg": jpeg()}, range(1))
    folder = os.fsencode(root / IMAGE_DIR)
    for name in (b"\xff.jpg", b"1\xfe.jpg"):
        with open(os.path.join(folder, name), "wb") as handle:
            handle.write(jpeg((5, 5, 5)))
    result = ingest(root)
    assert reasons_by_path(result) == {
        f"{IMAGE_DIR}/\\xff.jpg": REASON_NAME_NOT_UTF8,
        f"{IMAGE_DIR}/1\\xfe.jpg": REASON_NAME_NOT_UTF8,
    }
    write_parquet_atomic(tmp_path / "quarantine.parquet", result.quarantine)  # every path is valid UTF-8
    assert len(pd.read_parquet(tmp_path / "quarantine.parquet")) == 2


def test_only_canonical_names_are_catalogued(tmp_path):
    images = {
        "3.jpg": jpeg(),
        "03.jpg": jpeg((1, 0, 0)),
        "\u0663.jpg": jpeg((2, 0, 0)),  # Arabic-Indic three
        "\uff13.jpg": jpeg((3, 0, 0)),  # fullwidth three
        "\u00b2.jpg": jpeg((4, 0, 0)),  # superscript two: isdigit() but int() refuses it
        "3.JPG": jpeg((5, 0, 0)),
        "3.jpeg": jpeg((6, 0, 0)),
        "3.jpg\n": jpeg((7, 0, 0)),  # "$" matches before a final newline
        "9" * 20 + ".jpg": jpeg((8, 0, 0)),  # beyond int64
    }
    result = ingest(simple_root(tmp_path, images, range(4)))
    non_canonical = {
        name: REASON_NAME_NON_CANONICAL
        for name in ("03.jpg", "\u0663.jpg", "\uff13.jpg", "\u00b2.jpg", "3.JPG", "3.jpeg")
    }
    expected = {
        **{f"{IMAGE_DIR}/{name}": reason for name, reason in non_canonical.items()},
        f"{IMAGE_DIR}/3.jpg\n": "unexpected file name (expected <index>.jpg)",
        f"{IMAGE_DIR}/{'9' * 20}.jpg": "index has more than 18 digits",
        f"{IMAGE_DIR}/0.jpg": "mapping row without image",
        f"{IMAGE_DIR}/1.jpg": "mapping row without image",
        f"{IMAGE_DIR}/2.jpg": "mapping row without image",
    }
    assert reasons_by_path(result) == expected
    assert list(result.catalog["hq_idx"]) == [3]
    assert result.quarantine["hq_idx"].isna().sum() == len(images) - 1


def test_a_duplicate_index_is_never_kept_twice():
    # A real folder cannot list one name twice; the guard is for entries from anywhere else.
    entries = [FolderEntry("3.jpg", ENTRY_FILE, "/a/3.jpg"), FolderEntry("3.jpg", ENTRY_FILE, "/b/3.jpg")]
    triage = triage_entries(entries)
    assert triage.candidates == [(3, "/a/3.jpg")]
    assert [(q["reason"], q["hq_idx"]) for q in triage.quarantine] == [
        (f"duplicate index 3 (first: {IMAGE_DIR}/3.jpg)", 3),
    ]


def test_non_ascii_digits_in_annotation_rows_are_malformed_rows(tmp_path):
    images = {"0.jpg": jpeg(), "1.jpg": jpeg((9, 9, 9))}
    mapping = ["0 0 000001.jpg", "1 1 000002.jpg", "\u0663 2 000003.jpg", "\u00b2 3 000004.jpg"]
    identities = ["000001.jpg 7", "000002.jpg \u0663", "000003.jpg \u00b2"]
    attributes = [attribute_row(0), attribute_row(1), "\u00b2.jpg  " + " ".join(["1"] * 40)]
    result = ingest(build_root(tmp_path / "root", images, mapping, identities, attributes))
    found = reasons_by_path(result)
    assert found.pop(f"{IMAGE_DIR}/1.jpg") == "only a malformed row in identity_CelebA.txt for 000002.jpg (line 2)"
    assert set(found) == {
        f"{MAPPING_FILE}:4",
        f"{MAPPING_FILE}:5",
        f"{IDENTITY_FILE}:2",
        f"{IDENTITY_FILE}:3",
        f"{ATTRIBUTE_FILE}:5",
    }
    assert all(reason.startswith("malformed row: ") for reason in found.values())
    assert list(result.catalog["hq_idx"]) == [0]


def test_exif_orientation_other_than_upright_is_quarantined(tmp_path):
    images = {
        "0.jpg": jpeg_with(orientation=1),
        "1.jpg": jpeg_with(orientation=6, color=(1, 2, 3)),  # square, so its size alone looks right
        "2.jpg": jpeg_with(orientation=3, color=(3, 2, 1)),
        "3.jpg": jpeg_with(orientation=None, color=(7, 7, 7)),
    }
    result = ingest(simple_root(tmp_path, images, range(4)))
    assert reasons_by_path(result) == {
        f"{IMAGE_DIR}/1.jpg": "EXIF orientation 6 (rotated or mirrored)",
        f"{IMAGE_DIR}/2.jpg": "EXIF orientation 3 (rotated or mirrored)",
    }
    assert list(result.catalog["hq_idx"]) == [0, 3]


def test_a_damaged_orientation_tag_is_quarantined_not_taken_as_upright(tmp_path):
    # An IFD whose orientation entry points past the end of the EXIF block: PIL only warns
    # ("Skipping tag 274") and would report no orientation at all.
    tiff = b"II*\x00" + struct.pack("<IH", 8, 1) + struct.pack("<HHII", 0x0112, 3, 1000, 4096) + struct.pack("<I", 0)
    buffer = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), (40, 50, 60)).save(buffer, format="JPEG", exif=b"Exif\x00\x00" + tiff)
    result = ingest(simple_root(tmp_path, {"0.jpg": buffer.getvalue(), "1.jpg": jpeg()}, range(2)))
    assert reasons_by_path(result) == {f"{IMAGE_DIR}/0.jpg": "damaged header metadata (EXIF orientation unknown)"}
    assert "274" in result.quarantine["detail"].iloc[0]


def test_grayscale_and_cmyk_sources_are_catalogued_with_their_mode_and_load_as_rgb(tmp_path):
    images = {"0.jpg": jpeg_with("RGB"), "1.jpg": jpeg_with("L"), "2.jpg": jpeg_with("CMYK")}
    root = simple_root(tmp_path, images, range(3))
    result = ingest(root)
    assert result.quarantine.empty
    catalog = result.catalog.set_index("hq_idx")
    assert catalog["mode"].to_dict() == {0: "RGB", 1: "L", 2: "CMYK"}
    for path in catalog["path"]:
        image = load_rgb(root / path)
        assert (image.mode, image.size) == ("RGB", (SIZE, SIZE))
    assert [is_rgb_source(root / p) for p in catalog["path"]] == [True, False, False]


def test_load_rgb_applies_exif_orientation(tmp_path):
    wide = Image.new("RGB", (SIZE * 2, SIZE), (10, 200, 10))
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    wide.save(buffer, format="JPEG", exif=exif.tobytes())
    (tmp_path / "x.jpg").write_bytes(buffer.getvalue())
    assert load_rgb(tmp_path / "x.jpg").size == (SIZE, SIZE * 2)


def test_check_image_names_the_cause_for_paths_that_are_not_images(tmp_path):
    (tmp_path / "folder").mkdir()
    (tmp_path / "good.jpg").write_bytes(jpeg())
    os.symlink(tmp_path / "good.jpg", tmp_path / "link.jpg")
    assert check_image(str(tmp_path / "missing.jpg"), SIZE).reason == REASON_UNREADABLE
    assert check_image(str(tmp_path / "folder"), SIZE).reason == REASON_NOT_REGULAR
    assert check_image(str(tmp_path / "link.jpg"), SIZE).reason == REASON_SYMLINK
    assert check_image(str(tmp_path / "good.jpg"), SIZE).reason is None


def test_the_header_is_checked_before_decoding(tmp_path):
    png = jpeg(fmt="PNG")
    images = {"0.jpg": png[: len(png) // 2], "1.jpg": cut_in_scan(jpeg(size=2 * SIZE))}
    result = ingest(simple_root(tmp_path, images, range(2)))
    assert reasons_by_path(result) == {
        f"{IMAGE_DIR}/0.jpg": "not a JPEG (found PNG)",  # not "corrupt": it was never going to be used
        f"{IMAGE_DIR}/1.jpg": f"size {2 * SIZE}x{2 * SIZE}, expected {SIZE}x{SIZE}",
    }


def test_an_image_whose_row_is_malformed_says_so_rather_than_missing(tmp_path):
    images = {"0.jpg": jpeg(), "1.jpg": jpeg((3, 3, 3)), "2.jpg": jpeg((6, 6, 6))}
    mapping = ["0 0 000001.jpg", "1 4 000004.jpg", "2 2 000003.jpg"]  # row 1: orig_file is not orig_idx + 1
    identities = ["000001.jpg 1", "000003.jpg 3"]
    attributes = [attribute_row(0, "0"), attribute_row(1), attribute_row(2)]  # 0.jpg: values not -1/1
    result = ingest(build_root(tmp_path / "root", images, mapping, identities, attributes))
    found = reasons_by_path(result)
    assert found[f"{IMAGE_DIR}/0.jpg"] == f"only a malformed row in {ATTRIBUTE_FILE} for 0.jpg (line 3)"
    assert found[f"{IMAGE_DIR}/1.jpg"] == f"only a malformed row in {MAPPING_FILE} for 1 (line 3)"
    assert list(result.catalog["hq_idx"]) == [2]


def test_an_image_folder_that_is_a_file_is_a_layout_error(tmp_path):
    root = build_root(tmp_path / "root", {}, ["0 0 000001.jpg"], ["000001.jpg 1"], [attribute_row(0)])
    (root / IMAGE_DIR).rmdir()
    (root / IMAGE_DIR).write_text("not a folder")
    with pytest.raises(CelebAHQLayoutError, match=f"{IMAGE_DIR} is not a directory"):
        ingest_celebahq(root, expected_size=SIZE, progress=False)


def test_attribute_names_that_differ_are_named(tmp_path):
    root = build_root(tmp_path / "root", {"0.jpg": jpeg()}, ["0 0 000001.jpg"], ["000001.jpg 1"], [attribute_row(0)])
    lines = (root / ATTRIBUTE_FILE).read_text().splitlines()
    lines[1] = " ".join([*CELEBA_ATTRIBUTES[:-1], "Old"])
    (root / ATTRIBUTE_FILE).write_text("\n".join(lines) + "\n")
    with pytest.raises(CelebAHQLayoutError, match=r"unknown \['Old'\], missing \['Young'\]"):
        ingest_celebahq(root, expected_size=SIZE, progress=False)
