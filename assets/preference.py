"""Preference data: prompts, group photos, candidates, pairs, scores (Eq. 8), the automatic
filter (Eq. 9), SFT examples and the WebDataset shards."""

import json
import time
from dataclasses import asdict
from pathlib import Path

import dagster as dg
import pandas as pd
import pyarrow.compute as pc
from dagster_ray import RayResource

from assets.inference import run_on_ray
from assets.metadata import data_version_of, file_metadata, preview
from assets.resources import IdglowSettings, ModelHubResource
from idglow.acceleration import Acceleration
from idglow.data.group_photos import (
    GROUP_PHOTO_COLUMNS,
    copy_outside_files,
    read_group_photo_manifest,
    write_demo_group_photos,
)
from idglow.editing import ReferenceBudget
from idglow.filtering import DEFAULT_THRESHOLDS, apply_filter, apply_people_check
from idglow.generation import JOB_COLUMNS, GenerationSettings
from idglow.inference.candidates import CandidateReplicaFactory, HubSpec, candidate_items, candidate_table
from idglow.inference.people_check import PeopleCheckReplicaFactory, people_check_items, people_counts
from idglow.inference.prompts import PromptReplicaFactory, prompt_items, raw_outputs
from idglow.inference.scores import ScoreReplicaFactory, pair_items, scorer_fingerprints, scores_frame
from idglow.models.registry import PROMPT_MODEL, component_fingerprint
from idglow.pairs import SOURCES, build_pairs
from idglow.plots import delta_histograms, markdown_image
from idglow.prompt_synthesis import build_prompt_preferences, build_prompts
from idglow.sample_sets import dpo_samples, select_sft_examples, sft_samples
from idglow.scoring import METRICS, orient_by_score
from idglow.shards import write_shard_sets
from idglow.storage import tensors_sha256, write_parquet_atomic

generation_rounds = dg.DynamicPartitionsDefinition(name="generation_rounds")
GROUP = "preference_data"


@dg.asset(
    group_name=GROUP, code_version="2", deps=["benchmark_groups", "training_groups", "model_weights"], kinds={"parquet"}
)
def prompts(
    context: dg.AssetExecutionContext, settings: IdglowSettings, models: ModelHubResource, ray_cluster: RayResource
) -> dg.MaterializeResult:
    """Static and dynamic prompts for every benchmark and training group and both tasks, and the
    prompt preference set (barren vs descriptive) for aligning the prompt model (section 3.2).

    A dynamic prompt must name each subject, fit the text encoder's token budget and, for Task 2,
    ask for children; one that fails falls back to the static template and records why. The
    demo's random tiny prompt model nearly always falls back, which the fallback rate shows."""
    profile, paths, roots, hub = settings.resolved(), settings.paths, settings.roots, models.hub(settings)
    groups = pd.concat(
        [pd.read_parquet(paths.benchmark_groups), pd.read_parquet(paths.training_groups)], ignore_index=True
    )
    tokenizer = hub.generator_tokenizer()
    aligned = None
    if profile.prompt_model_version == "base":
        version = f"{hub.profile}:{component_fingerprint(hub.profile, PROMPT_MODEL, hub.models_dir)[:12]}"
    else:
        aligned = Path(profile.prompt_model_version)
        if not (aligned / "manifest.json").is_file():
            raise dg.Failure(
                f"prompt_model_version {profile.prompt_model_version!r} is neither 'base' nor an aligned "
                "prompt model folder (the checkpoint_uri of prompt_model_alignment)"
            )
        version = f"aligned:{json.loads((aligned / 'manifest.json').read_text())['lora_sha256'][:12]}"
    written, progress = None, {}
    if profile.dynamic_prompts:  # the prompt model writes on Ray (idglow.inference.prompts), one replica per actor
        stage_settings = {
            "prompt_model_version": version,
            "portrait_pixels": profile.prompt_portrait_pixels,
            "max_new_tokens": profile.prompt_max_new_tokens,
        }
        replicas = PromptReplicaFactory(
            HubSpec.of(hub, models.device),
            str(profile.celebahq_source.absolute()),
            profile.prompt_portrait_pixels,
            profile.prompt_max_new_tokens,
            str(aligned.absolute()) if aligned else None,
        )
        result = run_on_ray(
            context,
            ray_cluster,
            prompt_items(groups, stage_settings),
            replicas,
            roots.storage,
            stage="prompts",
            batch_size=4,
        )
        written, progress = raw_outputs(result), {"progress": dg.MetadataValue.json(result.progress)}
    table = build_prompts(
        groups,
        profile.celebahq_source,
        None,
        lambda text: len(tokenizer(text).input_ids),
        profile.prompt_token_budget,
        version,
        profile.prompt_portrait_pixels,
        profile.prompt_max_new_tokens,
        dynamic=profile.dynamic_prompts,
        written=written,
    )
    preferences = build_prompt_preferences(pd.read_parquet(paths.training_groups), pd.read_parquet(paths.catalog))
    prompt_path, preference_path = paths.table("prompts"), paths.asset_dir("prompts") / "prompt_preferences.parquet"
    write_parquet_atomic(prompt_path, roots.store_frame(table))
    write_parquet_atomic(preference_path, preferences)
    dynamic = table[table["prompt_kind"] == "dynamic"]
    reasons = dynamic.loc[dynamic["fallback"], "fallback_reason"].str.replace(r"\d+ tokens", "N tokens", regex=True)
    return dg.MaterializeResult(
        metadata={
            **file_metadata("prompts", prompt_path),
            **file_metadata("prompt_preferences", preference_path),
            "prompt_model_version": dg.MetadataValue.text(version),
            "dynamic_fallback_rate": dg.MetadataValue.float(float(dynamic["fallback"].mean()) if len(dynamic) else 0.0),
            "fallback_reasons": dg.MetadataValue.md(
                reasons.value_counts().rename("prompts").to_markdown() if len(reasons) else "none"
            ),
            "badcases": dg.MetadataValue.json(preferences["badcase"].value_counts().to_dict()),
            "preview": preview(table[["prompt_id", "prompt_kind", "fallback", "prompt"]]),
            **progress,
            "dagster/row_count": dg.MetadataValue.int(len(table)),
        },
        data_version=data_version_of(prompt_path, preference_path),
    )


