"""Benchmark, model registry and promotion (section 4).

``model_registry`` records every trained model version (base, each SFT and DPO checkpoint) with
its lineage and registers it as a partition of ``model_versions``. ``benchmark_results`` runs
the evaluation protocol for one version (one partition), each row carrying the checkpoint's
SHA-256, the shard manifest's, the prompt set's, the metric models' and the code version; its
data version is a hash of those, so the UI shows a result as stale when any of them changes.
``promotion_candidate`` compares the newest version with the current one, and its blocking check
stops ``current_model`` when the candidate is worse on FaceSim or Aesthetic beyond the current
one's confidence interval. ``benchmark_report`` writes the tables and plots.
"""

import hashlib
import json
import time
from dataclasses import asdict, replace

import dagster as dg
import pandas as pd
from dagster_ray import RayResource

from assets.inference import one_ray_for_the_step, run_on_ray
from assets.metadata import CHECKPOINT_PATH, checkpoint_of, file_metadata, preview
from assets.partitions import add_partitions
from assets.resources import IdglowSettings, ModelHubResource
from assets.training import (
    DPO_MODELS,
    GENERATOR_FILLED,
    SFT_MODELS,
    generator_config,
    gpu_op_tags,
    launch,
    run_config_class,
    stored_path,
)
from evaluation.benchmark import aggregate, bootstrap_ci
from evaluation.protocol import BENCHMARK_ROUND, benchmark_jobs, protocol_frame
from evaluation.report import (
    ablation_grid_rows,
    ablation_results,
    ablation_table,
    pareto_plot,
    results_table,
    sample_grid,
)
from idglow import code_version
from idglow.acceleration import Acceleration
from idglow.editing import ReferenceBudget
from idglow.generation import GenerationSettings
from idglow.inference.candidates import CandidateReplicaFactory, HubSpec, candidate_items, candidate_table
from idglow.inference.scores import image_score_stage, scorer_fingerprints
from idglow.plots import markdown_image
from idglow.profiles import Profile
from idglow.storage import (
    relative_to_root,
    resolve_under,
    sha256_file,
    tensors_sha256,
    write_bytes_atomic,
    write_json_atomic,
    write_parquet_atomic,
    write_text_atomic,
)
from training import sft as sft_module
from training.dpo import UNUSED_SFT_FIELDS, DPOConfig
from training.sft import SFTConfig

GROUP = "benchmark"
model_versions = dg.DynamicPartitionsDefinition(name="model_versions")
REGISTRY_COLUMNS = ["version", "kind", "lora_dir", "checkpoint_sha256", "shard_manifest_sha256", "registered_at"]
DEMO_NOTICE = (
    "Demo numbers come from tiny models on a generated world: a base generator pre-trained on the "
    "world's group scenes (it keeps who the people are only partly), face and prompt models trained "
    "on the world, CLIP and the aesthetic head with random weights (so Aesthetic and CLIP score mean "
    "nothing). They show what the method does on that world, not how good any real model is."
)


def benchmark_generation(profile) -> GenerationSettings:
    """The benchmark's fixed inference settings: the profile's size, steps and true CFG, one
    image per prompt, seeds from the profile (the same for every model version), the profile's
    reference budgets and lossy accelerations (off by default; a version benchmarked with one on
    says so in its rows' ``inference``)."""
    return GenerationSettings(
        profile.generation_size,
        profile.generation_size,
        profile.generation_steps,
        profile.true_cfg_scale,
        1,
        profile.seed,
        ReferenceBudget.of_profile(profile),
        Acceleration.of_profile(profile),
    )


def benchmark_lineage(
    metric_models: dict[str, str], prompts_path, checkpoint_sha256: str, shard_manifest_sha256: str
) -> dict[str, str]:
    """What a result row depends on besides its model's weights: the checkpoint, the shards it
    was trained on, the prompt set, the metric models (``scorer_fingerprints``) and the code."""
    return {
        "checkpoint_sha256": checkpoint_sha256,
        "shard_manifest_sha256": shard_manifest_sha256,
        "prompt_set_sha256": sha256_file(prompts_path),
        "metric_models": json.dumps(metric_models, sort_keys=True),
        "code_version": code_version(),
    }


