"""A storage root that is moved (or mounted elsewhere) keeps working: tables hold paths relative
to it, and every reader resolves them against the root it is given now."""

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest

from idglow.profiles import load_profile
from idglow.review.store import default_database
from pipelines.definitions import build_definitions
from pipelines.demo import run_sensor

pytestmark = pytest.mark.slow  # materialises the pipeline twice

# The launched training processes record their own config (absolute paths included) in their run
# folders; those files are training/sft.py's and the run key's business, not table content.
TRAINING_RUNS = ("sft_checkpoint", "dpo_checkpoint", "prompt_model_alignment")
BEFORE_MOVE = (
    dg.AssetSelection.all()
    - dg.AssetSelection.assets("review_queue", "accepted_pairs").downstream()
    - dg.AssetSelection.assets("review_decisions", "sft_ablation", "prompt_model_alignment")
)


def test_relative_to_root_refuses_a_path_outside_the_root(tmp_path):
    from idglow.storage import relative_to_root, resolve_under

    assert relative_to_root(tmp_path / "a" / "b.png", tmp_path) == "a/b.png"
    assert resolve_under(tmp_path, "a/b.png") == tmp_path / "a" / "b.png"
    with pytest.raises(ValueError, match="is outside"):
        relative_to_root(tmp_path.parent / "elsewhere.png", tmp_path)
    with pytest.raises(ValueError, match="relative"):
        resolve_under(tmp_path, str(tmp_path / "a.png"))
    with pytest.raises(ValueError, match="outside"):
        resolve_under(tmp_path, "../escape.png")


def test_a_dataset_outside_the_storage_root_is_stored_relative_to_its_own_root(tmp_path):
    from idglow.paths import TableRoots

    roots = TableRoots(tmp_path / "storage", tmp_path / "celebahq")
    frame = pd.DataFrame(
        {
            "path": [str(tmp_path / "storage" / "c" / "x.png")],
            "prompt": ["p"],
            "condition_paths": [[str(tmp_path / "celebahq" / "CelebA-HQ-img" / "1.jpg")]],
        }
    )
    stored = roots.store_frame(frame)
    assert stored["path"].tolist() == ["c/x.png"] and stored["condition_paths"].tolist() == [
        ["celebahq:CelebA-HQ-img/1.jpg"]
    ]
    moved = TableRoots(tmp_path / "new-storage", tmp_path / "new-celebahq").resolve_frame(stored)
    assert moved["path"].tolist() == [str(tmp_path / "new-storage" / "c" / "x.png")]
    assert moved["condition_paths"].tolist() == [[str(tmp_path / "new-celebahq" / "CelebA-HQ-img" / "1.jpg")]]


def test_group_photos_from_elsewhere_are_copied_under_the_storage_root(tmp_path):
    from idglow.data.group_photos import copy_outside_files
    from idglow.paths import TableRoots

    (tmp_path / "user").mkdir()
    for name in ("photo.png", "face.png"):
        (tmp_path / "user" / name).write_bytes(name.encode())
    roots = TableRoots(tmp_path / "storage", tmp_path / "celebahq")
    photos = pd.DataFrame(
        {
            "photo_path": [str(tmp_path / "user" / "photo.png")],
            "condition_paths": [[str(tmp_path / "user" / "face.png"), str(tmp_path / "user" / "gone.png")]],
        }
    )
    copied = copy_outside_files(photos, roots, tmp_path / "storage" / "real_group_photos" / "imported")
    photo = roots.store(copied["photo_path"].iloc[0])
    assert (
        photo.startswith("real_group_photos/imported/") and (tmp_path / "storage" / photo).read_bytes() == b"photo.png"
    )
    face, gone = copied["condition_paths"].iloc[0]
    assert Path(face).read_bytes() == b"face.png" and roots.store(face).startswith("real_group_photos/imported/")
    assert gone == str(tmp_path / "user" / "gone.png")  # left as named, for the quarantine


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def _stored_strings(root: Path) -> Iterator[tuple[Path, str]]:
    """Every string value of every Parquet table and JSON file under ``root`` (training run folders left out)."""
    for path in sorted(root.rglob("*")):
        if path.relative_to(root).parts[0] in TRAINING_RUNS:
            continue
        if path.suffix == ".parquet":
            for column in pq.read_table(path).to_pylist():
                for text in _strings(list(column.values())):
                    yield path, text
        elif path.suffix == ".json":
            for text in _strings(json.loads(path.read_text())):
                yield path, text


def test_a_moved_storage_root_keeps_every_later_stage_working(storage_env, tiny_models_dir, monkeypatch, tmp_path):
    from assets.preference import generation_rounds

    monkeypatch.setenv("IDGLOW_MODELS_DIR", str(tiny_models_dir))
    with dg.DagsterInstance.ephemeral() as instance:
        instance.add_dynamic_partitions(generation_rounds.name, ["round-000"])
        defs = build_definitions(load_profile())
        first = defs.resolve_job_def("materialize_everything").execute_in_process(
            instance=instance,
            partition_key="round-000",
            asset_selection=list(BEFORE_MOVE.resolve(defs.resolve_asset_graph())),
        )
        assert first.success
        assert (storage_env / "sft_checkpoint").is_dir() and (storage_env / "preference_pairs").is_dir()

        moved = tmp_path / "mounted" / "elsewhere"
        shutil.copytree(storage_env, moved, symlinks=True)
        shutil.rmtree(storage_env)
        monkeypatch.setenv("IDGLOW_STORAGE_ROOT", str(moved))
        defs = build_definitions(load_profile())

        # The tables written under the old root are read again from the copy, the review batch is
        # published from them, and the review run trains DPO on the SFT checkpoint found in the copy.
        later = dg.AssetSelection.assets(
            "preference_pairs", "pair_scores", "auto_filtered_pairs", "sft_examples", "sft_shards", "review_queue"
        )
        second = defs.resolve_job_def("materialize_everything").execute_in_process(
            instance=instance,
            partition_key="round-000",
            asset_selection=list(later.resolve(defs.resolve_asset_graph())),
        )
        assert second.success
        (reviewed,) = run_sensor(defs, instance, "review_batches_finished")
        assert reviewed.success
        registered = defs.resolve_job_def("register_models").execute_in_process(instance=instance)
        assert registered.success
        benchmarked = run_sensor(defs, instance, "benchmark_new_versions", rounds=3)
        assert benchmarked and all(run.success for run in benchmarked)
        assert not storage_env.exists()

        registry = pd.read_parquet(moved / "model_registry" / "model_registry.parquet")
        for lora_dir in registry.loc[registry["kind"] != "base", "lora_dir"]:
            assert (moved / lora_dir / "pytorch_lora_weights.safetensors").is_file()
        results = pd.concat([pd.read_parquet(p) for p in (moved / "benchmark_results").glob("*.parquet")])
        assert results["image"].map(lambda p: (moved / p).is_file()).all()

    leaked = {(str(path.relative_to(moved)), text) for path, text in _stored_strings(moved) if str(storage_env) in text}
    assert not leaked, f"tables still name the old storage root: {sorted(leaked)[:5]}"
    database = default_database(moved)
    with sqlite3.connect(database) as db:
        payloads = [row[0] for row in db.execute("select payload from review_items")]
    assert payloads and not [p for p in payloads if str(moved) in p or str(storage_env) in p]
