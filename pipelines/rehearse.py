"""`make rehearse`: the real profile end to end on a rehearsal models directory, on this machine.

The real profile runs unchanged (its multiprocess executor, its human review queue, its training
through Pipes) on what ``idglow models build --layout real`` writes (the released formats and
configurations, random weights, reduced depth), a small CelebA-HQ tree at 1024² and a manifest
of group photos (``idglow.data.rehearsal_sources``). Only counts, steps and sizes differ, all in
``configs/rehearsal.toml``. Each job runs as ``dagster job execute`` would run it in a deployment,
in its own process, one step at a time (the models are loaded in fp32 on a CPU).

A scripted reviewer works through the queue with the review store's calls, accepting three pairs
in four, so the batch's acceptance rate lies inside the real profile's bounds.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from idglow.environment import DEFAULTS
from idglow.storage import sha256_file, write_text_atomic

REPO = Path(__file__).resolve().parent.parent
OVERRIDES = REPO / "configs" / "rehearsal.toml"
ROUND = "round-000"
# One step at a time: each holds its models in fp32 (about 8 GB for the generator). Steps start
# from a fork server that has imported the code location once: a spawned step would import
# torch, diffusers and Dagster again, about 10 s each on this machine.
RUN_CONFIG = {
    "execution": {
        "config": {"max_concurrent": 1, "start_method": {"forkserver": {"preload_modules": ["pipelines.definitions"]}}}
    }
}


@dataclass(frozen=True)
class RehearsalPlaces:
    models_dir: Path
    sources_dir: Path
    storage_root: Path
    review_home: Path
    dagster_home: Path

    @classmethod
    def under(cls, var: Path) -> RehearsalPlaces:
        return cls(
            var / "models" / "rehearsal",
            var / "rehearsal" / "sources",
            var / "storage" / "rehearsal",
            var / "storage" / "rehearsal-review",
            var / "rehearsal" / "dagster",
        )


def rehearsal_environment(places: RehearsalPlaces) -> dict[str, str]:
    """What a user of the real profile sets, pointed at the rehearsal's files."""
    from idglow.data.rehearsal_sources import write_rehearsal_sources
    from idglow.models.registry import CLIP, REAL_COMPONENTS
    from idglow.models.rehearsal import build_rehearsal_models

    build_rehearsal_models(places.models_dir, depth=1)
    sources = write_rehearsal_sources(places.sources_dir)
    return {
        "IDGLOW_PROFILE": "real",
        "IDGLOW_PROFILE_OVERRIDES": str(OVERRIDES),
        "IDGLOW_MODELS_DIR": str(places.models_dir),
        "IDGLOW_CELEBAHQ_ROOT": str(sources.celebahq_root),
        "IDGLOW_GROUP_PHOTOS_MANIFEST": str(sources.group_photos_manifest),
        "IDGLOW_STORAGE_ROOT": str(places.storage_root),
        "IDGLOW_REVIEW_HOME": str(places.review_home),
        # the rehearsal's TorchScript CLIP is no OpenAI release: trust this file, by its hash
        "IDGLOW_CLIP_SHA256": sha256_file(places.models_dir / REAL_COMPONENTS[CLIP].path),
        "DAGSTER_HOME": str(places.dagster_home),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
        **DEFAULTS,  # nothing is downloaded (idglow.environment)
    }


def run_config_file() -> Path:
    """``RUN_CONFIG`` as a file in the rehearsal's Dagster home (written by ``run_rehearsal``)."""
    return Path(os.environ["DAGSTER_HOME"]) / "rehearsal_run_config.json"


def execute(job_name: str, tags: dict[str, str] | None = None) -> tuple[str, float]:
    """Run one job of the code location as a deployment would, in its own process; returns the
    job's name and its wall time in seconds."""
    command = [
        sys.executable,
        "-m",
        "dagster",
        "job",
        "execute",
        "-m",
        "pipelines.definitions",
        "-a",
        "defs",
        "-j",
        job_name,
        "-c",
        str(run_config_file()),
        "--tags",
        json.dumps(tags or {}),
    ]
    print(f"rehearsal: {job_name} {tags or ''}", flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True, cwd=REPO)
    return job_name, round(time.perf_counter() - started, 1)


def review_as_a_person(storage_root: Path) -> int:
    """Decide every open item with the calls the review app makes: accept three in four."""
    from idglow.review.security import hash_password
    from idglow.review.store import ReviewStore, default_database

    store = ReviewStore(default_database(storage_root))  # in IDGLOW_REVIEW_HOME, as the assets' store
    if store.reviewer("rehearsal") is None:
        store.add_reviewer("rehearsal", hash_password(os.urandom(16).hex()))
    reviewer = store.reviewer("rehearsal")
    decided = 0
    while (claim := store.claim(reviewer["id"], "rehearsal")) is not None:
        reject = decided % 4 == 3
        store.decide(
            reviewer["id"],
            "rehearsal",
            claim.item_id,
            "reject" if reject else "accept",
            ["artifact"] if reject else None,
            seconds=1.0,
        )
        decided += 1
    return decided


def start_fresh(places: RehearsalPlaces) -> None:
    """Remove the previous rehearsal's storage root, review home and Dagster instance (never the
    models or the sources), so a rehearsal always materialises everything."""
    for folder in (places.storage_root, places.review_home, places.dagster_home):
        shutil.rmtree(folder, ignore_errors=True)


def run_rehearsal(places: RehearsalPlaces) -> dict:
    start_fresh(places)
    os.environ.update(rehearsal_environment(places))
    from pipelines.demo import run_sensor
    from pipelines.instance import ensure_dagster_home

    ensure_dagster_home()
    write_text_atomic(run_config_file(), json.dumps(RUN_CONFIG))
    from assets.partitions import add_partitions
    from assets.preference import generation_rounds
    from pipelines.definitions import defs

    started = time.perf_counter()
    timings = {}
    with dg.DagsterInstance.get() as instance:
        add_partitions(instance, generation_rounds, [ROUND])
        jobs = [execute("materialize_everything", {"dagster/partition": ROUND})]
        timings["up to the review queue"] = round(time.perf_counter() - started, 1)
        decided = review_as_a_person(places.storage_root)
        jobs += run_sensor(defs, instance, "review_batches_finished", execute=execute)
        jobs.append(execute("register_models"))
        jobs += run_sensor(defs, instance, "benchmark_new_versions", rounds=3, execute=execute)
        timings["total"] = round(time.perf_counter() - started, 1)
        missing = [
            key.to_user_string()
            for key in defs.resolve_asset_graph().get_all_asset_keys()
            if key.to_user_string() != "sft_ablation" and instance.get_latest_materialization_event(key) is None
        ]
    result = {"decided": decided, "timings": timings, "jobs": jobs, "missing": missing}
    write_text_atomic(places.storage_root / "rehearsal_summary.json", json.dumps(result, indent=2))
    return result


def main() -> None:
    result = run_rehearsal(RehearsalPlaces.under(REPO / "var"))
    print(json.dumps(result, indent=2))
    if result["missing"]:
        raise SystemExit(f"rehearsal: never materialised: {', '.join(result['missing'])}")


if __name__ == "__main__":
    main()
