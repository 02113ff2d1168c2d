"""The `idglow` command: what people run outside the Dagster UI.

Commands that need Dagster import it lazily, so the framework-free ones stay light. Whichever
way it starts (the console script ``idglow``, ``main``, ``python -m idglow.cli``), the app's
callback settles the process environment (``idglow.environment.settle``) before the command runs.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:  # imported lazily by the commands that use them
    from evaluation.benchmark import ImageScores
    from idglow.models.hub import ModelHub
    from idglow.paths import TableRoots

app = typer.Typer(help="IdGlow: identity-preserving group photo generation, as a pipeline.", no_args_is_help=True)
ingest_app = typer.Typer(help="Read source datasets into catalogs.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")
models_app = typer.Typer(
    help="Check local model weights, or build the demo's tiny twins or a rehearsal directory.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


@app.callback()
def settle_environment() -> None:
    """Runs before every command, before any of them imports a model library."""
    from idglow.environment import settle

    settle()


@ingest_app.command("celebahq")
def ingest_celebahq_command(
    root: Path = typer.Option(..., exists=True, file_okay=False, help="CelebA-HQ root in the official layout."),
    out: Path = typer.Option(..., help="Folder for catalog.parquet and quarantine.parquet."),
    expected_size: int = typer.Option(1024, help="Side in pixels every image must have (1024 for CelebA-HQ)."),
    workers: int = typer.Option(0, help="Processes decoding images (0: CPU count, at most 8)."),
) -> None:
    """Catalog a CelebA-HQ root; refused inputs go to the quarantine with their reason."""
    from idglow.data.celebahq import CelebAHQLayoutError, ingest_celebahq
    from idglow.storage import write_parquet_atomic

    try:
        result = ingest_celebahq(root, expected_size=expected_size, workers=workers or None)
    except CelebAHQLayoutError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    write_parquet_atomic(out / "catalog.parquet", result.catalog)
    write_parquet_atomic(out / "quarantine.parquet", result.quarantine)
    counts = result.counts
    typer.echo(
        f"{counts['inputs']} inputs: {counts['catalog']} cataloged ({counts['identities']} identities), "
        f"{counts['quarantine']} quarantined"
    )
    for reason, n in result.quarantine["reason"].value_counts().items():
        typer.echo(f"  quarantined {n:>6}  {reason}")
    typer.echo(f"wrote {out / 'catalog.parquet'} and {out / 'quarantine.parquet'}")


@models_app.command("check")
def models_check_command(
    profile: str = typer.Option("real", help="demo (tiny twins) or real (local weights)."),
    models_dir: Path = typer.Option(..., help="The models directory (layout in docs/models.md)."),
    verify_hashes: bool = typer.Option(False, help="Also compare SHA-256 where it is known (reads whole files)."),
) -> None:
    """List each component's files as present or missing; exit 1 when anything is missing."""
    from idglow.models.registry import COMPONENTS_BY_PROFILE, check_models

    if profile not in COMPONENTS_BY_PROFILE:
        typer.echo(f"error: unknown profile {profile!r}; choose one of {sorted(COMPONENTS_BY_PROFILE)}", err=True)
        raise typer.Exit(2)
    statuses = check_models(profile, models_dir, verify_hashes=verify_hashes)
    for status in statuses:
        line = f"{status.state:<13} {status.role:<13} {status.path}"
        if status.expected_sha256:
            line += f"  sha256 {status.expected_sha256}"
        typer.echo(line)
    missing = [s for s in statuses if not s.ok]
    if missing:
        components = COMPONENTS_BY_PROFILE[profile]
        for role in dict.fromkeys(s.role for s in missing):
            typer.echo(f"  {role}: get it from {components[role].source} (licence: {components[role].license})")
        typer.echo(f"{len(missing)} of {len(statuses)} files missing or wrong", err=True)
        raise typer.Exit(1)
    typer.echo(f"all {len(statuses)} files present")


