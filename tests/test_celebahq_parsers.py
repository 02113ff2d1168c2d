"""Each CelebA-HQ annotation parser on the exact sample lines of the official files."""

import pytest

from idglow.data.celebahq import (
    CELEBA_ATTRIBUTES,
    MalformedRow,
    MappingRow,
    parse_attribute_line,
    parse_attribute_names,
    parse_identity_line,
    parse_mapping_line,
    parse_partition_line,
    partition_from_file_number,
    read_annotation_table,
)


def test_mapping_line_sample():
    assert parse_mapping_line("0 119613 119614.jpg") == MappingRow(0, 119613, "119614.jpg")


def test_mapping_line_whitespace_aligned():
    assert parse_mapping_line("12      3       000004.jpg\n") == MappingRow(12, 3, "000004.jpg")


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("0 119613", "expected 'idx orig_idx orig_file'"),
        ("0 119613 119613.jpg", r"not orig_idx \+ 1"),
        ("x 119613 119614.jpg", "non-negative integers"),
        ("0 119613 119614.png", "six-digit"),
    ],
)
def test_mapping_line_malformed(line, fragment):
    with pytest.raises(MalformedRow, match=fragment):
        parse_mapping_line(line)


def test_identity_line_sample():
    assert parse_identity_line("000001.jpg 2880") == ("000001.jpg", 2880)
    with pytest.raises(MalformedRow):
        parse_identity_line("000001.jpg")


def test_attribute_file_sample_lines():
    names_line = " ".join(CELEBA_ATTRIBUTES)
    assert parse_attribute_names(names_line) == CELEBA_ATTRIBUTES
    values = ["-1", "1"] * 20
    name, flags = parse_attribute_line("0.jpg  " + " ".join(values))  # a double space after the name
    assert name == "0.jpg"
    assert len(flags) == 40
    assert flags[:4] == (False, True, False, True)
    with pytest.raises(MalformedRow, match="-1 or 1"):
        parse_attribute_line("0.jpg  " + " ".join(["0"] * 40))
    with pytest.raises(MalformedRow, match="40 values"):
        parse_attribute_line("0.jpg  1 1")


def test_partition_line_sample():
    assert parse_partition_line("000001.jpg 0") == ("000001.jpg", "train")
    assert parse_partition_line("182638.jpg 2") == ("182638.jpg", "test")
    with pytest.raises(MalformedRow):
        parse_partition_line("000001.jpg 3")


@pytest.mark.parametrize(
    "number, partition",
    [(1, "train"), (162770, "train"), (162771, "val"), (182637, "val"), (182638, "test"), (202599, "test")],
)
def test_partition_boundaries_by_file_number(number, partition):
    assert partition_from_file_number(number) == partition


def test_orig_idx_is_file_number_minus_one():
    # orig_idx 162770 is file 162771.jpg, the first validation image.
    row = parse_mapping_line("5 162770 162771.jpg")
    assert partition_from_file_number(row.orig_idx + 1) == "val"


def test_duplicate_rows_are_reported_and_conflicts_marked():
    lines = [(1, "000001.jpg 5"), (2, "000001.jpg 5"), (3, "000002.jpg 6"), (4, "000002.jpg 7"), (5, "junk")]
    table = read_annotation_table(lines, "identity_CelebA.txt", parse_identity_line)
    assert table.values == {"000001.jpg": 5, "000002.jpg": 6}
    assert table.conflicting_keys == {"000002.jpg"}
    reasons = {p.line_number: p.reason for p in table.problems}
    assert set(reasons) == {2, 4, 5}
    assert "same values" in reasons[2]
    assert "conflicting values" in reasons[4]
    assert reasons[5].startswith("malformed row")