def evaluate_on_ray(
    context: dg.AssetExecutionContext,
    ray_cluster: RayResource,
    models: ModelHubResource,
    settings: IdglowSettings,
    jobs: pd.DataFrame,
    inference: GenerationSettings,
    out_dir,
    version: str,
    lineage: dict,
    lora_dir: str | None = None,
) -> tuple[pd.DataFrame, dict]:
    """The protocol for one model (the base generator, or it with ``lora_dir``) as two stages on
    the engine: its images (one generator replica per actor, at the protocol's paths and seeds;
    complete ones kept), then their metrics (one ``ImageScorer`` per actor). ``jobs`` hold stored
    paths. Returns the protocol table (paths resolved) and each stage's progress."""
    hub, roots = models.hub(settings), settings.roots
    one = replace(inference, candidates_per_job=1)
    images = candidate_table(jobs, one, roots.store(out_dir), BENCHMARK_ROUND, version)
    generation = run_on_ray(
        context,
        ray_cluster,
        candidate_items(images),
        CandidateReplicaFactory(HubSpec.of(hub, models.device), one, roots, lora_dir, count_faces=False),
        roots.storage,
        stage=f"benchmark {version} images",
        batch_size=4,
    )
    images = roots.resolve_frame(images)
    scoring = image_score_stage(
        hub,
        roots,
        list(images["path"]),
        list(images["condition_paths"]),
        list(images["prompt"]),
        device=models.device,
        fingerprints=json.loads(lineage["metric_models"]),  # hashed once, for the rows and the stage alike
    )
    scored = run_on_ray(
        context,
        ray_cluster,
        scoring.items,
        scoring.replica_factory,
        roots.storage,
        stage=f"benchmark {version} scores",
        batch_size=scoring.replica_factory.batch_size,
    )
    frame = protocol_frame(images, scoring.scores(scored), one, version, lineage)
    return frame, {"images": generation.progress, "scores": scored.progress}


def read_registry(settings: IdglowSettings) -> pd.DataFrame:
    path = settings.paths.table("model_registry")
    return pd.read_parquet(path) if path.exists() else pd.DataFrame(columns=REGISTRY_COLUMNS)


def current_version(settings: IdglowSettings) -> str:
    path = settings.paths.asset_dir("model_registry") / "current.json"
    return json.loads(path.read_text())["version"] if path.exists() else "base"


@dg.asset(group_name=GROUP, code_version="2", deps=["sft_checkpoint", "dpo_checkpoint"], kinds={"parquet"})
def model_registry(context: dg.AssetExecutionContext, settings: IdglowSettings) -> dg.MaterializeResult:
    """Every model version with its lineage; which one is current (``base`` until one is promoted)."""
    registry = read_registry(settings)
    known = set(registry["version"])
    new = (
        []
        if "base" in known
        else [
            {
                "version": "base",
                "kind": "base",
                "lora_dir": "",
                "checkpoint_sha256": "",
                "shard_manifest_sha256": "",
                "registered_at": time.time(),
            }
        ]
    )
    for key, kind in (("sft_checkpoint", "sft"), ("dpo_checkpoint", "dpo")):
        event = context.instance.get_latest_materialization_event(dg.AssetKey(key))
        if event is None:
            continue
        metadata = event.asset_materialization.metadata
        sha = metadata["lora_sha256"].value
        version = f"{kind}-{sha[:12]}"
        if version not in known:
            checkpoint_of(metadata, settings.paths.root)  # refuses a materialization with no storage-relative path
            new.append(
                {
                    "version": version,
                    "kind": kind,
                    "lora_dir": metadata[CHECKPOINT_PATH].value,
                    "checkpoint_sha256": sha,
                    "shard_manifest_sha256": metadata["shard_manifest_sha256"].value,
                    "registered_at": time.time(),
                }
            )
    registry = pd.concat([registry, pd.DataFrame(new, columns=REGISTRY_COLUMNS)], ignore_index=True)
    path = write_parquet_atomic(settings.paths.table("model_registry"), registry)
    add_partitions(context.instance, model_versions, registry["version"])
    return dg.MaterializeResult(
        metadata={
            **file_metadata("registry", path),
            "versions": dg.MetadataValue.int(len(registry)),
            "registered_now": dg.MetadataValue.json([row["version"] for row in new]),
            "current": dg.MetadataValue.text(current_version(settings)),
            "preview": preview(registry),
        },
        data_version=dg.DataVersion(hashlib.sha256(",".join(registry["version"]).encode()).hexdigest()),
    )