@models_app.command("build")
def models_build_command(
    models_dir: Path = typer.Option(..., help="Where to write the models."),
    seed: int = typer.Option(0),
    layout: str = typer.Option(
        "tiny",
        help="tiny: the demo profile's twins; real: a rehearsal directory in the "
        "real profile's layout and formats, random weights (docs/models.md).",
    ),
    depth: int = typer.Option(
        1, min=1, help="real layout: blocks per transformer tower (the widths are the releases')."
    ),
) -> None:
    """Build the demo profile's tiny twins (trains the face models and the prompt model on the demo
    world once, about ten minutes on one thread), or with --layout real a rehearsal directory that
    `idglow models check --profile real` passes."""
    if layout == "tiny":
        from idglow.models.tiny import ensure_tiny_models

        built = ensure_tiny_models(models_dir, seed=seed)
    elif layout == "real":
        from idglow.models.rehearsal import build_rehearsal_models

        built = build_rehearsal_models(models_dir, seed=seed, depth=depth)
    else:
        typer.echo(f"error: unknown layout {layout!r}; choose tiny or real", err=True)
        raise typer.Exit(2)
    typer.echo(f"built: {', '.join(built) or 'nothing (all present)'} in {models_dir}")


@app.command("demo-data")
def demo_data_command(
    out: Path = typer.Option(
        ..., help="Folder to write the demo CelebA-HQ layout into (must be new or a demo dataset)."
    ),
    identities: int = typer.Option(40, min=4),
    images_per_identity: int = typer.Option(4, min=1),
    size: int = typer.Option(256, min=32),
    seed: int = typer.Option(0),
) -> None:
    """Write a small dataset of procedural faces in CelebA-HQ's official layout."""
    from idglow.data.demo_celebahq import DemoDatasetSpec, write_demo_celebahq

    spec = DemoDatasetSpec(identities=identities, images_per_identity=images_per_identity, size=size, seed=seed)
    try:
        dataset = write_demo_celebahq(out, spec)
    except FileExistsError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(
        f"{dataset.good_images} images of {identities} identities and "
        f"{len(dataset.expected_quarantine)} broken records in {dataset.root}"
    )


@app.command("demo")
def demo_command() -> None:
    """Materialise every asset on the demo profile into the local Dagster instance."""
    from pipelines.demo import run_demo

    run = run_demo()
    typer.echo(f"\nmaterialised {len(run.materialized)} assets in {run.seconds:.1f} s (run {run.run_id})")
    typer.echo(f"outputs:  {run.storage_root}")
    typer.echo(f"summary:  {run.summary_path}")
    typer.echo("browse:   make ui, then open http://127.0.0.1:3000")


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


# -------------------------------------------------------------------------------- eval

eval_app = typer.Typer(help="Score images with the benchmark's metrics (docs/benchmark.md).", no_args_is_help=True)
app.add_typer(eval_app, name="eval")


@eval_app.command("external")
def eval_external_command(
    manifest: Path = typer.Option(
        ..., exists=True, dir_okay=False, help="JSON or CSV: group_id, task, prompt_kind, image."
    ),
    name: str = typer.Option(..., help="The method's name in the report (e.g. a commercial service)."),
    storage_root: Path = typer.Option(None, help="The profile's storage root (default: the profile's)."),
    ray_job_address: str = typer.Option(
        None,
        envvar="IDGLOW_RAY_JOB_ADDRESS",
        help="A Ray cluster's dashboard (http://head:8265) to submit the scoring to as a Ray job, its log "
        "echoed here; unset: scored in this process (an embedded Ray, or the cluster at IDGLOW_RAY_ADDRESS).",
    ),
) -> None:
    """Score images made elsewhere on the benchmark groups with the same metrics; the next
    benchmark_report includes them. Missing, unreadable or unknown images are listed, never skipped silently."""
    from dataclasses import replace
    from functools import partial

    import pandas as pd

    from evaluation.benchmark import read_external_manifest
    from evaluation.protocol import score_external
    from idglow.inference.engine import RayOptions
    from idglow.inference.jobs import RayJobFailed
    from idglow.inference.scores import image_scores_on_ray
    from idglow.models.hub import ModelHub
    from idglow.paths import ArtifactPaths, TableRoots
    from idglow.profiles import load_profile
    from idglow.storage import copy_in, write_parquet_atomic

    # Scored on the engine (one ImageScorer per Ray actor): a Ray job on the cluster at
    # --ray-job-address, else an embedded Ray for the command, or the cluster at
    # IDGLOW_RAY_ADDRESS, read here once and passed down.
    ray_options = RayOptions(address=os.environ.get("IDGLOW_RAY_ADDRESS") or None)
    profile = load_profile()
    paths = ArtifactPaths((storage_root or profile.storage_root).absolute())
    if not paths.table("prompts").exists():
        typer.echo(f"error: {paths.table('prompts')} does not exist; materialise the prompts asset first", err=True)
        raise typer.Exit(2)
    rows, problems = read_external_manifest(manifest)
    # The images are copied under the storage root, so the results (and the report's sample
    # grid) name them relative to it, as every table does.
    imported = paths.asset_dir("benchmark_results") / "images" / f"external-{name}"
    rows = rows.assign(image=[str(copy_in(image, imported)) for image in rows["image"]]) if len(rows) else rows
    roots = TableRoots(paths.root, replace(profile, storage_root=paths.root).celebahq_source.absolute())
    hub = ModelHub.of_profile(profile)
    if ray_job_address:
        score = partial(_image_scores_as_ray_job, hub, roots, ray_job_address)
    else:
        score = partial(image_scores_on_ray, hub, roots, options=ray_options)  # each actor its own device
    try:
        scores, unknown = score_external(
            None, rows, roots.resolve_frame(pd.read_parquet(paths.table("prompts"))), f"external-{name}", score=score
        )
    except (RayJobFailed, ConnectionError) as error:  # a failed job, or no job API at the address
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error
    out = write_parquet_atomic(
        paths.asset_dir("benchmark_results") / f"external-{name}.parquet", roots.store_frame(scores)
    )
    for problem in problems:
        typer.echo(f"  not scored: row {problem.row}: {problem.image}: {problem.reason}", err=True)
    for problem in unknown:
        typer.echo(f"  not scored: {problem}", err=True)
    typer.echo(f"scored {len(scores)} of {len(rows) + len(problems)} images -> {out}")
    if len(scores):
        typer.echo(
            scores.groupby(["task", "prompt_kind"])[["face_sim", "aesthetic", "missing_face_rate"]]
            .mean()
            .round(3)
            .to_string()
        )


