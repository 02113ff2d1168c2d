"""Property-based tests of the CelebA-HQ parsers, the image check and the whole ingest.

Whatever the bytes, names and annotation lines, the ingest finishes (a layout error is the only
refusal) and accounts for every input exactly once, as the module's docstring defines inputs:
each entry of the image folder, each mapping row without an image, each malformed or duplicate
annotation row. The expected counts come from small oracles written here, not from the module.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import tempfile
import zlib
from collections import Counter
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from idglow.data import celebahq
from idglow.data.celebahq import (
    ATTRIBUTE_FILE,
    CELEBA_ATTRIBUTES,
    IDENTITY_FILE,
    IMAGE_DIR,
    MAPPING_FILE,
    PARTITION_FILE,
    SOURCE_MODES,
    CelebAHQLayoutError,
    MalformedRow,
    check_image,
    ingest_celebahq,
    parse_attribute_line,
    parse_identity_line,
    parse_mapping_line,
    parse_partition_line,
    read_annotation_table,
)

SIZE = 16
# No .hypothesis folder in the working tree; a failure prints its example instead.
PROPERTY = settings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------- oracles


def oracle_int(text: str) -> int | None:
    """A canonical ASCII integer of at most 18 digits, written independently of the module."""
    if not (text.isascii() and text.isdigit()) or len(text) > 18 or (len(text) > 1 and text[0] == "0"):
        return None
    return int(text)


def oracle_hq_index(name: str) -> int | None:
    return oracle_int(name[:-4]) if name.endswith(".jpg") else None


def oracle_celeba_file(text: str) -> bool:
    return len(text) == 10 and text.endswith(".jpg") and text[:6].isascii() and text[:6].isdigit()


def oracle_mapping_key(line: str) -> int | None:
    parts = line.split()
    if len(parts) != 3:
        return None
    idx, orig = oracle_int(parts[0]), oracle_int(parts[1])
    if idx is None or orig is None or not oracle_celeba_file(parts[2]) or int(parts[2][:6]) != orig + 1:
        return None
    return idx


def oracle_identity_key(line: str) -> str | None:
    parts = line.split()
    ok = len(parts) == 2 and oracle_celeba_file(parts[0]) and oracle_int(parts[1]) is not None
    return parts[0] if ok else None


def oracle_attribute_key(line: str) -> str | None:
    parts = line.split()
    ok = len(parts) == 41 and oracle_hq_index(parts[0]) is not None and all(v in ("-1", "1") for v in parts[1:])
    return parts[0] if ok else None


def oracle_partition_key(line: str) -> str | None:
    parts = line.split()
    ok = len(parts) == 2 and oracle_celeba_file(parts[0]) and parts[1] in ("0", "1", "2")
    return parts[0] if ok else None


def oracle_table(lines: list[str], key_of) -> tuple[set, int]:
    """(keys with a usable row, number of malformed or duplicate rows) of non-blank lines."""
    keys: set = set()
    problems = 0
    for line in lines:
        if not line.strip():
            continue
        key = key_of(line)
        if key is None or key in keys:
            problems += 1
        else:
            keys.add(key)
    return keys, problems


def _template_pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.sub(r"\\\{[a-z_]+\\\}", ".+", re.escape(template)), re.DOTALL)


KNOWN_REASONS = [_template_pattern(value) for name, value in vars(celebahq).items() if name.startswith("REASON_")]


def is_known_reason(reason: str) -> bool:
    return any(pattern.fullmatch(reason) for pattern in KNOWN_REASONS)


# ---------------------------------------------------------------------- strategies


def _jpeg(mode: str = "RGB", size: int = SIZE, orientation: int | None = None, color=(120, 80, 40)) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    Image.new("RGB", (size, size), color).convert(mode).save(buffer, format="JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def _png(size: int = SIZE) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (1, 2, 3)).save(buffer, format="PNG")
    return buffer.getvalue()


def _png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


GOOD = _jpeg()
USABLE = [GOOD, _jpeg(color=(10, 200, 30)), _jpeg("L", color=(90, 90, 90)), _jpeg("CMYK", color=(5, 60, 220))]
SAMPLES = [*USABLE, _jpeg(orientation=6), _jpeg(orientation=1), _jpeg(size=2 * SIZE), _png()]


@st.composite
def image_bytes(draw) -> bytes:
    sample = draw(st.sampled_from(SAMPLES))
    kind = draw(
        st.sampled_from(["sample", "sample", "sample", "junk", "truncated", "overwritten", "sof", "png_header"])
    )
    if kind == "sample":
        return sample
    if kind == "junk":
        return draw(st.binary(max_size=300))
    if kind == "truncated":
        return sample[: draw(st.integers(0, len(sample)))]
    if kind == "overwritten":
        start = draw(st.integers(0, len(sample) - 1))
        patch = draw(st.binary(min_size=1, max_size=16))
        return sample[:start] + patch + sample[start + len(patch) :]
    if kind == "sof":  # the frame header rewritten to declare any size, bombs included
        data = bytearray(GOOD)
        sof = data.find(b"\xff\xc0")
        data[sof + 5 : sof + 9] = struct.pack(">HH", draw(st.integers(0, 65535)), draw(st.integers(0, 65535)))
        return bytes(data)
    return _png_header(draw(st.integers(0, 2**31 - 1)), draw(st.integers(0, 2**31 - 1)))


# Fields of each annotation row: the canonical values, and what the hardening is about (other
# scripts' digits, leading zeros, signs, huge numbers, near-miss file names).
INT_FIELDS = [
    "0",
    "1",
    "2",
    "3",
    "5",
    "12",
    "03",
    "00",
    "-1",
    "+1",
    "\u0663",
    "\uff13",
    "\u00b2",
    "1\u0663",
    "9" * 18,
    "9" * 19,
    "9" * 5000,
]
FILE_FIELDS = ["000001.jpg", "000002.jpg", "000004.jpg", "00000\u0661.jpg", "000001.JPG", "0000001.jpg", "x.jpg"]
NAME_FIELDS = [
    "0.jpg",
    "1.jpg",
    "3.jpg",
    "12.jpg",
    "03.jpg",
    "\u0663.jpg",
    "\uff13.jpg",
    "3.JPG",
    "3.jpeg",
    "3.jpg\u0663",
]
VALUE_FIELDS = ["1", "-1", "1", "-1", "0", "\u0661", "-\uff11"]
PARTITION_FIELDS = ["0", "1", "2", "3", "\u0660", "02"]
SPACES = st.sampled_from([" ", "  ", "\t", "\u00a0", "\u2003"])  # str.split() takes Unicode spaces too
# Text-mode reading splits lines at \n and \r only; every other character stays in its line.
LINE_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40)


@st.composite
def fields_line(draw, *pools: list[str]) -> str:
    fields = [draw(st.sampled_from(pool)) for pool in pools]
    if pools and pools[0] is INT_FIELDS and len(pools) == 3 and draw(st.booleans()):
        try:  # a mapping row whose orig_file agrees with orig_idx as int() reads it, digits of any script
            fields[2] = f"{int(fields[1]) + 1:06d}.jpg"
        except ValueError:
            pass
    if draw(st.integers(0, 9)) == 0:
        fields.append(draw(st.sampled_from(INT_FIELDS)))  # one field too many
    separators = [draw(SPACES) for _ in fields]
    return "".join(sep + field for sep, field in zip(separators, fields, strict=True))


@st.composite
def attribute_like(draw) -> str:
    values = [draw(st.sampled_from(VALUE_FIELDS)) for _ in range(draw(st.sampled_from([40, 40, 40, 39, 41])))]
    return draw(st.sampled_from(NAME_FIELDS)) + "  " + " ".join(values)


ROW_LIKE = st.one_of(
    fields_line(INT_FIELDS, INT_FIELDS, FILE_FIELDS),  # mapping
    fields_line(FILE_FIELDS, INT_FIELDS),  # identity
    fields_line(FILE_FIELDS, PARTITION_FIELDS),  # partition
    attribute_like(),
    LINE_TEXT,
)


@st.composite
def annotation_line(draw, valid_rows: list[str]) -> bytes:
    kind = draw(st.sampled_from(["valid", "row_like", "bytes"]))
    if kind == "valid":
        return draw(st.sampled_from(valid_rows)).encode()
    if kind == "row_like":
        return draw(ROW_LIKE).encode()
    return draw(st.binary(max_size=40)).replace(b"\r", b"").replace(b"\n", b"")


@st.composite
def annotation_file(draw, valid_rows: list[str]) -> list[bytes]:
    """Most of the valid rows (so some images get catalogued), plus odd lines, in any order."""
    kept = [row.encode() for row in valid_rows[:6] if draw(st.integers(0, 4)) > 0]
    lines = kept + draw(st.lists(annotation_line(valid_rows), max_size=5))
    return list(draw(st.permutations(lines)))


MAPPING_ROWS = [f"{i} {i} {i + 1:06d}.jpg" for i in range(6)] + ["1 3 000004.jpg", "03 2 000003.jpg"]
IDENTITY_ROWS = [f"{i + 1:06d}.jpg {i % 3}" for i in range(6)] + ["000001.jpg 9"]
ATTRIBUTE_ROWS = [f"{i}.jpg  " + " ".join(["1", "-1"] * 20) for i in range(6)] + ["2.jpg  " + " ".join(["1"] * 40)]
PARTITION_ROWS = [f"{i + 1:06d}.jpg {i % 3}" for i in range(6)] + ["000002.jpg 0"]

CANONICAL_NAMES = st.sampled_from(["0.jpg", "1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg"])
FILE_NAMES = st.one_of(
    CANONICAL_NAMES,
    CANONICAL_NAMES,
    st.sampled_from(
        ["0.jpg", "1.jpg", "2.jpg", "3.jpg", "4.jpg", "5.jpg", "03.jpg", "\u0663.jpg", "\uff13.jpg", "3.JPG", "notes"]
    ),
    st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b and b not in (b".", b"..")),
).map(lambda n: n if isinstance(n, bytes) else n.encode())


@st.composite
def folder_entry(draw) -> tuple[bytes, str, bytes]:
    kind = draw(st.sampled_from(["file"] * 6 + ["symlink", "loop", "directory", "fifo"]))
    content = draw(st.sampled_from(USABLE) | image_bytes()) if kind == "file" else b""
    return draw(FILE_NAMES), kind, content


@st.composite
def image_folder(draw) -> list[tuple[bytes, str, bytes]]:
    """A few usable portraits under canonical names, and any other entries beside them."""
    indices = draw(st.lists(st.integers(0, 5), unique=True, max_size=4))
    usable = [(f"{idx}.jpg".encode(), "file", USABLE[n]) for n, idx in enumerate(indices)]
    others = draw(st.lists(folder_entry(), max_size=6))
    names: set[bytes] = set()
    return [entry for entry in usable + others if not (entry[0] in names or names.add(entry[0]))]


# ------------------------------------------------------------------------ properties


@PROPERTY
@given(st.lists(ROW_LIKE, max_size=20))
def test_parsers_accept_exactly_the_canonical_rows(lines):
    parsers = [
        (parse_mapping_line, oracle_mapping_key),
        (parse_identity_line, oracle_identity_key),
        (parse_attribute_line, oracle_attribute_key),
        (parse_partition_line, oracle_partition_key),
    ]
    for parse, oracle in parsers:
        for line in lines:
            try:
                parsed = parse(line)
            except MalformedRow:
                assert oracle(line) is None, (parse.__name__, line)
                continue
            assert oracle(line) is not None, (parse.__name__, line)
            if parse is parse_mapping_line:
                assert (parsed.idx, parsed.orig_file) == (oracle(line), f"{parsed.orig_idx + 1:06d}.jpg")
        table = read_annotation_table(enumerate(lines, start=1), "file", lambda text: _keyed(parse, text))
        keys, problems = oracle_table(lines, oracle)
        assert set(table.values) == keys
        assert len(table.problems) == problems
        assert table.conflicting_keys <= set(table.values)


def _keyed(parse, line: str):
    parsed = parse(line)
    return (parsed.idx, parsed) if isinstance(parsed, celebahq.MappingRow) else parsed


@PROPERTY
@given(image_bytes())
def test_check_image_never_raises_and_accepts_only_what_it_promises(data):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.jpg"
        path.write_bytes(data)
        check = check_image(str(path), SIZE)
    if check.reason is None:
        assert (check.width, check.height) == (SIZE, SIZE)
        assert check.mode in SOURCE_MODES
        assert check.sha256 == hashlib.sha256(data).hexdigest()
    else:
        assert is_known_reason(check.reason), check.reason


@PROPERTY
@given(
    entries=image_folder(),
    mapping=annotation_file(MAPPING_ROWS),
    identities=annotation_file(IDENTITY_ROWS),
    attributes=annotation_file(ATTRIBUTE_ROWS),
    partitions=st.none() | annotation_file(PARTITION_ROWS),
)
def test_the_ingest_finishes_and_accounts_for_every_input(entries, mapping, identities, attributes, partitions):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "root"
        _write_root(root, entries, mapping, identities, attributes, partitions)
        result = ingest_celebahq(root, expected_size=SIZE, workers=1, progress=False)
        result.catalog.to_parquet(io.BytesIO())  # every string is valid UTF-8
        result.quarantine.to_parquet(io.BytesIO())

    tables = {
        MAPPING_FILE: (mapping, oracle_mapping_key),
        IDENTITY_FILE: (identities, oracle_identity_key),
        ATTRIBUTE_FILE: (attributes, oracle_attribute_key),
        **({PARTITION_FILE: (partitions, oracle_partition_key)} if partitions is not None else {}),
    }
    problems = 0
    for lines, oracle in tables.values():
        problems += oracle_table([line.decode("utf-8", "replace") for line in lines], oracle)[1]
    mapping_keys, _ = oracle_table([line.decode("utf-8", "replace") for line in mapping], oracle_mapping_key)
    present = {oracle_hq_index(name.decode("ascii", "replace")) for name, _, _ in entries} - {None}
    orphans = len(mapping_keys - present)

    assert len(result.catalog) + len(result.quarantine) == len(entries) + orphans + problems
    # Each folder entry is in exactly one of the two, under its own (printable) name.
    shown = Counter(f"{IMAGE_DIR}/{name.decode('utf-8', 'backslashreplace')}" for name, _, _ in entries)
    images = Counter(result.catalog["path"]) + Counter(
        result.quarantine.loc[result.quarantine["kind"] == "image", "path"]
    )
    assert images == shown
    assert result.catalog["hq_idx"].is_unique
    assert all(oracle_hq_index(path.removeprefix(f"{IMAGE_DIR}/")) is not None for path in result.catalog["path"])
    assert all(is_known_reason(reason) for reason in result.quarantine["reason"]), list(result.quarantine["reason"])


def _write_root(root: Path, entries, mapping, identities, attributes, partitions) -> None:
    folder = root / IMAGE_DIR
    folder.mkdir(parents=True)
    raw = os.fsencode(folder)
    for name, kind, content in entries:
        path = os.path.join(raw, name)
        if kind == "file":
            with open(path, "wb") as handle:
                handle.write(content)
        elif kind == "symlink":
            os.symlink(os.fsencode(root / MAPPING_FILE), path)
        elif kind == "loop":
            os.symlink(name, path)  # a link to itself
        elif kind == "directory":
            os.mkdir(path)
        else:
            os.mkfifo(path)
    (root / MAPPING_FILE).write_bytes(b"\n".join([b"idx orig_idx orig_file", *mapping]) + b"\n")
    (root / IDENTITY_FILE).write_bytes(b"\n".join(identities) + b"\n")
    header = [str(len(attributes)).encode(), " ".join(CELEBA_ATTRIBUTES).encode()]
    (root / ATTRIBUTE_FILE).write_bytes(b"\n".join(header + attributes) + b"\n")
    if partitions is not None:
        (root / PARTITION_FILE).write_bytes(b"\n".join(partitions) + b"\n")


@PROPERTY
@given(LINE_TEXT)
def test_a_broken_attribute_header_is_a_layout_error_and_nothing_else(names_line):
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder) / "root"
        _write_root(root, [(b"0.jpg", "file", GOOD)], [MAPPING_ROWS[0].encode()], [IDENTITY_ROWS[0].encode()], [], None)
        (root / ATTRIBUTE_FILE).write_text(f"1\n{names_line}\n{ATTRIBUTE_ROWS[0]}\n", encoding="utf-8")
        try:
            result = ingest_celebahq(root, expected_size=SIZE, workers=1, progress=False)
        except CelebAHQLayoutError:
            assert tuple(names_line.split()) != CELEBA_ATTRIBUTES
        else:
            assert tuple(names_line.split()) == CELEBA_ATTRIBUTES
            assert list(result.catalog["hq_idx"]) == [0]
