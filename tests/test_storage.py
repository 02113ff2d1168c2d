"""Atomic writes: a failed write leaves the destination as it was and no stray file; a killed
write's partial file is removed by the next run, a live one kept; content hashes of tensors."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from idglow.storage import (
    _locked_partial,
    atomic_path,
    remove_stale_partials,
    sha256_bytes,
    sha256_file,
    tensors_sha256,
    write_bytes_atomic,
    write_parquet_atomic,
)

REPO = Path(__file__).resolve().parent.parent


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


HOLDER = textwrap.dedent("""
    import os, sys, time
    from idglow.storage import atomic_path
    folder, names, go = sys.argv[1], sys.argv[2].split(","), sys.argv[3]
    def hold(rest):
        if not rest:
            print("writing", flush=True)
            deadline = time.monotonic() + 120
            while not os.path.exists(go) and time.monotonic() < deadline:  # until the test says go, or is killed
                time.sleep(0.02)
            return
        with atomic_path(os.path.join(folder, rest[0])) as tmp:
            tmp.write_bytes(b"half of " + rest[0].encode())
            hold(rest[1:])
    hold(names)
    print("done", flush=True)
""")


def holder(folder: Path, names: list[str], go: Path) -> subprocess.Popen:
    """A process inside ``atomic_path`` for each of ``names`` until ``go`` exists."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder), ",".join(names), str(go)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout.readline().strip() == "writing"
    return process


def partials(where: Path | list[Path]) -> list[str]:
    """The destinations (".x.png") of the partial files in a folder or a list."""
    paths = where.glob(".*.partial") if isinstance(where, Path) else where
    return sorted(p.name.removesuffix(".partial").rsplit(".", 1)[0] for p in paths)


def test_a_killed_writes_partials_are_removed_and_live_ones_kept(tmp_path):
    folder, go = tmp_path / "images", tmp_path / "go"
    killed = holder(folder, ["x.png", "z.png"], go)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait()
    assert partials(folder) == [".x.png", ".z.png"]  # what a killed PNG write leaves
    live = holder(folder, ["y.png"], go)
    try:
        write_bytes_atomic(folder / "x.png", b"complete")  # its own destination's stale partial goes first
        assert partials(folder) == [".y.png", ".z.png"] and (folder / "x.png").read_bytes() == b"complete"
        with atomic_path(folder / "w.png") as mine:  # held by this process: kept too
            assert partials(remove_stale_partials(folder)) == [".z.png"]
            assert partials(folder) == [".w.png", ".y.png"] and mine.exists()
            mine.write_bytes(b"w")
        go.touch()
        assert live.wait(timeout=120) == 0 and live.stdout.read().strip() == "done"
    finally:
        if live.poll() is None:
            os.killpg(live.pid, signal.SIGKILL)
            live.wait()
    assert partials(folder) == [] and sorted(p.name for p in folder.iterdir()) == ["w.png", "x.png", "y.png"]
    assert (folder / "y.png").read_bytes() == b"half of y.png"


def test_a_partial_swept_before_it_is_opened_is_made_again(tmp_path):
    """Another writer's sweep (remove_stale_partials) may remove a new partial file between its
    creation and its lock, before it is even opened (seen in CI: two Ray actors writing one
    folder); the writer makes another instead of failing with FileNotFoundError."""
    made = []

    def create() -> str:
        path = tmp_path / f".out.png.{len(made)}.partial"
        path.write_bytes(b"")
        made.append(path)
        if len(made) == 1:
            assert remove_stale_partials(tmp_path) == [path]  # unlocked yet: swept as stale
        return str(path)

    fd, path = _locked_partial(create)
    try:
        assert path == made[1] and path.exists() and not made[0].exists()
        assert remove_stale_partials(tmp_path) == []  # held now: a sweep keeps it
    finally:
        os.close(fd)


SAVER = textwrap.dedent("""
    import json, sys, torch
    from safetensors.torch import save_file
    path, order, scale = sys.argv[1], sys.argv[2], float(sys.argv[3])
    tensors = {"transformer.b.lora_B.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3) * scale,
               "transformer.a.lora_A.weight": torch.linspace(-1, 1, 8, dtype=torch.bfloat16).reshape(4, 2),
               "step": torch.tensor(3)}
    adapter = {"r": 4, "lora_alpha": 4, "target_modules": ["to_k", "to_q"]}
    metadata = {"format": "pt", "lora_adapter_metadata": json.dumps(adapter), "b": "2", "c": "3", "d": "4"}
    if order == "reversed":
        tensors = dict(reversed(tensors.items()))
        metadata = dict(reversed(metadata.items()))
        metadata["lora_adapter_metadata"] = json.dumps(dict(reversed(adapter.items())), indent=2)
    save_file(tensors, path, metadata=metadata)
""")


def save_in_new_process(path: Path, order: str = "given", scale: float = 1.0) -> Path:
    subprocess.run([sys.executable, "-c", SAVER, str(path), order, str(scale)], cwd=REPO, check=True)
    return path


@pytest.mark.slow
def test_tensors_sha256_names_the_weights_not_the_file(tmp_path):
    a = save_in_new_process(tmp_path / "a.safetensors")
    b = save_in_new_process(tmp_path / "b.safetensors", "reversed")
    again = [save_in_new_process(tmp_path / f"again-{i}.safetensors") for i in range(3)]
    version = tensors_sha256(a)
    assert len(version) == 64 and all(tensors_sha256(p) == version for p in (b, *again))
    # safetensors 0.8 orders the header's metadata differently in each process: file hashes vary.
    print("file SHA-256s of the same tensors:", sorted({sha256_file(p)[:12] for p in (a, b, *again)}))
    assert tensors_sha256(save_in_new_process(tmp_path / "other.safetensors", scale=2.0)) != version

    from safetensors.torch import load_file, save_file

    tensors, metadata = load_file(str(a)), {"format": "pt"}
    save_file(tensors, str(tmp_path / "no-adapter.safetensors"), metadata=metadata)
    assert tensors_sha256(tmp_path / "no-adapter.safetensors") != version  # the adapter config counts
    renamed = {f"renamed.{k}": v for k, v in tensors.items()}
    save_file(renamed, str(tmp_path / "renamed.safetensors"), metadata=metadata)
    assert tensors_sha256(tmp_path / "renamed.safetensors") != tensors_sha256(tmp_path / "no-adapter.safetensors")
    as_float = {k: v.float() for k, v in tensors.items()}
    save_file(as_float, str(tmp_path / "float.safetensors"), metadata=metadata)
    assert tensors_sha256(tmp_path / "float.safetensors") != tensors_sha256(tmp_path / "no-adapter.safetensors")
    # A model split into two files hashes as the same set of tensors.
    names = sorted(tensors)
    save_file({k: tensors[k] for k in names[:1]}, str(tmp_path / "part-1.safetensors"), metadata=metadata)
    save_file({k: tensors[k] for k in names[1:]}, str(tmp_path / "part-2.safetensors"), metadata=metadata)
    split = tensors_sha256(tmp_path / "part-1.safetensors", tmp_path / "part-2.safetensors")
    assert split == tensors_sha256(tmp_path / "no-adapter.safetensors")
