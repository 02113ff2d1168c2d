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
        ("x 119613 119614.jpg", "ASCII integers without leading zeros"),
        ("-1 119613 119614.jpg", "ASCII integers without leading zeros"),
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


# Digits from other scripts pass str.isdigit() and regex \d, and int() reads most of them
# ('٣' is 3, '３' is 3) but not all ('²' raises ValueError): only ASCII digits are numbers here.
NON_ASCII_DIGITS = ["\u0663", "\uff13", "\u00b2", "\u0969", "\U0001d7d1"]


@pytest.mark.parametrize("digit", NON_ASCII_DIGITS)
def test_mapping_line_rejects_non_ascii_digits(digit):
    with pytest.raises(MalformedRow, match="ASCII integers without leading zeros"):
        parse_mapping_line(f"{digit} 119613 119614.jpg")
    with pytest.raises(MalformedRow, match="ASCII integers without leading zeros"):
        parse_mapping_line(f"0 11961{digit} 119614.jpg")
    with pytest.raises(MalformedRow, match="six-digit"):
        parse_mapping_line(f"0 119613 11961{digit}.jpg")


@pytest.mark.parametrize("digit", NON_ASCII_DIGITS)
def test_identity_partition_and_attribute_lines_reject_non_ascii_digits(digit):
    with pytest.raises(MalformedRow):
        parse_identity_line(f"000001.jpg 28{digit}")
    with pytest.raises(MalformedRow):
        parse_identity_line(f"00000{digit}.jpg 2880")
    with pytest.raises(MalformedRow):
        parse_partition_line(f"00000{digit}.jpg 0")
    with pytest.raises(MalformedRow):
        parse_attribute_line(f"{digit}.jpg  " + " ".join(["1"] * 40))


def test_leading_zeros_are_not_canonical():
    # "03" would become key 3 and collide with the row "3 ...".
    with pytest.raises(MalformedRow, match="ASCII integers without leading zeros"):
        parse_mapping_line("03 119613 119614.jpg")
    with pytest.raises(MalformedRow, match="ASCII integer without leading zeros"):
        parse_identity_line("000001.jpg 02880")
    with pytest.raises(MalformedRow, match="canonical image name"):
        parse_attribute_line("03.jpg  " + " ".join(["1"] * 40))
    assert parse_mapping_line("0 0 000001.jpg") == MappingRow(0, 0, "000001.jpg")


def test_huge_integers_are_malformed_not_a_crash():
    # int() refuses strings over 4300 digits, and the catalog stores int64.
    with pytest.raises(MalformedRow):
        parse_mapping_line("9" * 5000 + " 0 000001.jpg")
    with pytest.raises(MalformedRow):
        parse_identity_line("000001.jpg " + "9" * 19)


def test_attribute_line_with_a_bad_name_says_so():
    with pytest.raises(MalformedRow, match="'x.jpg' is not a canonical image name"):
        parse_attribute_line("x.jpg  " + " ".join(["1"] * 40))


def test_malformed_rows_remember_their_key_when_it_is_readable():
    lines = [(1, "0 5 000005.jpg"), (2, "x 5 000006.jpg")]
    table = read_annotation_table(lines, "mapping", _mapping_pair_for_test)
    assert table.malformed_keys == {0: 1}
    assert [p.line_number for p in table.problems] == [1, 2]


def _mapping_pair_for_test(line):
    row = parse_mapping_line(line)
    return row.idx, row