@dg.asset(group_name=GROUP, code_version="2", deps=["training_groups", "celebahq_images"], kinds={"parquet"})
def real_group_photos(context: dg.AssetExecutionContext, settings: IdglowSettings) -> dg.MaterializeResult:
    """Authentic multi-person photos, each with one single portrait per person as conditions:
    the manifest in IDGLOW_GROUP_PHOTOS_MANIFEST, or on the demo profile a few drawn photos of
    training groups (the same faces as their portraits). Records whose files are missing go to a
    quarantine with the reason."""
    profile, paths, roots = settings.resolved(), settings.paths, settings.roots
    out_dir = paths.asset_dir("real_group_photos")
    if profile.group_photos_manifest is not None:
        photos = copy_outside_files(
            read_group_photo_manifest(profile.group_photos_manifest), roots, out_dir / "imported"
        )
    elif profile.demo_group_photos > 0:
        photos = write_demo_group_photos(
            pd.read_parquet(paths.training_groups),
            pd.read_parquet(paths.catalog),
            profile.celebahq_source,
            out_dir / "images",
            profile.demo_group_photos,
            profile.image_size,
            profile.seed,
        )
    else:
        context.log.warning("no group photo manifest configured (IDGLOW_GROUP_PHOTOS_MANIFEST): no real pairs")
        photos = pd.DataFrame(columns=list(GROUP_PHOTO_COLUMNS))
    exists = photos["photo_path"].map(lambda p: Path(p).is_file()) & photos["condition_paths"].map(
        lambda ps: all(Path(p).is_file() for p in ps)
    )
    quarantine = photos.loc[~exists, ["photo_id", "photo_path"]].assign(
        reason="photo or condition portrait file missing"
    )
    photos = photos.loc[exists].reset_index(drop=True)
    table_path, quarantine_path = paths.table("real_group_photos"), out_dir / "quarantine.parquet"
    write_parquet_atomic(table_path, roots.store_frame(photos))
    write_parquet_atomic(quarantine_path, quarantine)
    return dg.MaterializeResult(
        metadata={
            **file_metadata("photos", table_path),
            "photos": dg.MetadataValue.int(len(photos)),
            "quarantined": dg.MetadataValue.int(len(quarantine)),
            "source": dg.MetadataValue.text(str(profile.group_photos_manifest or "demo drawings")),
            "dagster/row_count": dg.MetadataValue.int(len(photos)),
        },
        data_version=data_version_of(table_path),
    )


