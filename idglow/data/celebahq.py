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

import errno
import hashlib
import os
import re
import stat
import warnings
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Generic, TypeVar

import pandas as pd
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

IMAGE_DIR = "CelebA-HQ-img"
MAPPING_FILE = "CelebA-HQ-to-CelebA-mapping.txt"
IDENTITY_FILE = "identity_CelebA.txt"
ATTRIBUTE_FILE = "CelebAMask-HQ-attribute-anno.txt"
PARTITION_FILE = "list_eval_partition.txt"

# CelebA's own split by file number (list_eval_partition.txt encodes the same boundaries).
LAST_TRAIN_FILE_NUMBER = 162770
LAST_VAL_FILE_NUMBER = 182637
PARTITION_NAMES = {0: "train", 1: "val", 2: "test"}
MAX_INDEX_DIGITS = 18  # any such integer fits int64

# Quarantine reasons (docs/data.md has the table). A reason names the cause exactly and
# carries only values read from the input; a library's own message goes to ``detail``.
# -- a folder entry, from its name and type
REASON_NAME_NOT_UTF8 = "file name is not valid UTF-8"
REASON_NAME_NON_CANONICAL = "non-canonical file name (expected <index>.jpg: ASCII digits, no leading zeros)"
REASON_INDEX_TOO_LARGE = f"index has more than {MAX_INDEX_DIGITS} digits"
REASON_NAME_UNEXPECTED = "unexpected file name (expected <index>.jpg)"
REASON_DUPLICATE_INDEX = "duplicate index {idx} (first: {first})"
REASON_SYMLINK = "symbolic link (not followed)"
REASON_NOT_REGULAR = "not a regular file"
REASON_UNREADABLE = "unreadable file"
# -- an image file, from its header (nothing decoded yet)
REASON_EMPTY = "empty file (0 bytes)"
REASON_TOO_LARGE = "file of {size} bytes, over the {limit}-byte limit for a {expected}x{expected} JPEG"
REASON_PIXEL_LIMIT = "header declares more pixels than PIL's decompression-bomb limit"
REASON_NOT_IMAGE = "not an image"
REASON_NOT_JPEG = "not a JPEG (found {kind})"
REASON_SIZE = "size {width}x{height}, expected {expected}x{expected}"
REASON_MODE = "unsupported colour mode {mode}"
REASON_METADATA_DAMAGED = "damaged header metadata (EXIF orientation unknown)"
REASON_EXIF_ORIENTATION = "EXIF orientation {value} (rotated or mirrored)"
# -- an image file, from decoding it
REASON_CORRUPT = "corrupt or truncated image"
# -- an image, from its annotations
REASON_NO_MAPPING_ROW = "image without mapping row"
REASON_NO_IDENTITY = "no identity for {file}"
REASON_NO_ATTRIBUTE_ROW = "no attribute row for {name}"
REASON_NO_PARTITION_ROW = "no partition row for {file}"
REASON_MALFORMED_KEY_ROW = "only a malformed row in {source} for {key} (line {line})"
REASON_CONFLICTING_ROWS = "conflicting duplicate rows in {source} for {key}"
REASON_DUPLICATE_CONTENT = "duplicate image content of {idx}.jpg"
# -- an annotation row
REASON_ORPHAN_MAPPING_ROW = "mapping row without image"
REASON_MALFORMED_ROW = "malformed row: {error}"
REASON_DUPLICATE_ROW = "duplicate row for {key} (first on line {line}, {detail})"

CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow",
    "Arched_Eyebrows",
    "Attractive",
    "Bags_Under_Eyes",
    "Bald",
    "Bangs",
    "Big_Lips",
    "Big_Nose",
    "Black_Hair",
    "Blond_Hair",
    "Blurry",
    "Brown_Hair",
    "Bushy_Eyebrows",
    "Chubby",
    "Double_Chin",
    "Eyeglasses",
    "Goatee",
    "Gray_Hair",
    "Heavy_Makeup",
    "High_Cheekbones",
    "Male",
    "Mouth_Slightly_Open",
    "Mustache",
    "Narrow_Eyes",
    "No_Beard",
    "Oval_Face",
    "Pale_Skin",
    "Pointy_Nose",
    "Receding_Hairline",
    "Rosy_Cheeks",
    "Sideburns",
    "Smiling",
    "Straight_Hair",
    "Wavy_Hair",
    "Wearing_Earrings",
    "Wearing_Hat",
    "Wearing_Lipstick",
    "Wearing_Necklace",
    "Wearing_Necktie",
    "Young",
)