def _image_scores_as_ray_job(
    hub: ModelHub,
    roots: TableRoots,
    job_address: str,
    images: list[str],
    condition_paths: list[list[str]],
    prompts: list[str],
) -> list[ImageScores]:
    """``image_scores_on_ray``'s stage submitted as a Ray job to the dashboard at ``job_address``
    (``IDGLOW_RAY_JOB_ADDRESS``): the job's log lines, its progress among them, are echoed here,
    and the scores come back in the images' order. Nothing to score submits nothing."""
    from idglow.inference.jobs import StageRequest, submit_stage_job
    from idglow.inference.scores import IMAGE_STAGE, image_score_stage

    stage = image_score_stage(hub, roots, images, condition_paths, prompts)
    if not stage.ids:
        return []
    batch_size = stage.replica_factory.batch_size  # one scorer batch per stage batch, as image_scores_on_ray
    request = StageRequest(IMAGE_STAGE, stage.items, stage.replica_factory, batch_size, None, None)
    return stage.scores(submit_stage_job(job_address, request, roots.storage, echo=typer.echo))


# ------------------------------------------------------------------------------ review

review_app = typer.Typer(help="The human verification queue (docs/review.md).", no_args_is_help=True)
app.add_typer(review_app, name="review")


def _review_location(db: str | None, storage_root: Path | None) -> tuple[str, Path]:
    """The database (default: review.sqlite in the review home, ``IDGLOW_REVIEW_HOME`` or
    ``<storage root>-review``, beside the storage root and never inside it) and the storage root."""
    from idglow.profiles import load_profile
    from idglow.review.store import default_database

    root = (storage_root or load_profile().storage_root).absolute()
    old = root / "review" / "review.sqlite"  # the default before the review home, inside what could be served
    if db is None and old.exists() and not default_database(root).exists():
        typer.echo(
            f"warning: {old} is where the review database used to be; move it (with its -wal and -shm files) "
            f"to {default_database(root)}, or pass --db",
            err=True,
        )
    return db or str(default_database(root)), root