def _generation_jobs(prompt_table: pd.DataFrame, photos: pd.DataFrame) -> pd.DataFrame:
    training = prompt_table[prompt_table["group_kind"] == "train"]
    jobs = training.assign(job_id=training["prompt_id"], photo_id=None)[list(JOB_COLUMNS)]
    real = pd.DataFrame(
        {
            "job_id": photos["photo_id"] + "-caption",
            "group_id": photos["group_id"],
            "task": "group_fusion",
            "prompt_kind": "caption",
            "prompt": photos["caption"],
            "condition_paths": photos["condition_paths"],
            "identities": photos["identities"],
            "n_subjects": photos["n_subjects"],
            "photo_id": photos["photo_id"],
        }
    )
    return pd.concat([jobs, real], ignore_index=True)


def candidate_generation(profile) -> GenerationSettings:
    """The candidates' inference settings: the profile's size, steps, true CFG, K and seed, its
    reference budgets (the ones training encodes with) and its lossy accelerations (off by default)."""
    return GenerationSettings(
        profile.generation_size,
        profile.generation_size,
        profile.generation_steps,
        profile.true_cfg_scale,
        profile.candidates_per_job,
        profile.seed,
        ReferenceBudget.of_profile(profile),
        Acceleration.of_profile(profile),
    )


@dg.asset(
    group_name=GROUP,
    code_version="2",
    partitions_def=generation_rounds,
    deps=[prompts, real_group_photos],
    pool="gpu",
    kinds={"pytorch"},
)
def candidate_images(
    context: dg.AssetExecutionContext, settings: IdglowSettings, models: ModelHubResource, ray_cluster: RayResource
) -> dg.MaterializeResult:
    """K candidate group photos per training prompt and per real photo's caption, from the
    explicitly named model version (`generation_model_version`: `base` or a LoRA folder), seeds
    recorded. One partition per generation round; a rerun of a round skips what is written.

    Generated on Ray Data (idglow.inference): one generator replica per actor (per GPU), each
    writing its PNGs atomically and counting their faces; progress per worker in the logs."""
    profile, paths, roots, hub = settings.resolved(), settings.paths, settings.roots, models.hub(settings)
    round_name = context.partition_key
    jobs = _generation_jobs(pd.read_parquet(paths.table("prompts")), pd.read_parquet(paths.table("real_group_photos")))
    version, lora_dir = profile.generation_model_version, None
    if version != "base":
        adapter = Path(version)
        weights = next(adapter.glob("*.safetensors"), None)
        if weights is None:
            raise dg.Failure(
                f"generation_model_version {version!r} is neither 'base' nor a LoRA folder with a .safetensors file"
            )
        lora_dir = str(adapter.absolute())
        version = f"lora:{tensors_sha256(weights)[:12]}"  # the weights' content, as the checkpoint manifests name it
    settings_used = candidate_generation(profile)
    out_dir = paths.asset_dir("candidate_images") / round_name
    table = candidate_table(jobs, settings_used, roots.store(out_dir), round_name, version)
    replicas = CandidateReplicaFactory(HubSpec.of(hub, models.device), settings_used, roots, lora_dir)
    result = run_on_ray(
        context,
        ray_cluster,
        candidate_items(table),
        replicas,
        roots.storage,
        stage=f"candidate_images {round_name}",
        batch_size=settings_used.candidates_per_job,  # one job per batch: its encoding is shared
        group_column="job_id",
    )
    generated, seconds = result.generated, float(pc.sum(result.table.column("seconds")).as_py() or 0.0)
    faces_found = result.table.column("faces_found").to_pylist() if len(table) else []
    detection_rate = sum(faces_found) / max(1, int(table["n_subjects"].sum()))
    table_path = out_dir / "candidates.parquet"
    write_parquet_atomic(table_path, table)
    return dg.MaterializeResult(
        metadata={
            **file_metadata("candidates", table_path),
            "round": dg.MetadataValue.text(round_name),
            "model_version": dg.MetadataValue.text(version),
            "generated_now": dg.MetadataValue.int(generated),
            "skipped_existing": dg.MetadataValue.int(len(table) - generated),
            "seconds_per_image": dg.MetadataValue.float(seconds / generated if generated else 0.0),
            "face_detection_rate": dg.MetadataValue.float(detection_rate),
            "inference_settings": dg.MetadataValue.json(asdict(settings_used)),
            "images_per_second": dg.MetadataValue.float(result.progress["images_per_second"]),
            "progress": dg.MetadataValue.json(result.progress),
            "dagster/row_count": dg.MetadataValue.int(len(table)),
        },
        data_version=data_version_of(table_path),
    )


