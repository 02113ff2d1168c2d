"""WebDataset shards: schema, manifest, atomic writes under a kill, two independent readers, and
the manifest as the readers' check: a killed rewrite, a changed byte and two concurrent writers."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from idglow.shards import (
    MANIFEST,
    ShardIntegrityError,
    jpeg_bytes,
    manifest_hash,
    png_bytes,
    read_manifest,
    shard_urls,
    write_shard_sets,
)
from idglow.storage import sha256_file
from training.data import batches


def _image_bytes(value: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (value, 255 - value, 7)).save(buffer, format=fmt)
    return buffer.getvalue()


def samples(count_by_n: dict[int, int], offset: int = 0):
    """DPO-shaped samples; the smaller groups come first, as the issue's reader check asks.
    ``offset`` changes the chosen and rejected images (the same keys with other content)."""
    index = 0
    for n, count in sorted(count_by_n.items()):
        for _ in range(count):
            yield {
                "__key__": f"pair-{index:04d}",
                "chosen.png": _image_bytes((index + offset) % 256, "PNG"),
                "rejected.png": _image_bytes((index + offset + 1) % 256, "PNG"),
                **{f"cond.{i}.jpg": _image_bytes((index * 7 + i) % 256, "JPEG") for i in range(n)},
                "json": {"pair_id": f"pair-{index:04d}", "n_subjects": n, "task": "group_fusion"},
            }
            index += 1


def test_one_homogeneous_shard_set_per_subject_count(tmp_path):
    manifest = write_shard_sets(samples({2: 5, 3: 4}), tmp_path, "dpo", max_count=3)
    assert manifest["samples"] == 9 and manifest["samples_by_n_subjects"] == {"2": 5, "3": 4}
    assert [s["samples"] for s in manifest["shards"]] == [3, 2, 3, 1]
    for shard in manifest["shards"]:
        assert sha256_file(tmp_path / shard["file"]) == shard["sha256"]
        assert shard["file"].startswith(f"dpo-n{shard['n_subjects']}-")
    assert json.loads((tmp_path / MANIFEST).read_text()) == manifest
    assert not (tmp_path / ".staging").exists()
    time.sleep(1.1)  # tar headers carry a time: the same samples must still give the same bytes
    again = write_shard_sets(samples({2: 5, 3: 4}), tmp_path / "again", "dpo", max_count=3)
    assert again == manifest  # so training keyed by the manifest's hash reuses its checkpoint


def test_stock_webdataset_reads_every_portrait(tmp_path):
    write_shard_sets(samples({2: 3, 3: 3}), tmp_path, "dpo")
    expected = {s["__key__"]: s for s in samples({2: 3, 3: 3})}
    seen = 0
    for sample in wds.WebDataset(shard_urls(tmp_path), shardshuffle=False, empty_check=False):
        meta = json.loads(sample["json"])
        source = expected[sample["__key__"]]
        for i in range(meta["n_subjects"]):
            assert sample[f"cond.{i}.jpg"] == source[f"cond.{i}.jpg"]
        assert sample["chosen.png"] == source["chosen.png"]  # PNG bytes pass through untouched
        seen += 1
    assert seen == 6


def test_hugging_face_datasets_reads_every_portrait(tmp_path):
    datasets = pytest.importorskip("datasets")
    write_shard_sets(samples({2: 3, 3: 4}), tmp_path, "dpo")
    for n, count in ((2, 3), (3, 4)):
        loaded = datasets.load_dataset(
            "webdataset",
            data_files={"train": shard_urls(tmp_path, n)},
            split="train",
            cache_dir=str(tmp_path / "hf-cache"),
        )
        assert len(loaded) == count
        columns = [c for c in loaded.column_names if c.startswith("cond")]
        assert len(columns) == n, loaded.column_names
        for row in loaded:
            assert all(row[c] is not None for c in columns)
            assert isinstance(row["chosen.png"], Image.Image)


def test_a_dot_in_a_key_is_refused(tmp_path):
    bad = {"__key__": "pair.1", "json": {"n_subjects": 2}}
    with pytest.raises(ValueError, match="contains a dot"):
        write_shard_sets(iter([bad]), tmp_path, "dpo")


WRITER = textwrap.dedent("""
    import logging, os, sys, time
    sys.path.insert(0, {tests!r})
    logging.basicConfig(stream=sys.stdout, level=logging.WARNING, format="%(message)s")
    from test_shards import samples
    from idglow.shards import write_shard_sets
    def slow():
        for i, sample in enumerate(samples({counts!r}, offset={offset})):
            if i == 3 and {pause}:
                print("first shard closed", flush=True)
                deadline = time.monotonic() + 120
                while not os.path.exists({go!r}) and time.monotonic() < deadline:  # the test's go-ahead, else killed
                    time.sleep(0.02)
            yield sample
    write_shard_sets(slow(), __import__("pathlib").Path({out!r}), "dpo", max_count=2)
    print("written", flush=True)