@review_app.command("serve")
def review_serve_command(
    host: str = typer.Option("127.0.0.1", help="Interface to listen on (keep 127.0.0.1 unless behind a TLS proxy)."),
    port: int = typer.Option(8765),
    db: str = typer.Option(None, help="SQLite file or postgresql:// URL (default: <review home>/review.sqlite)."),
    storage_root: Path = typer.Option(
        None, help="Images are served from inside this folder only (default: the profile's)."
    ),
    lease_seconds: float = typer.Option(
        300.0, help="How long an item stays with a reviewer before it returns to the queue."
    ),
    account_failures: int = typer.Option(
        5, help="Failed sign-ins an account may have in the window before it is locked."
    ),
    address_failures: int = typer.Option(50, help="Failed sign-ins one client address may have in the window."),
    failure_window: float = typer.Option(900.0, help="Seconds over which failed sign-ins are counted."),
    lock_seconds: float = typer.Option(60.0, help="The first lock's length; each lock in a row lasts twice the last."),
) -> None:
    """Serve the reviewer web app."""
    import uvicorn

    from idglow.review.app import create_app
    from idglow.review.security import LoginLimits, session_secret
    from idglow.review.store import ReviewStore, review_home

    url, root = _review_location(db, storage_root)
    store = ReviewStore(url, lease_seconds=lease_seconds)
    home = review_home(root)
    if store.url.startswith("sqlite:///") and Path(store.url.removeprefix("sqlite:///")).resolve().is_relative_to(
        root.resolve()
    ):
        typer.echo(
            f"warning: the database {store.url} is inside the storage root {root}; it is never served, "
            "but keep it (and its password hashes) outside, e.g. in the default review home",
            err=True,
        )
    limits = LoginLimits(
        account_failures=account_failures,
        address_failures=address_failures,
        window_seconds=failure_window,
        lock_seconds=lock_seconds,
    )
    typer.echo(f"review queue on http://{host}:{port} (database {store.url}, images from {root}, secret in {home})")
    app = create_app(store, root, session_secret(home), limits=limits, private_files=[home / "session_secret"])
    uvicorn.run(app, host=host, port=port, log_level="warning")


@review_app.command("add-reviewer")
def review_add_reviewer_command(
    username: str = typer.Argument(..., help="Sign-in name."),
    admin: bool = typer.Option(False, help="May see the statistics of everyone (all reviewers can today)."),
    db: str = typer.Option(None, help="SQLite file or postgresql:// URL."),
    storage_root: Path = typer.Option(None),
    password: str = typer.Option(
        ...,
        prompt=True,
        hide_input=True,
        confirmation_prompt=True,
        envvar="IDGLOW_REVIEW_PASSWORD",
        help="At least 8 characters (prompted when not given).",
    ),
) -> None:
    """Add a reviewer (the password is stored as a salted scrypt hash)."""
    from idglow.review.security import hash_password
    from idglow.review.store import ReviewError, ReviewStore

    url, _ = _review_location(db, storage_root)
    try:
        ReviewStore(url).add_reviewer(username, hash_password(password), is_admin=admin)
    except (ReviewError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(f"added reviewer {username}")


@review_app.command("publish")
def review_publish_command(
    overlap: int = typer.Option(1, help="Reviews each item needs."),
    prefix: str = typer.Option("manual", help="Batch name prefix (the rest is a hash of the pair ids)."),
    db: str = typer.Option(None),
    storage_root: Path = typer.Option(None),
) -> None:
    """Publish the profile's automatically kept pairs as a batch for people (no automatic decisions):
    how to review the demo's pairs by hand after `make demo`."""
    import pandas as pd

    from idglow.paths import ArtifactPaths
    from idglow.review.batches import kept_pairs_batch
    from idglow.review.store import ReviewStore

    url, root = _review_location(db, storage_root)
    table = ArtifactPaths(root).table("auto_filtered_pairs")
    if not table.exists():
        typer.echo(
            f"error: {table} does not exist; run `make demo` (or materialise auto_filtered_pairs) first", err=True
        )
        raise typer.Exit(2)
    batch_id, payloads = kept_pairs_batch(pd.read_parquet(table), prefix)
    count = ReviewStore(url).publish(batch_id, "idglow review publish", payloads, overlap=overlap)
    typer.echo(f"batch {batch_id}: {count} items, overlap {overlap}; review them with `idglow review serve`")


@review_app.command("migrate")
def review_migrate_command(db: str = typer.Option(None), storage_root: Path = typer.Option(None)) -> None:
    """Bring the review database's schema to the newest version."""
    from idglow.review.migrate import current_revision, upgrade
    from idglow.review.store import database_url

    url = database_url(_review_location(db, storage_root)[0])
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    upgrade(url)
    typer.echo(f"schema at revision {current_revision(url)}")


if __name__ == "__main__":  # pragma: no cover
    app()