@dg.asset(
    group_name=GROUP,
    code_version="2",
    deps=[model_registry, "prompts", "model_weights"],
    partitions_def=model_versions,
    kinds={"parquet"},
    pool="gpu",
)
def benchmark_results(
    context: dg.AssetExecutionContext, settings: IdglowSettings, models: ModelHubResource, ray_cluster: RayResource
) -> dg.MaterializeResult:
    """The evaluation protocol for one model version: benchmark groups x both tasks x static and
    dynamic prompts, fixed inference settings, per-image metrics with lineage (Parquet). Both the
    images and their metrics are stages on Ray (``evaluate_on_ray``), one Ray for the step."""
    profile, paths = settings.resolved(), settings.paths
    version = context.partition_key
    entry = read_registry(settings).set_index("version").loc[version]
    prompts_path = paths.table("prompts")
    lineage = benchmark_lineage(
        scorer_fingerprints(models.hub(settings)),
        prompts_path,
        entry["checkpoint_sha256"],
        entry["shard_manifest_sha256"],
    )
    inference = benchmark_generation(profile)
    jobs = benchmark_jobs(pd.read_parquet(prompts_path))  # stored paths
    out_dir = paths.asset_dir("benchmark_results") / "images" / version
    lora_dir = str(resolve_under(paths.root, entry["lora_dir"])) if entry["lora_dir"] else None
    with one_ray_for_the_step(ray_cluster):
        frame, progress = evaluate_on_ray(
            context, ray_cluster, models, settings, jobs, inference, out_dir, version, lineage, lora_dir
        )
    path = write_parquet_atomic(
        paths.asset_dir("benchmark_results") / f"{version}.parquet", settings.roots.store_frame(frame)
    )
    summary = aggregate(frame, ["task", "prompt_kind"])
    data_version = hashlib.sha256(
        json.dumps({**lineage, "inference": asdict(inference)}, sort_keys=True).encode()
    ).hexdigest()
    return dg.MaterializeResult(
        metadata={
            **file_metadata("results", path),
            "images": dg.MetadataValue.int(len(frame)),
            "missing_face_rate": dg.MetadataValue.float(float(frame["missing_face_rate"].mean())),
            "summary": dg.MetadataValue.md(summary.round(3).to_markdown(index=False)),
            "lineage": dg.MetadataValue.json(lineage),
            "inference": dg.MetadataValue.json(asdict(inference)),
            "progress": dg.MetadataValue.json(progress),
        },
        data_version=dg.DataVersion(data_version),
    )


def _results(settings: IdglowSettings, version: str) -> pd.DataFrame:
    path = settings.paths.asset_dir("benchmark_results") / f"{version}.parquet"
    if not path.exists():
        raise dg.Failure(f"model version {version} has no benchmark results yet (materialise benchmark_results for it)")
    return pd.read_parquet(path)


@dg.asset(group_name=GROUP, code_version="1", deps=[benchmark_results, model_registry], kinds={"json"})
def promotion_candidate(context: dg.AssetExecutionContext, settings: IdglowSettings) -> dg.MaterializeResult:
    """The newest registered version against the current one: FaceSim and Aesthetic means with
    their bootstrap 95% intervals, over the whole protocol."""
    registry = read_registry(settings)
    candidate = str(registry.sort_values("registered_at")["version"].iloc[-1])
    current = current_version(settings)
    comparison = {"candidate": candidate, "current": current}
    for name, version in (("candidate", candidate), ("current", current)):
        frame = _results(settings, version)
        for metric in ("face_sim", "aesthetic"):
            mean, low, high = bootstrap_ci(frame[metric].to_numpy(dtype=float))
            comparison[f"{name}_{metric}"] = {"mean": mean, "low": low, "high": high}
    path = write_json_atomic(settings.paths.asset_dir("promotion_candidate") / "comparison.json", comparison)
    return dg.MaterializeResult(
        metadata={
            **file_metadata("comparison", path),
            "candidate": candidate,
            "current": current,
            "comparison": dg.MetadataValue.json(comparison),
        }
    )


