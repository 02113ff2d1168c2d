"""CelebA-HQ in its official layout: parsers for each annotation file and the ingest.

The layout (see docs/data.md)::

    ROOT/CelebA-HQ-img/0.jpg … 29999.jpg
    ROOT/CelebA-HQ-to-CelebA-mapping.txt   idx orig_idx orig_file      (header, whitespace-aligned)
    ROOT/identity_CelebA.txt               000001.jpg 2880             (no header)
    ROOT/CelebAMask-HQ-attribute-anno.txt  count / 40 names / "0.jpg  -1 1 …"
    ROOT/list_eval_partition.txt           000001.jpg 0                (optional)

The ingest never crashes on bad data: every input record (each entry of the image folder, each
mapping row without an image, each malformed or duplicate annotation row) ends either in the
catalog or in the quarantine with its reason, so ``catalog + quarantine == inputs``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from idglow.storage import sha256_file

IMAGE_DIR = "CelebA-HQ-img"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
IDENTITY_FILE = "identity_CelebA.txt"
ATTRIBUTE_FILE = "CelebAMask-HQ-attribute-anno.txt"
PARTITION_FILE = "list_eval_partition.txt"

# CelebA's own split by file number (list_eval_partition.txt encodes the same boundaries).
LAST_TRAIN_FILE_NUMBER = 162770
LAST_VAL_FILE_NUMBER = 182637
PARTITION_NAMES = {0: "train", 1: "val", 2: "test"}

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup",
    "High_Cheekbones", "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard",
    "Oval_Face", "Pale_Skin", "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns",
    "Smiling", "Straight_Hair", "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat",
    "Wearing_Lipstick", "Wearing_Necklace", "Wearing_Necktie", "Young",
)

_HQ_IMAGE_NAME = re.compile(r"^(\d+)\.jpg$")
_CELEBA_FILE_NAME = re.compile(r"^(\d{6})\.jpg$")


class CelebAHQLayoutError(FileNotFoundError):
    """A required file of the official layout is missing; the message names it."""


class MalformedRow(ValueError):
    """One annotation line does not have the documented shape."""


# ---------------------------------------------------------------------------- parsers


@dataclass(frozen=True)
class MappingRow:
    idx: int
    orig_idx: int
    orig_file: str


def parse_mapping_line(line: str) -> MappingRow:
    """``0 119613 119614.jpg`` → MappingRow(0, 119613, "119614.jpg").

    ``orig_idx`` is 0-based and ``orig_file`` is ``orig_idx + 1`` zero-padded to six digits;
    a row where the two disagree is malformed.
    """
    parts = line.split()
    if len(parts) != 3:
        raise MalformedRow(f"expected 'idx orig_idx orig_file', got {line.strip()!r}")
    idx_text, orig_idx_text, orig_file = parts
    if not idx_text.isdigit() or not orig_idx_text.isdigit():
        raise MalformedRow(f"idx and orig_idx must be non-negative integers in {line.strip()!r}")
    match = _CELEBA_FILE_NAME.match(orig_file)
    if match is None:
        raise MalformedRow(f"orig_file {orig_file!r} is not a six-digit CelebA file name")
    orig_idx = int(orig_idx_text)
    if int(match.group(1)) != orig_idx + 1:
        raise MalformedRow(f"orig_file {orig_file!r} is not orig_idx + 1 ({orig_idx + 1:06d}.jpg)")
    return MappingRow(int(idx_text), orig_idx, orig_file)


def parse_identity_line(line: str) -> tuple[str, int]:
    """``000001.jpg 2880`` → ("000001.jpg", 2880)."""
    parts = line.split()
    if len(parts) != 2 or _CELEBA_FILE_NAME.match(parts[0]) is None or not parts[1].isdigit():
        raise MalformedRow(f"expected '<000001.jpg> <identity>', got {line.strip()!r}")
    return parts[0], int(parts[1])


def parse_attribute_names(line: str) -> tuple[str, ...]:
    """The second line of the attribute file: the 40 attribute names."""
    names = tuple(line.split())
    if len(names) != len(CELEBA_ATTRIBUTES):
        raise MalformedRow(f"expected {len(CELEBA_ATTRIBUTES)} attribute names, got {len(names)}")
    return names


def parse_attribute_line(line: str, n_attributes: int = len(CELEBA_ATTRIBUTES)) -> tuple[str, tuple[bool, ...]]:
    """``0.jpg  -1 1 …`` → ("0.jpg", (False, True, …)); values are -1 or 1."""
    parts = line.split()
    if len(parts) != n_attributes + 1 or _HQ_IMAGE_NAME.match(parts[0]) is None:
        raise MalformedRow(f"expected '<N.jpg>' and {n_attributes} values of -1/1, got {len(parts) - 1} values")
    values = parts[1:]
    if any(v not in ("-1", "1") for v in values):
        raise MalformedRow(f"attribute values must be -1 or 1 in the row for {parts[0]}")
    return parts[0], tuple(v == "1" for v in values)


def parse_partition_line(line: str) -> tuple[str, str]:
    """``000001.jpg 0`` → ("000001.jpg", "train"); 0 train, 1 val, 2 test."""
    parts = line.split()
    if len(parts) != 2 or _CELEBA_FILE_NAME.match(parts[0]) is None or parts[1] not in ("0", "1", "2"):
        raise MalformedRow(f"expected '<000001.jpg> <0|1|2>', got {line.strip()!r}")
    return parts[0], PARTITION_NAMES[int(parts[1])]


def partition_from_file_number(number: int) -> str:
    """CelebA's split by the number of ``orig_file`` (``orig_idx + 1``)."""
    if number <= LAST_TRAIN_FILE_NUMBER:
        return "train"
    if number <= LAST_VAL_FILE_NUMBER:
        return "val"
    return "test"


