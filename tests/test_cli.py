"""The `idglow` command, run as a user runs it: a separate process."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest


def idglow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "idglow.cli", *args], capture_output=True, text=True, timeout=300)


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "idglow"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "ingest" in result.stdout and "demo" in result.stdout


def test_ingest_celebahq_writes_catalog_and_quarantine(demo_dataset, tmp_path):
    out = tmp_path / "out"
    result = idglow("ingest", "celebahq", "--root", str(demo_dataset.root), "--out", str(out), "--expected-size", "256")
    assert result.returncode == 0, result.stderr
    assert "170 inputs: 160 cataloged (40 identities), 10 quarantined" in result.stdout
    assert "empty file (0 bytes)" in result.stdout
    assert len(pd.read_parquet(out / "catalog.parquet")) == 160
    assert len(pd.read_parquet(out / "quarantine.parquet")) == 10


def test_ingest_celebahq_on_a_bad_root_is_a_clear_error(tmp_path):
    (tmp_path / "root").mkdir()
    result = idglow("ingest", "celebahq", "--root", str(tmp_path / "root"), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert "missing CelebA-HQ-img" in result.stderr
    assert not (tmp_path / "out").exists()


def test_demo_data_command(tmp_path):
    result = idglow(
        "demo-data", "--out", str(tmp_path / "d"), "--identities", "6", "--images-per-identity", "2", "--size", "64"
    )
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "d" / "CelebA-HQ-img").glob("*.jpg"))) == 12 + 7  # good + broken .jpg records
    again = idglow("demo-data", "--out", str(tmp_path / "d"), "--identities", "7")
    assert again.returncode == 2 and "another spec" in again.stderr


@pytest.mark.slow
def test_review_commands_add_a_reviewer_and_migrate(tmp_path):
    import os

    from idglow.review.security import verify_password
    from idglow.review.store import ReviewStore

    db = tmp_path / "review.sqlite"
    env = {**os.environ, "IDGLOW_REVIEW_PASSWORD": "a long enough password"}
    added = subprocess.run(
        [sys.executable, "-m", "idglow.cli", "review", "add-reviewer", "ann", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert added.returncode == 0, added.stderr
    assert verify_password("a long enough password", ReviewStore(db).reviewer("ann")["password_hash"])
    twice = subprocess.run(
        [sys.executable, "-m", "idglow.cli", "review", "add-reviewer", "ann", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert twice.returncode == 2 and "exists already" in twice.stderr
    migrated = idglow("review", "migrate", "--db", str(db))
    assert migrated.returncode == 0 and "revision 0002" in migrated.stdout


@pytest.mark.slow
def test_review_publish_puts_the_kept_pairs_up_for_people(tmp_path):
    from idglow.review.store import ReviewStore, default_database
    from idglow.scoring import METRICS
    from idglow.storage import write_parquet_atomic

    rows = [
        {
            "pair_id": f"pair-{i}",
            "kept": i != 2,
            "prompt": "p",
            "task": "group_fusion",
            "n_subjects": 2,
            "source": "s",
            "condition_paths": ["a.jpg", "b.jpg"],
            "chosen_path": "c.png",
            "rejected_path": "r.png",
            **{f"{side}_{m}": 0.5 for side in ("chosen", "rejected") for m in METRICS},
            **{f"delta_{m}": 0.0 for m in METRICS},
        }
        for i in range(3)
    ]
    write_parquet_atomic(tmp_path / "auto_filtered_pairs" / "auto_filtered_pairs.parquet", pd.DataFrame(rows))
    result = idglow("review", "publish", "--storage-root", str(tmp_path), "--overlap", "2")
    assert result.returncode == 0, result.stderr
    store = ReviewStore(default_database(tmp_path))
    (batch,) = store.batch_ids()
    assert batch.startswith("manual-") and f"batch {batch}: 2 items, overlap 2" in result.stdout
    assert store.decision_log() == []  # nothing decided automatically
    missing = idglow("review", "publish", "--storage-root", str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and "run `make demo`" in missing.stderr