# Only ASCII digits are numbers here: str.isdigit(), int() and a str pattern's \d also accept
# other scripts ('٣', '３'), so "٣.jpg" would silently become index 3. Integers are canonical
# (no leading zeros: "03" would collide with "3") and at most MAX_INDEX_DIGITS digits, so every
# value fits the catalog's int64 and int() never meets its 4300-digit limit.
_CANONICAL_INT = re.compile(r"(?:0|[1-9][0-9]{0,%d})" % (MAX_INDEX_DIGITS - 1), re.ASCII)
_HQ_IMAGE_NAME = re.compile(r"(0|[1-9][0-9]{0,%d})\.jpg" % (MAX_INDEX_DIGITS - 1), re.ASCII)
_CELEBA_FILE_NAME = re.compile(r"([0-9]{6})\.jpg", re.ASCII)


class CelebAHQLayoutError(FileNotFoundError):
    """A required file of the official layout is missing or unusable; the message names it."""


class MalformedRow(ValueError):
    """One annotation line does not have the documented shape.

    ``key`` is the row's key when it could still be read (so the image that needed the row can
    say its row was malformed rather than missing).
    """

    def __init__(self, message: str, key: object = None) -> None:
        super().__init__(message)
        self.key = key


def canonical_int(text: str) -> int | None:
    """``"12"`` → 12; ``None`` for anything else: signs, leading zeros, non-ASCII digits, > 18 digits."""
    return int(text) if _CANONICAL_INT.fullmatch(text) else None


def hq_index_of(name: str) -> int | None:
    """``"12.jpg"`` → 12 for a canonical CelebA-HQ image name, else ``None``."""
    match = _HQ_IMAGE_NAME.fullmatch(name)
    return int(match.group(1)) if match else None


def _excerpt(line: str, limit: int = 80) -> str:
    # A reason quotes the line, but a hostile file can hold one line of gigabytes.
    text = line.strip()
    return repr(text if len(text) <= limit else text[:limit] + "…")


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
        raise MalformedRow(f"expected 'idx orig_idx orig_file', got {_excerpt(line)}")
    idx_text, orig_idx_text, orig_file = parts
    idx, orig_idx = canonical_int(idx_text), canonical_int(orig_idx_text)
    if idx is None or orig_idx is None:
        raise MalformedRow(
            f"idx and orig_idx must be ASCII integers without leading zeros in {_excerpt(line)}", key=idx
        )
    match = _CELEBA_FILE_NAME.fullmatch(orig_file)
    if match is None:
        raise MalformedRow(f"orig_file {orig_file!r} is not a six-digit CelebA file name", key=idx)
    if int(match.group(1)) != orig_idx + 1:
        raise MalformedRow(f"orig_file {orig_file!r} is not orig_idx + 1 ({orig_idx + 1:06d}.jpg)", key=idx)
    return MappingRow(idx, orig_idx, orig_file)


def _celeba_key(text: str) -> str | None:
    return text if _CELEBA_FILE_NAME.fullmatch(text) else None


def parse_identity_line(line: str) -> tuple[str, int]:
    """``000001.jpg 2880`` → ("000001.jpg", 2880)."""
    parts = line.split()
    if len(parts) != 2 or _celeba_key(parts[0]) is None:
        raise MalformedRow(f"expected '<000001.jpg> <identity>', got {_excerpt(line)}")
    identity = canonical_int(parts[1])
    if identity is None:
        raise MalformedRow(f"identity must be an ASCII integer without leading zeros in {_excerpt(line)}", key=parts[0])
    return parts[0], identity


def parse_attribute_names(line: str) -> tuple[str, ...]:
    """The second line of the attribute file: the 40 attribute names."""
    names = tuple(line.split())
    if len(names) != len(CELEBA_ATTRIBUTES):
        raise MalformedRow(f"expected {len(CELEBA_ATTRIBUTES)} attribute names, got {len(names)}")
    return names