""")


def start_writer(
    out: Path, counts: dict[int, int] | None = None, offset: int = 0, pause: bool = True, go: Path | None = None
) -> subprocess.Popen:
    """A writer process of ``samples(counts, offset)`` into ``out`` (two samples per shard); with
    ``pause`` it stops after the first shard closed until the file ``go`` exists."""
    script = WRITER.format(
        tests=str(Path(__file__).parent),
        out=str(out),
        counts=counts or {2: 6},
        offset=offset,
        pause=pause,
        go=str(go or out.parent / "never"),
    )
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, start_new_session=True)


def killed_mid_write(out: Path, offset: int = 0) -> None:
    """Start a writer and SIGKILL it while the second shard is being written."""
    process = start_writer(out, offset=offset)
    try:
        assert process.stdout.readline().strip() == "first shard closed"
        time.sleep(0.5)  # sample 3 (the second shard's first) is being written
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_a_killed_run_leaves_only_complete_shards_and_a_rerun_finishes(tmp_path):
    out = tmp_path / "shards"
    killed_mid_write(out)
    published = sorted(out.glob("*.tar"))
    assert [p.name for p in published] == ["dpo-n2-000000.tar"]
    with tarfile.open(published[0]) as tar:
        assert len({m.name.split(".")[0] for m in tar.getmembers()}) == 2
    assert not (out / MANIFEST).exists()

    manifest = write_shard_sets(samples({2: 6}), out, "dpo", max_count=2)
    assert manifest["samples"] == 6 and len(manifest["shards"]) == 3
    assert sorted(p.name for p in out.glob("*.tar")) == [s["file"] for s in manifest["shards"]]
    assert not (out / ".staging").exists()


def test_rewriting_a_smaller_set_removes_stale_shards(tmp_path):
    write_shard_sets(samples({2: 6}), tmp_path, "dpo", max_count=2)
    manifest = write_shard_sets(samples({2: 2}), tmp_path, "dpo", max_count=2)
    assert (
        sorted(p.name for p in tmp_path.glob("*.tar"))
        == ["dpo-n2-000000.tar"]
        == [s["file"] for s in manifest["shards"]]
    )
    assert np.sum([s["samples"] for s in manifest["shards"]]) == 2


def read_all(out: Path, manifest: dict | None = None, batch_size: int = 2) -> list[str]:
    """Every sample key of one epoch through the training reader (two samples a batch)."""
    count = (manifest or read_manifest(out))["samples"] // batch_size
    stream = batches(out, batch_size, seed=0, manifest=manifest)
    return [sample.key for _ in range(count) for sample in next(stream)]


def test_a_killed_rewrite_leaves_no_manifest_and_the_readers_refuse_the_mixed_set(tmp_path):
    out = tmp_path / "shards"
    old = write_shard_sets(samples({2: 6}), out, "dpo", max_count=2)
    killed_mid_write(out, offset=100)  # the same keys, other images
    on_disk = {p.name: sha256_file(p) for p in out.glob("*.tar")}
    listed = {s["file"]: s["sha256"] for s in old["shards"]}
    assert on_disk.keys() == listed.keys() and on_disk != listed  # new first shard, old others: a mixed set
    assert not (out / MANIFEST).exists()
    for reader in (lambda: shard_urls(out), lambda: read_all(out), lambda: manifest_hash(out)):
        with pytest.raises(ShardIntegrityError, match="manifest.json does not exist"):
            reader()
    # A reader that read the manifest before the rewrite began stops at the replaced shard.
    with pytest.raises(ShardIntegrityError, match="dpo-n2-000000.tar has SHA-256"):
        read_all(out, old)
    assert write_shard_sets(samples({2: 6}), out, "dpo", max_count=2) == old  # a rerun repairs it
    assert sorted(read_all(out)) == [f"pair-{i:04d}" for i in range(6)]


def test_a_changed_shard_byte_is_refused_with_both_hashes(tmp_path):
    manifest = write_shard_sets(samples({2: 4, 3: 2}), tmp_path, "dpo", max_count=2)
    entry = manifest["shards"][1]
    shard = tmp_path / entry["file"]
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # in the tar's end padding: tar readers do not notice, the hash does
    shard.write_bytes(bytes(data))
    assert len(list(wds.WebDataset([str(shard)], shardshuffle=False, empty_check=False))) == entry["samples"]
    actual = sha256_file(shard)
    for reader in (
        lambda: shard_urls(tmp_path),
        lambda: shard_urls(tmp_path, n_subjects=2),
        lambda: read_all(tmp_path),
    ):
        with pytest.raises(ShardIntegrityError) as caught:
            reader()
        message = str(caught.value)
        assert entry["file"] in message and actual in message and entry["sha256"] in message
    assert len(shard_urls(tmp_path, n_subjects=3)) == 1  # the other subject count's shards are intact


def test_two_concurrent_writers_wait_for_each_other_and_leave_a_consistent_set(tmp_path):
    out, go = tmp_path / "shards", tmp_path / "go"
    first = start_writer(out, {2: 6}, offset=0, go=go)
    second = None
    try:
        assert first.stdout.readline().strip() == "first shard closed"  # it holds the folder's lock
        second = start_writer(out, {2: 4, 3: 2}, offset=50, pause=False)
        assert "waiting for another process writing shards in" in second.stdout.readline()
        go.touch()
        assert first.wait(timeout=300) == 0 and first.stdout.read().strip() == "written"
        assert second.wait(timeout=300) == 0 and second.stdout.read().strip() == "written"
    finally:
        for process in (first, second):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    manifest = read_manifest(out)
    assert manifest == write_shard_sets(samples({2: 4, 3: 2}, offset=50), tmp_path / "alone", "dpo", max_count=2)
    assert sorted(p.name for p in out.glob("*.tar")) == [s["file"] for s in manifest["shards"]]
    assert all(sha256_file(out / s["file"]) == s["sha256"] for s in manifest["shards"])
    assert sorted(read_all(out)) == [f"pair-{i:04d}" for i in range(6)]


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGB"])
def test_portraits_reach_a_shard_as_rgb_whatever_their_source_mode(tmp_path, mode):
    source = tmp_path / f"{mode}.jpg"
    Image.new(mode, (16, 16), (200,) if mode == "L" else (10, 20, 30, 40) if mode == "CMYK" else (10, 20, 30)).save(
        source
    )
    for encoded in (jpeg_bytes(source), png_bytes(source)):
        image = Image.open(io.BytesIO(encoded))
        assert image.mode == "RGB" and image.size == (16, 16)
    assert (jpeg_bytes(source) == source.read_bytes()) == (mode == "RGB")  # an RGB JPEG goes in as it is