# ------------------------------------------------------------------- annotation tables

K = TypeVar("K")
V = TypeVar("V")


@dataclass(frozen=True)
class RowProblem:
    """A line that goes to the quarantine on its own: malformed, or a duplicate of a key."""

    source: str
    line_number: int
    reason: str


@dataclass
class AnnotationTable(Generic[K, V]):
    """The first row of every key, plus each line that could not be used."""

    values: dict[K, V] = field(default_factory=dict)
    problems: list[RowProblem] = field(default_factory=list)
    conflicting_keys: set[K] = field(default_factory=set)


def read_annotation_table(
    lines: Iterable[tuple[int, str]],
    source: str,
    parse: Callable[[str], tuple[K, V]],
) -> AnnotationTable[K, V]:
    """Parse numbered lines into a table keyed by the row's key.

    A second row for a key is a duplicate (quarantined with its line number); when its value
    differs from the first, the key is also marked conflicting, so the image that needs it
    is quarantined rather than given an arbitrary value.
    """
    table: AnnotationTable[K, V] = AnnotationTable()
    first_line: dict[K, int] = {}
    for number, line in lines:
        if not line.strip():
            continue
        try:
            key, value = parse(line)
        except MalformedRow as error:
            table.problems.append(RowProblem(source, number, f"malformed row: {error}"))
            continue
        if key in table.values:
            same = table.values[key] == value
            if not same:
                table.conflicting_keys.add(key)
            detail = "same values" if same else "conflicting values"
            table.problems.append(
                RowProblem(source, number, f"duplicate row for {key} (first on line {first_line[key]}, {detail})")
            )
            continue
        table.values[key] = value
        first_line[key] = number
    return table


def _numbered_lines(path: Path, skip: int = 0) -> Iterable[tuple[int, str]]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if number > skip:
                yield number, line


def _mapping_pair(line: str) -> tuple[int, MappingRow]:
    row = parse_mapping_line(line)
    return row.idx, row


# ------------------------------------------------------------------------ image check


@dataclass(frozen=True)
class ImageCheck:
    path: str
    reason: str | None
    width: int = 0
    height: int = 0
    sha256: str = ""


def check_image(path: str, expected_size: int) -> ImageCheck:
    """Decode one file fully (so truncation shows) and check it is a JPEG of the expected size."""
    try:
        if os.path.getsize(path) == 0:
            return ImageCheck(path, "empty file (0 bytes)")
        with Image.open(path) as image:
            width, height = image.size
            kind = image.format
            # Decoding at 1/8 scale still reads every byte, so a truncated file still fails.
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
    except UnidentifiedImageError:
        return ImageCheck(path, "not an image")
    except (OSError, SyntaxError, ValueError) as error:
        return ImageCheck(path, f"corrupt or truncated image: {error}")
    if kind != "JPEG":
        return ImageCheck(path, f"not a JPEG (found {kind})", width, height)
    if (width, height) != (expected_size, expected_size):
        return ImageCheck(path, f"size {width}x{height}, expected {expected_size}x{expected_size}", width, height)
    return ImageCheck(path, None, width, height, sha256_file(path))