def parse_attribute_line(line: str, n_attributes: int = len(CELEBA_ATTRIBUTES)) -> tuple[str, tuple[bool, ...]]:
    """``0.jpg  -1 1 …`` → ("0.jpg", (False, True, …)); values are -1 or 1."""
    parts = line.split()
    if not parts:
        raise MalformedRow("empty row")
    name, values = parts[0], parts[1:]
    if hq_index_of(name) is None:
        raise MalformedRow(f"{_excerpt(name)} is not a canonical image name (<index>.jpg)")
    if len(values) != n_attributes:
        raise MalformedRow(f"expected {n_attributes} values of -1/1 for {name}, got {len(values)} values", key=name)
    if any(v not in ("-1", "1") for v in values):
        raise MalformedRow(f"attribute values must be -1 or 1 in the row for {name}", key=name)
    return name, tuple(v == "1" for v in values)


def parse_partition_line(line: str) -> tuple[str, str]:
    """``000001.jpg 0`` → ("000001.jpg", "train"); 0 train, 1 val, 2 test."""
    parts = line.split()
    if len(parts) != 2 or _celeba_key(parts[0]) is None:
        raise MalformedRow(f"expected '<000001.jpg> <0|1|2>', got {_excerpt(line)}")
    if parts[1] not in ("0", "1", "2"):
        raise MalformedRow(f"partition must be 0, 1 or 2 in {_excerpt(line)}", key=parts[0])
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
    malformed_keys: dict[K, int] = field(default_factory=dict)  # key → line of its first malformed row


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
            table.problems.append(RowProblem(source, number, REASON_MALFORMED_ROW.format(error=error)))
            if error.key is not None:
                table.malformed_keys.setdefault(error.key, number)
            continue
        if key in table.values:
            same = table.values[key] == value
            if not same:
                table.conflicting_keys.add(key)
            detail = "same values" if same else "conflicting values"
            reason = REASON_DUPLICATE_ROW.format(key=key, line=first_line[key], detail=detail)
            table.problems.append(RowProblem(source, number, reason))
            continue
        table.values[key] = value
        first_line[key] = number
    return table


def _numbered_lines(path: Path, skip: int = 0) -> Iterable[tuple[int, str]]:
    # errors="replace": a byte that is not UTF-8 makes its row malformed, not the file unreadable.
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if number > skip:
                yield number, line


def _mapping_pair(line: str) -> tuple[int, MappingRow]:
    row = parse_mapping_line(line)
    return row.idx, row


# ------------------------------------------------------------------------ image check

# Every JPEG decoder PIL has reports one of these modes; the loader (idglow.data.images.load_rgb)
# converts L and CMYK to RGB, and the catalog records the source mode.
SOURCE_MODES = ("RGB", "L", "CMYK")
EXIF_ORIENTATION_TAG = 0x0112
# EXIF orientations 2-8 ask a viewer to rotate or mirror; 1 (and values outside 1-8, which
# PIL.ImageOps.exif_transpose ignores too) mean the pixels are upright as stored.
_TRANSPOSING_ORIENTATIONS = frozenset(range(2, 9))
# A JPEG never needs more bytes than its raw RGB pixels; this is room for EXIF, ICC and XMP.
METADATA_ALLOWANCE_BYTES = 1 << 20
_HASH_CHUNK = 1 << 20


def max_image_bytes(expected_size: int) -> int:
    """The largest file accepted for an ``expected_size``² JPEG: bounds what any header parser reads."""
    return 3 * expected_size * expected_size + METADATA_ALLOWANCE_BYTES


@dataclass(frozen=True)
class ImageCheck:
    path: str
    reason: str | None
    width: int = 0
    height: int = 0
    sha256: str = ""
    mode: str = ""
    detail: str = ""  # the library's own words (exception text), kept apart so reasons stay exact