@dg.asset_check(
    asset=promotion_candidate,
    blocking=True,
    description="The candidate is not worse than the current model on FaceSim or Aesthetic beyond the "
    "current model's 95% confidence interval.",
)
def candidate_not_worse_than_current(
    context: dg.AssetCheckExecutionContext, settings: IdglowSettings
) -> dg.AssetCheckResult:
    comparison = json.loads((settings.paths.asset_dir("promotion_candidate") / "comparison.json").read_text())
    worse = [
        metric
        for metric in ("face_sim", "aesthetic")
        if comparison[f"candidate_{metric}"]["mean"] < comparison[f"current_{metric}"]["low"]
    ]
    return dg.AssetCheckResult(
        passed=not worse,
        metadata={
            "worse_on": ", ".join(worse) or "none",
            **{
                f"{side}_{metric}": comparison[f"{side}_{metric}"]["mean"]
                for side in ("candidate", "current")
                for metric in ("face_sim", "aesthetic")
            },
        },
        description=f"{comparison['candidate']} is worse than {comparison['current']} on {', '.join(worse)}"
        if worse
        else None,
    )


@dg.asset(group_name=GROUP, code_version="1", deps=[promotion_candidate], kinds={"json"})
def current_model(context: dg.AssetExecutionContext, settings: IdglowSettings) -> dg.MaterializeResult:
    """Promote the candidate (only reached when the check above passed)."""
    comparison = json.loads((settings.paths.asset_dir("promotion_candidate") / "comparison.json").read_text())
    entry = read_registry(settings).set_index("version").loc[comparison["candidate"]]
    path = write_json_atomic(
        settings.paths.asset_dir("model_registry") / "current.json",
        {
            "version": comparison["candidate"],
            "lora_dir": entry["lora_dir"],
            "checkpoint_sha256": entry["checkpoint_sha256"],
            "promoted_at": time.time(),
            "over": comparison["current"],
        },
    )
    return dg.MaterializeResult(
        metadata={**file_metadata("current", path), "version": comparison["candidate"]},
        data_version=dg.DataVersion(comparison["candidate"]),
    )


ABLATION_SUMMARY, ABLATION_GRID = "summary.parquet", "samples.png"


def ablation_section(settings: IdglowSettings, folder) -> list[str]:
    """The report's part for ``sft_ablation``: its Table 3 and its sample grid, or nothing when it
    has not run under this storage root."""
    ablation = settings.paths.asset_dir("sft_ablation")
    if not (ablation / ABLATION_SUMMARY).exists():
        return []
    write_bytes_atomic(folder / "ablation_samples.png", (ablation / ABLATION_GRID).read_bytes())
    return [
        "## SFT ablation (`sft_ablation`: Table 3 on static prompts, one row per configuration)",
        ablation_table(pd.read_parquet(ablation / ABLATION_SUMMARY)),
        "The same group under each configuration, per task: ![Ablation samples](ablation_samples.png)",
    ]


@dg.asset(
    group_name=GROUP, code_version="2", deps=[benchmark_results, model_registry, "sft_ablation"], kinds={"markdown"}
)
def benchmark_report(context: dg.AssetExecutionContext, settings: IdglowSettings) -> dg.MaterializeResult:
    """Tables in the layout of the paper's Tables 1-3 (published numbers beside ours, marked), a
    FaceSim-against-Aesthetic plot per method, and a grid of sample outputs per task; and, once
    ``sft_ablation`` has run, its Table 3 and its grid of the same group under each configuration
    (copied in, so the report never points at a newer ablation than it tabulates)."""
    profile, folder = settings.resolved(), settings.paths.asset_dir("benchmark_report")
    files = sorted(settings.paths.asset_dir("benchmark_results").glob("*.parquet"))
    if not files:
        raise dg.Failure("no benchmark results yet")
    samples = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    kinds = read_registry(settings).set_index("version")["kind"].to_dict()
    labels = {
        v: kinds.get(v, v) if list(kinds.values()).count(kinds.get(v)) == 1 else v
        for v in samples["model_version"].unique()
    }
    samples["method"] = samples["model_version"].map(labels)
    summary = aggregate(samples, ["method", "task", "prompt_kind"])
    tables = results_table(summary)
    pareto = pareto_plot(aggregate(samples, ["method"]), folder / "pareto.png")
    grid_rows = samples[samples["prompt_kind"] == "static"].groupby(["method", "task"], sort=False).head(1)
    grid = sample_grid(
        settings.roots.resolve_frame(grid_rows.assign(caption=grid_rows["task"].str.replace("_", " "))),
        folder / "samples.png",
    )
    notice = DEMO_NOTICE if profile.name == "demo" else ""
    text = "\n\n".join(
        filter(
            None,
            [
                "# Benchmark report",
                notice,
                "FaceSim / Aesthetic per task (T1 direct group fusion, T2 as young children) and prompt kind; "
                "rows in italics are the paper's published numbers.",
                tables,
                "## Static prompts (layout of Table 3)",
                ablation_table(summary),
                "## Per method, with bootstrap 95% intervals",
                summary.round(3).to_markdown(index=False),
                f"Missing-face rate: {samples.groupby('method')['missing_face_rate'].mean().round(3).to_dict()}",
                "![Pareto](pareto.png)",
                "![Samples](samples.png)",
                *ablation_section(settings, folder),
            ],
        )
    )
    report = write_text_atomic(folder / "report.md", text + "\n")
    write_parquet_atomic(folder / "summary.parquet", summary)
    return dg.MaterializeResult(
        metadata={
            **file_metadata("report", report),
            **file_metadata("pareto", pareto),
            **file_metadata("samples", grid),
            "methods": dg.MetadataValue.json(sorted(labels.values())),
            "notice": dg.MetadataValue.text(notice or "-"),
            "tables": dg.MetadataValue.md(tables),
            "pareto": dg.MetadataValue.md(markdown_image(pareto, "Pareto")),
            "sample_grid": dg.MetadataValue.md(markdown_image(grid, "samples")),
        }
    )