def _check_image_args(args: tuple[str, int]) -> ImageCheck:
    return check_image(*args)


# ----------------------------------------------------------------------------- ingest


@dataclass(frozen=True)
class IngestResult:
    catalog: pd.DataFrame
    quarantine: pd.DataFrame
    counts: dict[str, int]


CATALOG_COLUMNS = (
    "hq_idx", "celeba_file", "orig_idx", "identity", "partition",
    "width", "height", "sha256", "path", *CELEBA_ATTRIBUTES,
)
QUARANTINE_COLUMNS = ("path", "reason", "kind", "hq_idx")


def require_layout(root: Path) -> None:
    """Raise one clear error naming every missing required part of the official layout."""
    missing = [name for name in (IMAGE_DIR, MAPPING_FILE, IDENTITY_FILE, ATTRIBUTE_FILE) if not (root / name).exists()]
    if missing:
        raise CelebAHQLayoutError(
            f"CelebA-HQ root {root} is missing {', '.join(missing)}; expected the official layout "
            f"({IMAGE_DIR}/, {MAPPING_FILE}, {IDENTITY_FILE}, {ATTRIBUTE_FILE}, optionally {PARTITION_FILE}); "
            "see docs/data.md"
        )


def _read_attributes(path: Path) -> AnnotationTable[str, tuple[bool, ...]]:
    with open(path, encoding="utf-8", errors="replace") as handle:
        head = [handle.readline(), handle.readline()]
    try:
        names = parse_attribute_names(head[1])
    except MalformedRow as error:
        raise CelebAHQLayoutError(f"{path}: second line must hold the 40 attribute names ({error})") from error
    if names != CELEBA_ATTRIBUTES:
        raise CelebAHQLayoutError(f"{path}: attribute names differ from CelebA's 40 names in order")
    return read_annotation_table(_numbered_lines(path, skip=2), ATTRIBUTE_FILE, parse_attribute_line)


def ingest_celebahq(
    root: str | os.PathLike[str],
    expected_size: int = 1024,
    workers: int | None = None,
    progress: bool = True,
) -> IngestResult:
    """Read a CelebA-HQ root in the official layout into a catalog and a quarantine.

    ``expected_size`` is the side every image must have (1024 for the real data). ``workers``
    processes decode images in parallel (default: the CPU count, at most 8).
    """
    root = Path(root)
    require_layout(root)

    mapping = read_annotation_table(_numbered_lines(root / MAPPING_FILE, skip=1), MAPPING_FILE, _mapping_pair)
    identities = read_annotation_table(_numbered_lines(root / IDENTITY_FILE), IDENTITY_FILE, parse_identity_line)
    attributes = _read_attributes(root / ATTRIBUTE_FILE)
    partitions: AnnotationTable[str, str] | None = None
    if (root / PARTITION_FILE).exists():
        partitions = read_annotation_table(_numbered_lines(root / PARTITION_FILE), PARTITION_FILE, parse_partition_line)

    image_dir = root / IMAGE_DIR
    entries = sorted(os.scandir(image_dir), key=lambda e: (_sort_key(e.name), e.name))
    quarantine: list[dict] = []
    candidates: list[tuple[int, str]] = []
    for entry in entries:
        relative = f"{IMAGE_DIR}/{entry.name}"
        match = _HQ_IMAGE_NAME.match(entry.name)
        if not entry.is_file():
            quarantine.append(_q(relative, "not a regular file", "image", None))
        elif match is None:
            quarantine.append(_q(relative, "unexpected file name (expected <index>.jpg)", "image", None))
        else:
            candidates.append((int(match.group(1)), entry.path))

    checks = _check_all([path for _, path in candidates], expected_size, workers, progress)

    rows: list[dict] = []
    seen_content: dict[str, int] = {}
    for (idx, path), check in zip(candidates, checks, strict=True):
        relative = f"{IMAGE_DIR}/{Path(path).name}"
        reason = check.reason or _annotation_reason(idx, mapping, identities, attributes, partitions)
        if reason is None and check.sha256 in seen_content:
            reason = f"duplicate image content of {seen_content[check.sha256]}.jpg"
        if reason is not None:
            quarantine.append(_q(relative, reason, "image", idx))
            continue
        seen_content[check.sha256] = idx
        row = mapping.values[idx]
        file_number = row.orig_idx + 1
        partition = partitions.values[row.orig_file] if partitions is not None else partition_from_file_number(file_number)
        record = {
            "hq_idx": idx,
            "celeba_file": row.orig_file,
            "orig_idx": row.orig_idx,
            "identity": identities.values[row.orig_file],
            "partition": partition,
            "width": check.width,
            "height": check.height,
            "sha256": check.sha256,
            "path": relative,
        }
        record.update(zip(CELEBA_ATTRIBUTES, attributes.values[f"{idx}.jpg"], strict=True))
        rows.append(record)

    image_indices = {idx for idx, _ in candidates}
    orphan_rows = sorted(set(mapping.values) - image_indices)
    for idx in orphan_rows:
        quarantine.append(_q(f"{IMAGE_DIR}/{idx}.jpg", "mapping row without image", "mapping_row", idx))

    tables = [mapping, identities, attributes] + ([partitions] if partitions is not None else [])
    row_problems = [problem for table in tables for problem in table.problems]
    for problem in row_problems:
        quarantine.append(_q(f"{problem.source}:{problem.line_number}", problem.reason, "annotation_row", None))

    catalog = pd.DataFrame(rows, columns=list(CATALOG_COLUMNS))
    catalog = catalog.astype({"hq_idx": "int64", "orig_idx": "int64", "identity": "int64", "width": "int64", "height": "int64"})
    for name in CELEBA_ATTRIBUTES:
        catalog[name] = catalog[name].astype(bool)
    quarantine_frame = pd.DataFrame(quarantine, columns=list(QUARANTINE_COLUMNS)).astype({"hq_idx": "Int64"})

    counts = {
        "image_entries": len(entries),
        "orphan_mapping_rows": len(orphan_rows),
        "annotation_row_problems": len(row_problems),
        "catalog": len(catalog),
        "quarantine": len(quarantine_frame),
        "identities": int(catalog["identity"].nunique()),
    }
    counts["inputs"] = counts["image_entries"] + counts["orphan_mapping_rows"] + counts["annotation_row_problems"]
    if counts["catalog"] + counts["quarantine"] != counts["inputs"]:
        raise AssertionError(f"ingest lost records: {counts}")  # an invariant, not user input
    return IngestResult(catalog=catalog, quarantine=quarantine_frame, counts=counts)