def _describe(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= 200 else text[:200] + "…"


def check_image(path: str, expected_size: int) -> ImageCheck:
    """Check one file from its header first, then decode it fully (so truncation shows).

    Nothing is decoded unless the header declares a JPEG of exactly ``expected_size``², so
    memory stays bounded whatever a file claims. Never raises: every file gets an ImageCheck.
    """
    # O_NOFOLLOW: a symlink is refused, never followed (a loop or a link out of the root);
    # O_NONBLOCK: opening a FIFO must not wait for a writer.
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags)
    except OSError as error:
        if error.errno == errno.ELOOP:
            return ImageCheck(path, REASON_SYMLINK)
        return ImageCheck(path, REASON_UNREADABLE, detail=_describe(error))
    try:
        status = os.fstat(fd)
        if not stat.S_ISREG(status.st_mode):  # a directory or FIFO opens too; only files are read
            os.close(fd)
            return ImageCheck(path, REASON_NOT_REGULAR)
        with os.fdopen(fd, "rb") as handle:
            return _check_open_file(handle, status, path, expected_size)
    except OSError as error:  # the file went away or the disk failed while it was read
        return ImageCheck(path, REASON_UNREADABLE, detail=_describe(error))


def _check_open_file(handle: BinaryIO, status: os.stat_result, path: str, expected_size: int) -> ImageCheck:
    if status.st_size == 0:
        return ImageCheck(path, REASON_EMPTY)
    limit = max_image_bytes(expected_size)
    if status.st_size > limit:
        return ImageCheck(path, REASON_TOO_LARGE.format(size=status.st_size, limit=limit, expected=expected_size))
    opened = _open_header(handle, path)
    if isinstance(opened, ImageCheck):
        return opened
    image, header_warnings = opened
    with image:
        refused = _check_header(image, header_warnings, path, expected_size)
        if refused is not None:
            return refused
        width, height, mode = image.width, image.height, image.mode
        try:
            # Decoding at 1/8 scale still reads every byte, so a truncated file still fails.
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
        except Exception as error:  # noqa: BLE001 -- decoders raise OSError, SyntaxError, ValueError… on damage
            return ImageCheck(path, REASON_CORRUPT, width, height, mode=mode, detail=_describe(error))
    return ImageCheck(path, None, width, height, _sha256_of(handle), mode)


@contextmanager
def _pil_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Collect what PIL only warns about while it reads a header.

    PIL warns, rather than raises, about damaged metadata (it then skips the tag: a damaged
    orientation would pass as upright), and about an image over its pixel limit (above twice
    the limit it raises). A bomb is turned into an exception here; the rest is collected.
    """
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        yield caught


def _pil_messages(caught: list[warnings.WarningMessage]) -> list[str]:
    # The filter is process-wide for a moment: keep only what PIL's own modules said.
    return [str(warning.message) for warning in caught if Path(warning.filename).parent.name == "PIL"]


def _open_header(handle: BinaryIO, path: str) -> tuple[Image.Image, list[str]] | ImageCheck:
    """PIL's lazy open: it reads the header only, so format, size and mode are known undecoded."""
    try:
        with _pil_warnings() as caught:
            image = Image.open(handle)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        return ImageCheck(path, REASON_PIXEL_LIMIT, detail=_describe(error))
    except UnidentifiedImageError:
        return ImageCheck(path, REASON_NOT_IMAGE)
    except Exception as error:  # noqa: BLE001 -- a hostile header can break a plugin in any way
        return ImageCheck(path, REASON_CORRUPT, detail=_describe(error))
    return image, _pil_messages(caught)


def _check_header(image: Image.Image, header_warnings: list[str], path: str, expected_size: int) -> ImageCheck | None:
    width, height = image.size
    if image.format != "JPEG":
        return ImageCheck(path, REASON_NOT_JPEG.format(kind=image.format), width, height)
    if (width, height) != (expected_size, expected_size):
        return ImageCheck(path, REASON_SIZE.format(width=width, height=height, expected=expected_size), width, height)
    mode = image.mode
    if mode not in SOURCE_MODES:
        return ImageCheck(path, REASON_MODE.format(mode=mode), width, height, mode=mode)
    try:
        with _pil_warnings() as caught:
            orientation = image.getexif().get(EXIF_ORIENTATION_TAG)
    except Exception as error:  # noqa: BLE001 -- EXIF is a format of its own inside the header
        return ImageCheck(path, REASON_METADATA_DAMAGED, width, height, mode=mode, detail=_describe(error))
    header_warnings = header_warnings + _pil_messages(caught)
    if header_warnings:
        return ImageCheck(
            path, REASON_METADATA_DAMAGED, width, height, mode=mode, detail="; ".join(header_warnings)[:200]
        )
    # Quarantined rather than rotated: the shards pass JPEG bytes through and every later reader
    # decodes raw pixels, so an orientation tag would be honoured by some readers and not others.
    if orientation in _TRANSPOSING_ORIENTATIONS:
        return ImageCheck(path, REASON_EXIF_ORIENTATION.format(value=orientation), width, height, mode=mode)
    return None