register_models = dg.define_asset_job(
    "register_models",
    selection=dg.AssetSelection.assets(model_registry),
    description="Record the latest trained versions as model_versions partitions.",
)
benchmark_model = dg.define_asset_job(
    "benchmark_model",
    selection=dg.AssetSelection.assets(benchmark_results),
    partitions_def=model_versions,
    description="The protocol for one model version.",
)
promote_and_report = dg.define_asset_job(
    "promote_and_report",
    selection=dg.AssetSelection.assets(promotion_candidate, current_model, benchmark_report),
    description="Compare the newest version with the current one, promote it if the check passes, write the report.",
)
retrain = dg.define_asset_job(
    "retrain",
    selection=dg.AssetSelection.assets("sft_checkpoint", "dpo_checkpoint", model_registry),
    description="Retraining: SFT, DPO on the accepted pairs, registration (the benchmark sensor takes it from there).",
)
weekly_retraining = dg.ScheduleDefinition(
    name="weekly_retraining", job=retrain, cron_schedule="0 3 * * 1", execution_timezone="UTC"
)


@dg.sensor(minimum_interval_seconds=300, jobs=[retrain], default_status=dg.DefaultSensorStatus.STOPPED)
def enough_new_accepted_pairs(context: dg.SensorEvaluationContext, settings: IdglowSettings):
    """Request a retraining run once ``retrain_min_new_pairs`` more pairs have been accepted."""
    folder = settings.paths.asset_dir("accepted_pairs")
    total = sum(len(pd.read_parquet(f)) for f in folder.glob("*.parquet")) if folder.exists() else 0
    seen = int(context.cursor or 0)
    threshold = settings.resolved().retrain_min_new_pairs
    if total - seen < threshold:
        return dg.SkipReason(f"{total - seen} new accepted pairs; retraining waits for {threshold}")
    return dg.SensorResult(run_requests=[dg.RunRequest(run_key=f"retrain-{total}")], cursor=str(total))


@dg.sensor(
    minimum_interval_seconds=120,
    jobs=[benchmark_model, promote_and_report],
    default_status=dg.DefaultSensorStatus.RUNNING,
)
def benchmark_new_versions(context: dg.SensorEvaluationContext, settings: IdglowSettings):
    """Benchmark every registered version that has no results yet; once none is pending and
    something new was benchmarked, request the promotion and the report. A version is one of
    ``model_versions``' partitions that this storage root's registry holds: the instance may
    keep partitions that another storage root registered (a demo rerun on a fresh root)."""
    folder = settings.paths.asset_dir("benchmark_results")
    registered = set(read_registry(settings)["version"])
    partitions = context.instance.get_dynamic_partitions(model_versions.name)
    versions = [v for v in partitions if v in registered]
    if len(versions) < len(partitions):
        context.log.info(f"not in this storage root's registry, skipped: {sorted(set(partitions) - registered)}")
    pending = [v for v in versions if not (folder / f"{v}.parquet").exists()]
    if pending:
        return [dg.RunRequest(job_name="benchmark_model", partition_key=v, run_key=f"benchmark-{v}") for v in pending]
    done = ",".join(sorted(versions))
    if not versions or context.cursor == done:
        return dg.SkipReason("nothing new to benchmark")
    return dg.SensorResult(
        run_requests=[dg.RunRequest(job_name="promote_and_report", run_key=f"promote-{done}")], cursor=done
    )