def _sort_key(name: str) -> int:
    match = _HQ_IMAGE_NAME.match(name)
    return int(match.group(1)) if match else -1


def _q(path: str, reason: str, kind: str, hq_idx: int | None) -> dict:
    return {"path": path, "reason": reason, "kind": kind, "hq_idx": hq_idx}


def _annotation_reason(
    idx: int,
    mapping: AnnotationTable[int, MappingRow],
    identities: AnnotationTable[str, int],
    attributes: AnnotationTable[str, tuple[bool, ...]],
    partitions: AnnotationTable[str, str] | None,
) -> str | None:
    if idx in mapping.conflicting_keys:
        return f"conflicting duplicate rows in {MAPPING_FILE}"
    row = mapping.values.get(idx)
    if row is None:
        return "image without mapping row"
    if row.orig_file in identities.conflicting_keys:
        return f"conflicting duplicate rows in {IDENTITY_FILE} for {row.orig_file}"
    if row.orig_file not in identities.values:
        return f"no identity for {row.orig_file}"
    name = f"{idx}.jpg"
    if name in attributes.conflicting_keys:
        return f"conflicting duplicate rows in {ATTRIBUTE_FILE}"
    if name not in attributes.values:
        return "no attribute row"
    if partitions is not None:
        if row.orig_file in partitions.conflicting_keys:
            return f"conflicting duplicate rows in {PARTITION_FILE} for {row.orig_file}"
        if row.orig_file not in partitions.values:
            return f"no partition row for {row.orig_file}"
    return None


def _check_all(paths: list[str], expected_size: int, workers: int | None, progress: bool) -> list[ImageCheck]:
    workers = workers if workers is not None else min(os.cpu_count() or 1, 8)
    bar = tqdm(total=len(paths), desc="checking images", unit="img", disable=not progress)
    try:
        if workers <= 1 or len(paths) < 64:
            results = []
            for path in paths:
                results.append(check_image(path, expected_size))
                bar.update()
            return results
        with ProcessPoolExecutor(max_workers=workers) as pool:
            results = []
            for result in pool.map(_check_image_args, ((p, expected_size) for p in paths), chunksize=32):
                results.append(result)
                bar.update()
            return results
    finally:
        bar.close()