def _sha256_of(handle: BinaryIO) -> str:
    handle.seek(0)
    digest = hashlib.sha256()
    while chunk := handle.read(_HASH_CHUNK):
        digest.update(chunk)
    return digest.hexdigest()


def _check_image_args(args: tuple[str, int]) -> ImageCheck:
    return check_image(*args)


# ------------------------------------------------------------------------ image folder

ENTRY_FILE = "file"
ENTRY_SYMLINK = "symlink"
ENTRY_OTHER = "other"  # directory, FIFO, socket, device
ENTRY_UNREADABLE = "unreadable"

_ASCII_DIGITS_JPG = re.compile(r"[0-9]+\.jpg", re.ASCII)


@dataclass(frozen=True)
class FolderEntry:
    name: str  # as os.scandir gives it: bytes that are not UTF-8 are surrogate-escaped
    kind: str
    path: str
    detail: str = ""


def scan_image_folder(image_dir: Path) -> list[FolderEntry]:
    """Every entry of the folder, typed without following symlinks."""
    entries = []
    with os.scandir(image_dir) as listing:
        for entry in listing:
            try:
                if entry.is_symlink():
                    kind = ENTRY_SYMLINK
                elif entry.is_file(follow_symlinks=False):
                    kind = ENTRY_FILE
                else:
                    kind = ENTRY_OTHER
                entries.append(FolderEntry(entry.name, kind, entry.path))
            except OSError as error:
                entries.append(FolderEntry(entry.name, ENTRY_UNREADABLE, entry.path, _describe(error)))
    return sorted(entries, key=lambda e: (_sort_index(e.name), os.fsencode(e.name)))


def display_name(name: str) -> str:
    """The name as valid UTF-8 text (a parquet string): undecodable bytes shown as ``\\xff``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        os.fsencode(name).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def name_reason(name: str) -> str | None:
    """Why a folder entry's name is not a catalogued image name, or ``None`` if it is one."""
    if not _is_utf8(name):
        return REASON_NAME_NOT_UTF8
    if hq_index_of(name) is not None:
        return None
    if _ASCII_DIGITS_JPG.fullmatch(name) and not name.startswith("0"):
        return REASON_INDEX_TOO_LARGE
    if _looks_like_index(name):
        return REASON_NAME_NON_CANONICAL
    return REASON_NAME_UNEXPECTED


def _looks_like_index(name: str) -> bool:
    """Shaped like ``<index>.jpg`` to a reader: any script's digits (what str.isdigit accepts,
    '²' included), leading zeros, ``.jpeg`` or upper case. Such a name is refused as
    non-canonical, so the reason says why it is not simply an unrelated file."""
    stem, dot, extension = name.rpartition(".")
    return bool(dot) and stem.isdigit() and extension.lower() in ("jpg", "jpeg")


@dataclass
class FolderTriage:
    candidates: list[tuple[int, str]] = field(default_factory=list)  # (hq_idx, path) to check
    quarantine: list[dict] = field(default_factory=list)
    present: set[int] = field(default_factory=set)  # every canonical index seen, usable or not


def triage_entries(entries: Iterable[FolderEntry]) -> FolderTriage:
    """Decide from the name and the entry's type alone which entries are images to check."""
    triage = FolderTriage()
    first_by_index: dict[int, str] = {}
    for entry in entries:
        relative = f"{IMAGE_DIR}/{display_name(entry.name)}"
        idx = hq_index_of(entry.name)
        if idx is not None and idx in first_by_index:
            # A directory cannot hold two equal names; this guards entries from anywhere else.
            reason = REASON_DUPLICATE_INDEX.format(idx=idx, first=first_by_index[idx])
            triage.quarantine.append(_q(relative, reason, KIND_IMAGE, idx))
            continue
        if idx is not None:
            first_by_index[idx] = relative
            triage.present.add(idx)
        if entry.kind == ENTRY_SYMLINK:
            triage.quarantine.append(_q(relative, REASON_SYMLINK, KIND_IMAGE, idx))
        elif entry.kind == ENTRY_OTHER:
            triage.quarantine.append(_q(relative, REASON_NOT_REGULAR, KIND_IMAGE, idx))
        elif entry.kind == ENTRY_UNREADABLE:
            triage.quarantine.append(_q(relative, REASON_UNREADABLE, KIND_IMAGE, idx, entry.detail))
        elif idx is None:
            triage.quarantine.append(_q(relative, name_reason(entry.name) or REASON_NAME_UNEXPECTED, KIND_IMAGE, None))
        else:
            triage.candidates.append((idx, entry.path))
    return triage


