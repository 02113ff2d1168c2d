"""A storage root that is moved (or mounted elsewhere) keeps working: tables hold paths relative
to it, and every reader resolves them against the root it is given now; the training runs' configs
name their files relative to it too, so a finished run is found again instead of trained anew."""

import json
import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.parquet as pq
import pytest

from assets.metadata import CHECKPOINT_PATH
from idglow.profiles import load_profile
from idglow.review.store import default_database
from pipelines.definitions import build_definitions
from pipelines.demo import run_sensor

pytestmark = pytest.mark.slow  # materialises the pipeline twice

# The folders of the training runs (their config.json and checkpoint manifests).
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


def test_a_training_run_names_no_mount_point(tmp_path, tiny_models_dir):
    """One SFT run on a storage root and a models directory mounted at two paths: the same config
    (the files under the root named relative to it), so the same key and folder, and resumable; the
    model folders enter the key and the resume check by content, so other models are another run."""
    import dataclasses

    from assets.training import SFT_MODELS, generator_config, run_key
    from idglow.models.hub import ModelHub
    from idglow.paths import ArtifactPaths
    from training.checkpoints import config_differences
    from training.sft import SFTConfig

    profile = load_profile("demo", env={})
    configs = []
    for mount in ("here", "there"):
        root = tmp_path / mount / "storage"
        (root / "sft_shards").mkdir(parents=True)
        (root / "sft_shards" / "manifest.json").write_text('{"shards": []}')
        (tmp_path / mount / "models").symlink_to(tiny_models_dir, target_is_directory=True)
        hub = ModelHub("demo", tmp_path / mount / "models", device="cpu")
        paths = ArtifactPaths(root)
        configs.append(generator_config(SFTConfig, profile, {}, paths, hub, "sft_shards", "sft_checkpoint", SFT_MODELS))
    here, there = configs
    assert here.shards == "sft_shards" and Path(here.output_dir).parent == Path("sft_checkpoint")
    assert here.generator_dir == str(tmp_path / "here" / "models" / "generator")  # loaded from where it is now
    assert dataclasses.replace(here, generator_dir=there.generator_dir, face_pack_dir=there.face_pack_dir) == there
    assert set(here.model_fingerprints) == {"generator_dir", "face_pack_dir"}
    assert config_differences(dataclasses.asdict(here), dataclasses.asdict(there)) == {}  # resumable
    # Without fingerprints (a config written by hand) a model folder's path counts again.
    bare = [{**dataclasses.asdict(c), "model_fingerprints": {}} for c in configs]
    assert set(config_differences(*bare)) == {"generator_dir", "face_pack_dir"}
    other = dataclasses.replace(here, model_fingerprints={**here.model_fingerprints, "generator_dir": "0" * 64})
    assert run_key(other, "a" * 64, 1) != run_key(here, "a" * 64, 1)
    assert set(config_differences(dataclasses.asdict(here), dataclasses.asdict(other))) == {"model_fingerprints"}


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
    """Every string value of every Parquet table and JSON file under ``root`` (training run folders included)."""
    for path in sorted(root.rglob("*")):
        if path.suffix == ".parquet":
            for column in pq.read_table(path).to_pylist():
                for text in _strings(list(column.values())):
                    yield path, text
        elif path.suffix == ".json":
            for text in _strings(json.loads(path.read_text())):
                yield path, text


def _latest(instance: dg.DagsterInstance, asset: str) -> dict:
    return instance.get_latest_materialization_event(dg.AssetKey(asset)).asset_materialization.metadata


def _files(folder: Path, pattern: str) -> dict[str, int]:
    """The files matching ``pattern`` under ``folder``, with their modification times."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.glob(pattern)) if p.is_file()}


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
        trained = _latest(instance, "sft_checkpoint")

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

        # SFT again on the copy (its shards rebuilt there): the run key and the saved config name
        # no mount point, so the run folder is the one trained before the move, and the launched
        # process finds its last checkpoint finished and trains nothing.
        checkpoint = moved / trained[CHECKPOINT_PATH].value
        run = checkpoint.parent
        checkpoints = _files(run, "step-*/*")
        log = (run / "log.jsonl").read_text()
        again = defs.resolve_job_def("materialize_everything").execute_in_process(
            instance=instance, partition_key="round-000", asset_selection=[dg.AssetKey("sft_checkpoint")]
        )
        assert again.success
        reused = _latest(instance, "sft_checkpoint")
        assert reused["training_pid"].value != trained["training_pid"].value  # launched again, through Pipes
        assert reused[CHECKPOINT_PATH].value == trained[CHECKPOINT_PATH].value  # the same run folder
        assert reused["checkpoint_uri"].value == str(checkpoint)
        assert reused["config"].value == trained["config"].value  # the same config, paths and all
        assert reused["lora_sha256"].value == trained["lora_sha256"].value
        assert reused["last_step"].value == trained["last_step"].value  # the last logged step, its time included
        assert _files(run, "step-*/*") == checkpoints  # no checkpoint written or rewritten
        assert (run / "log.jsonl").read_text() == log  # no step trained

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
    # The training runs' configs and manifests name no mount point at all, the new one neither.
    mounted = {
        (str(path.relative_to(moved)), text)
        for path, text in _stored_strings(moved)
        if path.relative_to(moved).parts[0] in TRAINING_RUNS and str(moved) in text
    }
    assert not mounted, f"training runs name the storage root: {sorted(mounted)[:5]}"
    database = default_database(moved)
    with sqlite3.connect(database) as db:
        payloads = [row[0] for row in db.execute("select payload from review_items")]
    assert payloads and not [p for p in payloads if str(moved) in p or str(storage_env) in p]