ABLATION = (  # Table 3's SFT configurations: (name, SFTConfig.modulation)
    ("no ID loss", "none"),
    ("constant", "constant"),
    ("task-adaptive", "task"),
)


def build_ablation_assets(profile: Profile) -> list[dg.AssetsDefinition]:
    """``sft_ablation`` for a profile. Its run config, ``AblationRunConfig``, holds the SFT settings
    its three SFT runs share (``SFTRunConfig``'s fields less the modulation, which is what they
    vary), with the profile's defaults, so a run without config trains what ``sft_checkpoint``
    trains but for the modulation."""
    run_config = run_config_class(
        "AblationRunConfig", SFTConfig, profile, GENERATOR_FILLED + ("modulation",), sft_module.FIELD_HELP
    )

    @dg.asset(
        name="sft_ablation",
        group_name=GROUP,
        code_version="3",
        deps=["sft_shards", "dpo_shards", "prompts", "model_weights"],
        kinds={"pytorch", "markdown"},
        pool="gpu",
        op_tags=gpu_op_tags(profile.training_gpus),
    )
    def sft_ablation_asset(
        context: dg.AssetExecutionContext,
        config: run_config,
        settings: IdglowSettings,
        models: ModelHubResource,
        pipes_subprocess_client: dg.PipesSubprocessClient,
        ray_cluster: RayResource,
    ) -> dg.MaterializeResult:
        """Table 3 on static prompts: SFT without the ID loss, with a constant one, task-adaptive
        (annealing for Task 1, gating for Task 2), then + DPO on the task-adaptive model; each
        launched like the training assets (or returned, when its run folder holds it), with the
        same data and settings, then evaluated and tabulated."""
        return run_ablation(context, config.model_dump(), settings, models, pipes_subprocess_client, ray_cluster)

    return [sft_ablation_asset]


def profile_definitions(profile: Profile) -> dg.Definitions:
    """This stage's definitions that depend on the profile (pipelines.definitions merges them with
    the module's own): ``sft_ablation`` with the profile's run-config defaults."""
    return dg.Definitions(assets=build_ablation_assets(profile))


def train_ablation(
    context, run: dict, settings: IdglowSettings, hub, client: dg.PipesSubprocessClient
) -> dict[str, dg.MaterializeResult]:
    """Table 3's runs, each launched through Pipes as ``sft_checkpoint`` and ``dpo_checkpoint``
    launch theirs (``assets.training.generator_config`` and ``launch``): the SFT configurations,
    ``run`` with each modulation, then + DPO on the task-adaptive checkpoint with the DPO defaults
    and the settings ``run`` shares with DPO (its steps are the profile's ``dpo_steps``). Each run
    lies in the training assets' folders, named by the hash of its whole config and inputs: one
    equal to the pipeline's own run (task-adaptive with the default settings) is that run, trained
    once; a changed setting is a new run. Returns each run's materialization by method."""
    profile, paths = settings.resolved(), settings.paths
    gpus, results = profile.training_gpus, {}
    for name, modulation in ABLATION:
        config = generator_config(
            SFTConfig,
            profile,
            {**run, "modulation": modulation},
            paths,
            hub,
            "sft_shards",
            "sft_checkpoint",
            SFT_MODELS,
        )
        results[name] = launch(context, client, "training.sft", config, gpus, paths.root)
    shared = {name: value for name, value in run.items() if name != "steps" and name not in UNUSED_SFT_FIELDS}
    dpo = generator_config(
        DPOConfig,
        profile,
        shared,
        paths,
        hub,
        "dpo_shards",
        "dpo_checkpoint",
        DPO_MODELS,
        sft_checkpoint=stored_path(checkpoint_of(results["task-adaptive"].metadata, paths.root), paths.root),
    )
    results["+ DPO"] = launch(context, client, "training.dpo", dpo, gpus, paths.root)
    return results