def _sort_index(name: str) -> int:
    idx = hq_index_of(name)
    return idx if idx is not None else -1


# ----------------------------------------------------------------------------- ingest


@dataclass(frozen=True)
class IngestResult:
    catalog: pd.DataFrame
    quarantine: pd.DataFrame
    counts: dict[str, int]


CATALOG_COLUMNS = (
    "hq_idx",
    "celeba_file",
    "orig_idx",
    "identity",
    "partition",
    "width",
    "height",
    "sha256",
    "path",
    *CELEBA_ATTRIBUTES,
    "mode",
)
QUARANTINE_COLUMNS = ("path", "reason", "kind", "hq_idx", "detail")
KIND_IMAGE = "image"
KIND_MAPPING_ROW = "mapping_row"
KIND_ANNOTATION_ROW = "annotation_row"


def require_layout(root: Path) -> None:
    """Raise one clear error naming every missing or unusable required part of the layout."""
    missing = [name for name in (IMAGE_DIR, MAPPING_FILE, IDENTITY_FILE, ATTRIBUTE_FILE) if not (root / name).exists()]
    if missing:
        raise CelebAHQLayoutError(
            f"CelebA-HQ root {root} is missing {', '.join(missing)}; expected the official layout "
            f"({IMAGE_DIR}/, {MAPPING_FILE}, {IDENTITY_FILE}, {ATTRIBUTE_FILE}, optionally {PARTITION_FILE}); "
            "see docs/data.md"
        )
    wrong = [f"{IMAGE_DIR} is not a directory"] if not (root / IMAGE_DIR).is_dir() else []
    for name in (MAPPING_FILE, IDENTITY_FILE, ATTRIBUTE_FILE, PARTITION_FILE):
        if (root / name).exists() and not (root / name).is_file():
            wrong.append(f"{name} is not a regular file")
    if wrong:
        raise CelebAHQLayoutError(f"CelebA-HQ root {root}: {'; '.join(wrong)}; see docs/data.md")


def _read_table(path: Path, parse: Callable[[str], tuple[K, V]], skip: int = 0) -> AnnotationTable[K, V]:
    try:
        return read_annotation_table(_numbered_lines(path, skip), path.name, parse)
    except OSError as error:
        raise CelebAHQLayoutError(f"cannot read {path}: {error}") from error


def _read_attributes(path: Path) -> AnnotationTable[str, tuple[bool, ...]]:
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            head = [handle.readline(), handle.readline()]
    except OSError as error:
        raise CelebAHQLayoutError(f"cannot read {path}: {error}") from error
    try:
        names = parse_attribute_names(head[1])
    except MalformedRow as error:
        raise CelebAHQLayoutError(f"{path}: second line must hold the 40 attribute names ({error})") from error
    if names != CELEBA_ATTRIBUTES:
        raise CelebAHQLayoutError(f"{path}: {_attribute_names_problem(names)}")
    return _read_table(path, parse_attribute_line, skip=2)