@dg.asset(group_name=GROUP, code_version="2", deps=[candidate_images, real_group_photos], kinds={"parquet"})
def preference_pairs(settings: IdglowSettings) -> dg.MaterializeResult:
    """Quadruples (chosen, rejected, condition portraits, prompt) from the four sources: real vs
    perturbed, real vs synthetic, synthetic vs synthetic (orientation decided by the scores),
    synthetic vs perturbed; each with its provenance and a stable pair_id. Reads every round."""
    profile, paths, roots = settings.resolved(), settings.paths, settings.roots
    rounds = sorted(paths.asset_dir("candidate_images").glob("*/candidates.parquet"))
    candidates = pd.concat([pd.read_parquet(p) for p in rounds], ignore_index=True) if rounds else pd.DataFrame()
    pairs = build_pairs(
        roots.resolve_frame(candidates),
        roots.resolve_frame(pd.read_parquet(paths.table("real_group_photos"))),
        paths.asset_dir("preference_pairs") / "perturbed",
        profile.seed,
    )
    table_path = paths.table("preference_pairs")
    write_parquet_atomic(table_path, roots.store_frame(pairs))
    counts = pairs["source"].value_counts()
    return dg.MaterializeResult(
        metadata={
            **file_metadata("pairs", table_path),
            "rounds": dg.MetadataValue.json([p.parent.name for p in rounds]),
            **{f"pairs_{s}": dg.MetadataValue.int(int(counts.get(s, 0))) for s in SOURCES},
            "dagster/row_count": dg.MetadataValue.int(len(pairs)),
        },
        data_version=data_version_of(table_path),
    )


@dg.asset(group_name=GROUP, code_version="2", deps=[preference_pairs], kinds={"parquet"})
def pair_scores(
    context: dg.AssetExecutionContext, settings: IdglowSettings, models: ModelHubResource, ray_cluster: RayResource
) -> dg.MaterializeResult:
    """Eq. 8: identity, object, semantic, aesthetic and people-count scores of both sides of each
    pair and their deltas (batched: each image and portrait of a batch analysed once), on Ray
    (idglow.inference.scores: one scorer replica per actor, one JSON row per pair)."""
    paths, roots, hub = settings.paths, settings.roots, models.hub(settings)
    stored = pd.read_parquet(paths.table("preference_pairs"))
    pairs = roots.resolve_frame(stored)
    scorers = scorer_fingerprints(hub)
    started = time.perf_counter()
    result = run_on_ray(
        context,
        ray_cluster,
        pair_items(stored, {"profile": hub.profile, **scorers}),
        ScoreReplicaFactory(HubSpec.of(hub, models.device), roots),
        roots.storage,
        stage="pair_scores",
        batch_size=64,
    )
    scores = scores_frame(result, stored)
    seconds = time.perf_counter() - started
    scores, oriented = orient_by_score(scores, pairs)
    scores_path, oriented_path = paths.table("pair_scores"), paths.asset_dir("pair_scores") / "oriented_pairs.parquet"
    write_parquet_atomic(scores_path, roots.store_frame(scores))
    write_parquet_atomic(oriented_path, roots.store_frame(oriented))
    return dg.MaterializeResult(
        metadata={
            **file_metadata("scores", scores_path),
            "pairs_per_second": dg.MetadataValue.float(len(pairs) / seconds if seconds else 0.0),
            "swapped_by_score": dg.MetadataValue.int(int(scores["swapped"].sum())),
            "mean_deltas": dg.MetadataValue.json({m: round(float(scores[f"delta_{m}"].mean()), 4) for m in METRICS}),
            "progress": dg.MetadataValue.json(result.progress),
            "dagster/row_count": dg.MetadataValue.int(len(scores)),
        },
        data_version=data_version_of(scores_path, oriented_path),
    )