def run_ablation(
    context: dg.AssetExecutionContext,
    run: dict,
    settings: IdglowSettings,
    models: ModelHubResource,
    client: dg.PipesSubprocessClient,
    ray_cluster: RayResource,
) -> dg.MaterializeResult:
    """The ablation's runs (``train_ablation``), then each LoRA evaluated on the static benchmark
    prompts (``evaluate_on_ray``: images and metrics on Ray, one Ray for the step), and the table."""
    profile, paths = settings.resolved(), settings.paths
    folder = paths.asset_dir("sft_ablation")
    runs = train_ablation(context, run, settings, models.hub(settings), client)
    checkpoints = {name: checkpoint_of(result.metadata, paths.root) for name, result in runs.items()}
    prompts_path = paths.table("prompts")
    jobs = benchmark_jobs(pd.read_parquet(prompts_path))  # stored paths
    jobs = jobs[jobs["prompt_kind"] == "static"]
    inference, frames, progress = benchmark_generation(profile), [], {}
    metric_models = scorer_fingerprints(models.hub(settings))  # the same models score every run
    with one_ray_for_the_step(ray_cluster):  # after the runs: the launched processes train on the devices
        for name, checkpoint in checkpoints.items():
            lineage = benchmark_lineage(
                metric_models,
                prompts_path,
                tensors_sha256(checkpoint / "pytorch_lora_weights.safetensors"),
                _metadata_value(runs[name].metadata["shard_manifest_sha256"]),
            )
            out_dir = folder / "images" / name.replace(" ", "_")
            frame, progress[name] = evaluate_on_ray(
                context, ray_cluster, models, settings, jobs, inference, out_dir, name, lineage, str(checkpoint)
            )
            frames.append(frame)
    samples = pd.concat(frames, ignore_index=True)
    summary = aggregate(samples.rename(columns={"model_version": "method"}), ["method", "task", "prompt_kind"])
    labels = {("task-adaptive", "group_fusion"): "annealing", ("task-adaptive", "age_transformed"): "gating"}
    summary["method"] = [labels.get((m, t), m) for m, t in zip(summary["method"], summary["task"], strict=True)]
    table = ablation_table(summary)
    stored = settings.roots.store_frame(samples)
    write_parquet_atomic(folder / "samples.parquet", stored)
    write_parquet_atomic(folder / ABLATION_SUMMARY, summary)
    results = ablation_results(summary)
    write_parquet_atomic(folder / "ablation.parquet", results)
    method = [labels.get((m, t), m) for m, t in zip(stored["model_version"], stored["task"], strict=True)]
    grid_rows = ablation_grid_rows(stored.assign(method=method))
    grid = sample_grid(settings.roots.resolve_frame(grid_rows), folder / ABLATION_GRID)
    report = write_text_atomic(
        folder / "ablation.md",
        "\n\n".join(
            filter(
                None,
                [
                    "# SFT ablation (static prompts, layout of Table 3)",
                    DEMO_NOTICE if profile.name == "demo" else "",
                    table,
                    f"The same group under each configuration, per task: ![Samples]({ABLATION_GRID})",
                ],
            )
        )
        + "\n",
    )
    return dg.MaterializeResult(
        metadata={
            **file_metadata("ablation", report),
            **file_metadata("samples", grid),
            "ablation_uri": dg.MetadataValue.path(str(folder / "ablation.parquet")),
            "configurations": dg.MetadataValue.int(len(results)),
            "table": dg.MetadataValue.md(table),
            "checkpoints": dg.MetadataValue.json({k: str(v) for k, v in checkpoints.items()}),
            "checkpoint_paths": dg.MetadataValue.json(
                {k: relative_to_root(v, paths.root) for k, v in checkpoints.items()}
            ),
            "progress": dg.MetadataValue.json(progress),
        }
    )


def _metadata_value(value):
    """A materialization's metadata entry as its plain value (a ``MetadataValue`` or already plain)."""
    return getattr(value, "value", value)


ablation_job = dg.define_asset_job(
    "sft_ablation_job",
    selection=dg.AssetSelection.assets("sft_ablation"),
    description="Table 3: the SFT configurations and + DPO, trained, evaluated, tabulated.",
)