def _attribute_names_problem(names: tuple[str, ...]) -> str:
    if sorted(names) == sorted(CELEBA_ATTRIBUTES):
        return "attribute names are CelebA's 40 names in a different order"
    unknown = [name for name in names if name not in CELEBA_ATTRIBUTES]
    missing = [name for name in CELEBA_ATTRIBUTES if name not in names]
    return f"attribute names differ from CelebA's 40 names: unknown {unknown}, missing {missing}"


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

    mapping = _read_table(root / MAPPING_FILE, _mapping_pair, skip=1)
    identities = _read_table(root / IDENTITY_FILE, parse_identity_line)
    attributes = _read_attributes(root / ATTRIBUTE_FILE)
    partitions: AnnotationTable[str, str] | None = None
    if (root / PARTITION_FILE).exists():
        partitions = _read_table(root / PARTITION_FILE, parse_partition_line)

    try:
        entries = scan_image_folder(root / IMAGE_DIR)
    except OSError as error:
        raise CelebAHQLayoutError(f"cannot list {root / IMAGE_DIR}: {error}") from error
    triage = triage_entries(entries)
    quarantine = triage.quarantine
    candidates = triage.candidates

    checks = _check_all([path for _, path in candidates], expected_size, workers, progress)

    rows: list[dict] = []
    seen_content: dict[str, int] = {}
    for (idx, path), check in zip(candidates, checks, strict=True):
        relative = f"{IMAGE_DIR}/{display_name(Path(path).name)}"
        reason = check.reason or _annotation_reason(idx, mapping, identities, attributes, partitions)
        if reason is None and check.sha256 in seen_content:
            reason = REASON_DUPLICATE_CONTENT.format(idx=seen_content[check.sha256])
        if reason is not None:
            quarantine.append(_q(relative, reason, KIND_IMAGE, idx, check.detail))
            continue
        seen_content[check.sha256] = idx
        row = mapping.values[idx]
        file_number = row.orig_idx + 1
        partition = (
            partitions.values[row.orig_file] if partitions is not None else partition_from_file_number(file_number)
        )
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
            "mode": check.mode,
        }
        record.update(zip(CELEBA_ATTRIBUTES, attributes.values[f"{idx}.jpg"], strict=True))
        rows.append(record)

    # A mapping row is an input of its own only when no entry of the folder carries its index
    # (an entry that is there but refused, a symlink say, already accounts for it).
    orphan_rows = sorted(set(mapping.values) - triage.present)
    for idx in orphan_rows:
        quarantine.append(_q(f"{IMAGE_DIR}/{idx}.jpg", REASON_ORPHAN_MAPPING_ROW, KIND_MAPPING_ROW, idx))

    tables = [mapping, identities, attributes] + ([partitions] if partitions is not None else [])
    row_problems = [problem for table in tables for problem in table.problems]
    for problem in row_problems:
        quarantine.append(_q(f"{problem.source}:{problem.line_number}", problem.reason, KIND_ANNOTATION_ROW, None))

    catalog = pd.DataFrame(rows, columns=list(CATALOG_COLUMNS))
    catalog = catalog.astype(
        {"hq_idx": "int64", "orig_idx": "int64", "identity": "int64", "width": "int64", "height": "int64"}
    )
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


def _q(path: str, reason: str, kind: str, hq_idx: int | None, detail: str = "") -> dict:
    return {"path": path, "reason": reason, "kind": kind, "hq_idx": hq_idx, "detail": detail}


def _annotation_reason(
    idx: int,
    mapping: AnnotationTable[int, MappingRow],
    identities: AnnotationTable[str, int],
    attributes: AnnotationTable[str, tuple[bool, ...]],
    partitions: AnnotationTable[str, str] | None,
) -> str | None:
    row = mapping.values.get(idx)
    reason = _lookup_reason(mapping, MAPPING_FILE, idx, REASON_NO_MAPPING_ROW)
    if reason is not None or row is None:
        return reason
    reason = _lookup_reason(identities, IDENTITY_FILE, row.orig_file, REASON_NO_IDENTITY.format(file=row.orig_file))
    if reason is not None:
        return reason
    name = f"{idx}.jpg"
    reason = _lookup_reason(attributes, ATTRIBUTE_FILE, name, REASON_NO_ATTRIBUTE_ROW.format(name=name))
    if reason is not None or partitions is None:
        return reason
    return _lookup_reason(partitions, PARTITION_FILE, row.orig_file, REASON_NO_PARTITION_ROW.format(file=row.orig_file))


def _lookup_reason(table: AnnotationTable, source: str, key: object, missing: str) -> str | None:
    """Why ``key`` has no usable row in ``table``: conflicting rows, only malformed rows, or none."""
    if key in table.conflicting_keys:
        return REASON_CONFLICTING_ROWS.format(source=source, key=key)
    if key in table.values:
        return None
    if key in table.malformed_keys:
        return REASON_MALFORMED_KEY_ROW.format(source=source, key=key, line=table.malformed_keys[key])
    return missing


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