def people_check(
    context: dg.AssetExecutionContext,
    settings: IdglowSettings,
    models: ModelHubResource,
    ray_cluster: RayResource,
    filtered: pd.DataFrame,
) -> tuple[pd.DataFrame, dict]:
    """The VLM check over the filter's table (on Ray: idglow.inference.people_check, each chosen
    image asked once) and its metadata; the table as it was, with a note, when it is off."""
    profile, roots, hub = settings.resolved(), settings.roots, models.hub(settings)
    if not profile.people_check:
        return filtered, {"vlm_check": dg.MetadataValue.text("off (people_check = false)")}
    stage_settings = {
        "prompt_model": f"{hub.profile}:{component_fingerprint(hub.profile, PROMPT_MODEL, hub.models_dir)[:12]}",
        "pixels": profile.people_check_pixels,
    }
    result = run_on_ray(
        context,
        ray_cluster,
        people_check_items(filtered, stage_settings),
        PeopleCheckReplicaFactory(HubSpec.of(hub, models.device), roots, profile.people_check_pixels),
        roots.storage,
        stage="people_check",
        batch_size=16,
    )
    checked, verdict = apply_people_check(filtered, people_counts(result))
    context.log.info(f"VLM check: {verdict.reason}")
    return checked, {
        "vlm_check": dg.MetadataValue.text(verdict.reason),
        "vlm_applied": dg.MetadataValue.bool(verdict.able),
        "vlm_vetoed": dg.MetadataValue.int(int(checked["rule_vlm_vetoes"].sum())),
        "vlm_answered": dg.MetadataValue.float(verdict.answered / verdict.asked if verdict.asked else 0.0),
        "vlm_agreement_real_photos": dg.MetadataValue.float(verdict.agreement),
        "vlm_real_photos": dg.MetadataValue.int(verdict.known),
    }


@dg.asset(group_name=GROUP, code_version="3", deps=[pair_scores], kinds={"parquet"})
def auto_filtered_pairs(
    context: dg.AssetExecutionContext, settings: IdglowSettings, models: ModelHubResource, ray_cluster: RayResource
) -> dg.MaterializeResult:
    """Eq. 9, stage 1: a pair is kept when some delta reaches its threshold and no delta falls
    below minus its tolerance (thresholds in docs/configuration.md); then the VLM check may veto
    a kept pair whose chosen image does not show the N people of its prompt (``people_check``).
    Every pair is listed with `kept` and the reason; the histograms show each delta with its
    thresholds."""
    paths = settings.paths
    filtered = apply_filter(
        pd.read_parquet(paths.table("pair_scores")),
        pd.read_parquet(paths.asset_dir("pair_scores") / "oriented_pairs.parquet"),
    )
    filtered, check_metadata = people_check(context, settings, models, ray_cluster, filtered)
    table_path = paths.table("auto_filtered_pairs")
    write_parquet_atomic(table_path, filtered)
    plot = delta_histograms(
        filtered, list(METRICS), DEFAULT_THRESHOLDS, paths.asset_dir("auto_filtered_pairs") / "delta_histograms.png"
    )
    by_source = filtered.groupby("source")["kept"].mean().round(3).to_dict()
    by_rule = {f"{m}_supports": float(filtered[f"rule_{m}_supports"].mean()) for m in METRICS}
    by_rule.update({f"{m}_contradicts": float(filtered[f"rule_{m}_contradicts"].mean()) for m in METRICS})
    return dg.MaterializeResult(
        metadata={
            **file_metadata("filtered", table_path),
            "kept": dg.MetadataValue.int(int(filtered["kept"].sum())),
            "dropped": dg.MetadataValue.int(int((~filtered["kept"]).sum())),
            "pass_rate_by_source": dg.MetadataValue.json(by_source),
            "rule_rates": dg.MetadataValue.json(by_rule),
            **check_metadata,
            "histograms": dg.MetadataValue.md(markdown_image(plot, "delta histograms")),
            "histograms_uri": dg.MetadataValue.path(str(plot)),
            "drop_reasons": dg.MetadataValue.md(
                filtered.loc[~filtered["kept"], "reason"]
                .str.replace(r"[-+]?\d+\.\d+", "x", regex=True)
                .value_counts()
                .rename("pairs")
                .to_markdown()
                if (~filtered["kept"]).any()
                else "none"
            ),
            "dagster/row_count": dg.MetadataValue.int(len(filtered)),
        },
        data_version=data_version_of(table_path),
    )


