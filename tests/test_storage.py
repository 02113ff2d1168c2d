"""Atomic writes: a failed write leaves the destination as it was and no stray file."""

import pandas as pd
import pytest

from idglow.storage import atomic_path, sha256_bytes, sha256_file, write_bytes_atomic, write_parquet_atomic


def test_failed_write_leaves_old_content_and_no_partial(tmp_path):
    target = tmp_path / "out.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_parquet_round_trip_and_hash(tmp_path):
    frame = pd.DataFrame({"a": [1, 2], "ids": [[1, 2], [3]]})
    path = write_parquet_atomic(tmp_path / "sub" / "t.parquet", frame)
    back = pd.read_parquet(path)
    assert list(back["a"]) == [1, 2] and [list(x) for x in back["ids"]] == [[1, 2], [3]]
    assert sha256_file(path) == sha256_bytes(path.read_bytes())