@dg.asset(group_name=GROUP, code_version="2", deps=[auto_filtered_pairs, real_group_photos], kinds={"parquet"})
def sft_examples(settings: IdglowSettings) -> dg.MaterializeResult:
    """SFT targets: the real group photos with their people's portraits (Task 1), and chosen
    synthetic outputs of kept pairs whose identity and aesthetic scores clear the profile's
    bars (Task 2 targets are such filtered child renderings)."""
    profile, paths = settings.resolved(), settings.paths
    examples = select_sft_examples(
        pd.read_parquet(paths.table("real_group_photos")),
        pd.read_parquet(paths.table("auto_filtered_pairs")),
        profile.sft_min_identity,
        profile.sft_min_aesthetic,
    )
    table_path = paths.table("sft_examples")
    write_parquet_atomic(table_path, examples)
    return dg.MaterializeResult(
        metadata={
            **file_metadata("examples", table_path),
            "by_task_and_source": dg.MetadataValue.json(
                {f"{t}/{s}": int(c) for (t, s), c in examples.groupby(["task", "source"]).size().items()}
            ),
            "dagster/row_count": dg.MetadataValue.int(len(examples)),
        },
        data_version=data_version_of(table_path),
    )


def _shard_result(out_dir, manifest) -> dg.MaterializeResult:
    manifest_path = out_dir / "manifest.json"
    return dg.MaterializeResult(
        metadata={
            **file_metadata("manifest", manifest_path),
            "shards": dg.MetadataValue.int(len(manifest["shards"])),
            "samples": dg.MetadataValue.int(manifest["samples"]),
            "samples_by_n_subjects": dg.MetadataValue.json(manifest["samples_by_n_subjects"]),
            "dagster/row_count": dg.MetadataValue.int(manifest["samples"]),
        },
        data_version=data_version_of(manifest_path),
    )


@dg.asset(group_name=GROUP, code_version="2", deps=[sft_examples], kinds={"webdataset"})
def sft_shards(settings: IdglowSettings) -> dg.MaterializeResult:
    """WebDataset shards of the SFT examples, one shard set per subject count, with a manifest."""
    profile, paths = settings.resolved(), settings.paths
    out_dir = paths.asset_dir("sft_shards")
    manifest = write_shard_sets(
        sft_samples(pd.read_parquet(paths.table("sft_examples")), settings.roots.resolve),
        out_dir,
        "sft",
        max_size_bytes=profile.shard_max_bytes,
    )
    return _shard_result(out_dir, manifest)


@dg.asset(group_name=GROUP, code_version="3", deps=["accepted_pairs"], kinds={"webdataset"})
def dpo_shards(context: dg.AssetExecutionContext, settings: IdglowSettings) -> dg.MaterializeResult:
    """WebDataset shards of the pairs that passed the automatic filter and then review (every
    finished batch's accepted pairs), one shard set per subject count. Each sample records how it
    was reviewed (``human``, or ``auto (no human review)`` in review mode auto)."""
    profile, paths = settings.resolved(), settings.paths
    files = sorted(paths.asset_dir("accepted_pairs").glob("*.parquet"))
    if not files:
        raise dg.Failure(description="no review batch has been accepted yet: review the queue (idglow review serve)")
    accepted = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True).drop_duplicates("pair_id")
    automatic = int((accepted["review_mode"] != "human").sum())
    if automatic:
        context.log.warning(f"{automatic} of {len(accepted)} pairs were approved by the written rule, not by people")
    out_dir = paths.asset_dir("dpo_shards")
    manifest = write_shard_sets(
        dpo_samples(accepted, settings.roots.resolve), out_dir, "dpo", max_size_bytes=profile.shard_max_bytes
    )
    return _shard_result(out_dir, manifest)
