"""The code location: loads and validates, materialises real assets on a test instance, blocks
on an overlapping split, and serves the UI's GraphQL API."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from assets.benchmark import benchmark_report as benchmark_report_asset
from assets.groups import benchmark_groups, identity_splits_are_disjoint, training_groups
from assets.preference import prompts as prompts_asset
from assets.resources import IdglowSettings
from evaluation.report import ABLATION_COLUMNS
from idglow.profiles import load_profile
from idglow.storage import tensors_sha256
from pipelines.definitions import build_definitions
from pipelines.demo import run_sensor
from pipelines.resources import resources_for

pytestmark = pytest.mark.slow  # materialises assets, training through Pipes, and starts the webserver

REPO = Path(__file__).resolve().parent.parent
FOUNDATION_ASSETS = {"celebahq_images", "identity_splits", "benchmark_groups", "training_groups"}


def test_definitions_load_and_validate(storage_env):
    defs = build_definitions(load_profile())
    dg.Definitions.validate_loadable(defs)
    keys = {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()}
    assert FOUNDATION_ASSETS <= keys
    check_keys = defs.resolve_asset_graph().asset_check_keys
    assert dg.AssetCheckKey(dg.AssetKey("identity_splits"), "identity_splits_are_disjoint") in check_keys
    assert defs.resolve_job_def("materialize_everything") is not None
    # the storage root comes from IDGLOW_STORAGE_ROOT, read through dg.EnvVar where the run executes
    assert defs.resources["settings"].storage_root == dg.EnvVar("IDGLOW_STORAGE_ROOT")
    assert str(defs.resources["settings"].paths.root) == str(storage_env)


def test_workspace_module_builds_the_demo_profile():
    import pipelines.definitions as module

    assert module.defs.resources["settings"].profile == os.environ.get("IDGLOW_PROFILE", "demo")


def _materializations(result) -> dict[str, dg.AssetMaterialization]:
    return {
        event.asset_key.to_user_string(): event.event_specific_data.materialization
        for event in result.get_asset_materialization_events()
    }


def test_foundation_assets_materialise_on_a_test_instance(storage_env):
    defs = build_definitions(load_profile())
    with dg.DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def("ingest_and_groups").execute_in_process(instance=instance)
        assert result.success
        materialized = _materializations(result)
        assert set(materialized) == FOUNDATION_ASSETS
        catalog_meta = materialized["celebahq_images"].metadata
        assert catalog_meta["count_catalog"].value == 160
        assert (
            catalog_meta["count_catalog"].value + catalog_meta["count_quarantine"].value
            == catalog_meta["count_inputs"].value
        )
        assert Path(catalog_meta["catalog_uri"].value).is_file()
        assert materialized["benchmark_groups"].metadata["groups_of_2"].value == 2
        assert materialized["benchmark_groups"].metadata["groups_of_3"].value == 2
        assert materialized["training_groups"].metadata["dagster/row_count"].value == 14
        for materialization in materialized.values():
            assert materialization.tags["dagster/data_version"]
        evaluations = result.get_asset_check_evaluations()
        assert [e.passed for e in evaluations] == [True]

        # Rerunning on unchanged data gives the same data versions: the content decides.
        again = _materializations(defs.resolve_job_def("ingest_and_groups").execute_in_process(instance=instance))
    for name in FOUNDATION_ASSETS:
        assert again[name].tags["dagster/data_version"] == materialized[name].tags["dagster/data_version"]
    assert (storage_env / "sources" / "celebahq_demo" / "CelebA-HQ-img").is_dir()


# What the ablation's + DPO run may set apart from its task-adaptive SFT run: DPO's own fields and
# inputs, its steps (the profile's dpo_steps), and the ID loss it does not use.
DPO_OWN = {"shards", "steps", "sft_checkpoint", "beta", "chosen_weight", "margin", "sft_weight", "face_pack_dir"}


def _assert_ablation_runs(root: Path, ablation, sft, dpo) -> None:
    """The ablation's four runs were launched like the training assets' runs: each in its own
    folder named by its config, the configs equal but for the modulation (and + DPO's own fields),
    with the profile's reference sizes and checkpoint cadence, and the paths relative to the root."""
    from assets.training import reference_side
    from training.dpo import UNUSED_SFT_FIELDS

    profile = load_profile()
    checkpoints = {name: root / path for name, path in ablation["checkpoint_paths"].value.items()}
    assert list(checkpoints) == ["no ID loss", "constant", "task-adaptive", "+ DPO"]
    folders = {name: checkpoint.parent for name, checkpoint in checkpoints.items()}
    assert len(set(folders.values())) == 4
    configs = {name: json.loads((folder / "config.json").read_text()) for name, folder in folders.items()}
    for name in ("no ID loss", "constant", "task-adaptive"):  # what each checkpoint says it trained with
        assert json.loads((checkpoints[name] / "manifest.json").read_text())["config"] == configs[name]
    dpo_manifest = json.loads((checkpoints["+ DPO"] / "manifest.json").read_text())["dpo_manifest"]
    assert dpo_manifest["config"] == configs["+ DPO"]
    task = configs["task-adaptive"]

    def differing(config: dict) -> set[str]:
        return {name for name in config.keys() | task.keys() if config.get(name) != task.get(name)}

    assert [configs[name]["modulation"] for name in ("no ID loss", "constant", "task-adaptive")] == [
        "none",
        "constant",
        "task",
    ]
    assert differing(configs["no ID loss"]) == differing(configs["constant"]) == {"modulation", "output_dir"}
    # + DPO has none of SFT's own fields (the identity loss's) and shares the others but its own.
    assert not set(UNUSED_SFT_FIELDS) & configs["+ DPO"].keys()
    assert differing(configs["+ DPO"]) - set(UNUSED_SFT_FIELDS) <= DPO_OWN | {"output_dir", "model_fingerprints"}
    assert configs["+ DPO"]["sft_checkpoint"] == ablation["checkpoint_paths"].value["task-adaptive"]
    assert configs["+ DPO"]["model_fingerprints"] == {"generator_dir": task["model_fingerprints"]["generator_dir"]}
    for name, config in configs.items():
        assert config["reference_resolution"] == reference_side(profile.reference_pixels), name
        assert config["condition_pixels"] == profile.condition_pixels
        assert config["resolution"] == profile.generation_size
        assert config["checkpoint_every"] == profile.checkpoint_every_steps
        assert config["gradient_checkpoint_blocks"] == profile.gradient_checkpoint_blocks
        assert config["lora_rank"] == profile.lora_rank and config["seed"] == profile.seed
        assert config["steps"] == (profile.dpo_steps if name == "+ DPO" else profile.sft_steps)
        assert folders[name] == root / config["output_dir"] and str(root) not in json.dumps(config)
    # With the default settings the task-adaptive run and + DPO are the pipeline's own runs: trained once.
    assert folders["task-adaptive"] == Path(sft["checkpoint_uri"].value).parent
    assert folders["+ DPO"] == Path(dpo["checkpoint_uri"].value).parent


@dataclass
class Everything:
    """The pipeline materialised once on the demo profile with the tiny models, as `make demo`
    runs it: everything up to the review queue and SFT, the review sensor's run (accepted pairs,
    DPO shards and checkpoint), the registration, the benchmark sensor's runs (each version, then
    promotion and the report)."""

    root: Path
    env: dict[str, str]
    defs: dg.Definitions
    instance: dg.DagsterInstance
    run: dg.ExecuteInProcessResult  # materialize_everything
    reviewed: list  # the review sensor's runs
    registered: dict[str, dg.AssetMaterialization]
    benchmarked: list  # the benchmark sensor's runs
    materialized: dict[str, dg.AssetMaterialization]  # the latest of each asset over all of them
    report: str  # benchmark_report's report.md as the benchmark sensor's run wrote it


@pytest.fixture(scope="module")
def materialised(tmp_path_factory, tiny_models_dir):
    from assets.partitions import add_partitions
    from assets.preference import generation_rounds

    root = tmp_path_factory.mktemp("everything") / "storage"
    env = {"IDGLOW_PROFILE": "demo", "IDGLOW_STORAGE_ROOT": str(root), "IDGLOW_MODELS_DIR": str(tiny_models_dir)}
    with dg.DagsterInstance.ephemeral() as instance:
        with pytest.MonkeyPatch.context() as patch:  # the environment only while it materialises
            for name, value in env.items():
                patch.setenv(name, value)
            patch.delenv("IDGLOW_CELEBAHQ_ROOT", raising=False)
            defs = build_definitions(load_profile())
            add_partitions(instance, generation_rounds, ["round-000"])
            run = defs.resolve_job_def("materialize_everything").execute_in_process(
                instance=instance, partition_key="round-000"
            )
            materialized = _materializations(run)
            # The review sensor (auto mode finished the batch) records the decisions and requests the
            # run that gates the accepted pairs and builds the DPO shards and checkpoint.
            reviewed = run_sensor(defs, instance, "review_batches_finished")
            for result in reviewed:
                materialized.update(_materializations(result))
            # Registration, the benchmark of every version (the sensor's requests), promotion, the report.
            registered = _materializations(
                defs.resolve_job_def("register_models").execute_in_process(instance=instance)
            )
            materialized.update(registered)
            benchmarked = run_sensor(defs, instance, "benchmark_new_versions", rounds=3)
            for result in benchmarked:
                materialized.update(_materializations(result))
            report = Path(materialized["benchmark_report"].metadata["report_uri"].value).read_text()
        yield Everything(root, env, defs, instance, run, reviewed, registered, benchmarked, materialized, report)


@pytest.fixture
def everything(materialised, monkeypatch) -> Everything:
    """The materialised pipeline, its environment set again for this test."""
    for name, value in materialised.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("IDGLOW_CELEBAHQ_ROOT", raising=False)
    return materialised


def test_the_model_hub_loads_every_component(everything, tiny_models_dir):
    assert everything.run.success
    weights = everything.materialized["model_weights"].metadata
    assert weights["models_uri"].value == str(tiny_models_dir)
    assert set(weights["fingerprints"].value) == {"generator", "prompt_model", "clip", "aesthetic", "face_pack"}
    timings = weights["timings_s"].value
    assert timings["generated_width"] == 64
    assert timings["faces_found_in_portrait"] == 1
    assert timings["torch_face_grad_abs_sum"] > 0


def test_prompts_and_candidate_images(everything):
    prompts = everything.materialized["prompts"].metadata
    assert 0.0 <= prompts["dynamic_fallback_rate"].value <= 1.0
    candidates = everything.materialized["candidate_images"].metadata
    assert candidates["generated_now"].value == candidates["dagster/row_count"].value > 0


def test_preference_pairs_the_automatic_filter_and_the_review_queue(everything):
    materialized = everything.materialized
    pairs = materialized["preference_pairs"].metadata
    assert all(
        pairs[f"pairs_{s}"].value > 0
        for s in ("real_vs_perturbed", "real_vs_synthetic", "synthetic_vs_synthetic", "synthetic_vs_perturbed")
    )
    filtered = materialized["auto_filtered_pairs"].metadata
    assert filtered["kept"].value + filtered["dropped"].value == pairs["dagster/row_count"].value
    assert Path(filtered["histograms_uri"].value).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the VLM check asked the demo's prompt model about every chosen image, and either vetoed by
    # its counts or, where they did not hold up on the real photos, vetoed nothing
    table = pd.read_parquet(filtered["filtered_uri"].value)
    assert table["vlm_answer"].notna().all() and filtered["vlm_real_photos"].value == 6
    assert filtered["vlm_vetoed"].value == int((table["rule_vlm_vetoes"]).sum())
    if not filtered["vlm_applied"].value:
        assert filtered["vlm_vetoed"].value == 0 and "not applied" in filtered["vlm_check"].value
    vetoed = table[table["reason"].str.startswith("VLM check")]
    assert (vetoed["vlm_people"] != vetoed["n_subjects"]).all() and not vetoed["kept"].any()
    queue = materialized["review_queue"].metadata
    assert queue["items"].value == filtered["kept"].value == queue["automatic_decisions"].value


def test_the_review_sensor_gates_the_accepted_pairs_and_builds_the_dpo_shards(everything):
    materialized = everything.materialized
    (reviewed,) = everything.reviewed
    queue = materialized["review_queue"].metadata
    assert reviewed.success and reviewed.dagster_run.tags["dagster/partition"] == queue["batch_id"].value
    accepted = materialized["accepted_pairs"].metadata
    assert [e.passed for e in reviewed.get_asset_check_evaluations()] == [True]
    filtered = materialized["auto_filtered_pairs"].metadata
    assert 0 < accepted["accepted"].value <= accepted["decided"].value == filtered["kept"].value
    dpo = materialized["dpo_shards"].metadata
    assert dpo["samples"].value == accepted["accepted"].value
    assert materialized["sft_shards"].metadata["samples"].value >= 6


def test_sft_and_dpo_train_in_processes_launched_through_pipes(everything):
    sft = everything.materialized["sft_checkpoint"]
    assert sft.metadata["step"].value == 4 and sft.metadata["world_size"].value == 1
    assert sft.metadata["training_pid"].value != os.getpid()  # reported by the launched process, through Pipes
    assert sft.tags["dagster/data_version"] == sft.metadata["lora_sha256"].value
    dpo = everything.materialized["dpo_checkpoint"].metadata
    assert dpo["sft_lora_sha256"].value == sft.metadata["lora_sha256"].value
    assert Path(dpo["checkpoint_uri"].value, "pytorch_lora_weights.safetensors").is_file()
    # the version is named by the weights' content hash, as SFT's, never by the file's bytes (which
    # differ from process to process), so a rerun that re-exports the same weights registers nothing new
    dpo_event = everything.materialized["dpo_checkpoint"]
    assert dpo_event.tags["dagster/data_version"] == dpo["lora_sha256"].value
    combined = Path(dpo["checkpoint_uri"].value, "pytorch_lora_weights.safetensors")
    assert dpo["lora_sha256"].value == tensors_sha256(combined)


def test_registration_benchmark_promotion_and_report(everything):
    materialized = everything.materialized
    assert set(everything.registered["model_registry"].metadata["registered_now"].value) == {
        "base",
        f"sft-{materialized['sft_checkpoint'].metadata['lora_sha256'].value[:12]}",
        f"dpo-{materialized['dpo_checkpoint'].metadata['lora_sha256'].value[:12]}",
    }
    for run in everything.benchmarked:
        assert run.success
    results = pd.read_parquet(materialized["benchmark_results"].metadata["results_uri"].value)
    assert len(results) == 16 and {
        "checkpoint_sha256",
        "shard_manifest_sha256",
        "prompt_set_sha256",
        "metric_models",
        "code_version",
        "inference",
    } <= set(results.columns)
    report = everything.report
    assert "tiny models on a generated world" in report and "*IdGlow (published)*" in report and "| base |" in report
    assert Path(materialized["benchmark_report"].metadata["pareto_uri"].value).read_bytes()[:4] == b"\x89PNG"
    assert "current_model" in materialized  # the tiny DPO model is not worse than the tiny base


def test_images_made_elsewhere_appear_in_the_next_report(everything):
    results = pd.read_parquet(everything.materialized["benchmark_results"].metadata["results_uri"].value)
    first = results.iloc[0]
    manifest = everything.root / "external.json"
    manifest.write_text(
        json.dumps(
            [
                {
                    "group_id": first["group_id"],
                    "task": first["task"],
                    "prompt_kind": first["prompt_kind"],
                    "image": first["image"],
                },
                {
                    "group_id": first["group_id"],
                    "task": first["task"],
                    "prompt_kind": "dynamic",
                    "image": "gone.png",
                },
            ]
        )
    )
    scored = subprocess.run(
        [
            sys.executable,
            "-m",
            "idglow.cli",
            "eval",
            "external",
            "--manifest",
            str(manifest),
            "--name",
            "elsewhere",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert scored.returncode == 0, scored.stderr
    assert "scored 1 of 2 images" in scored.stdout and "missing file" in scored.stderr
    again = dg.materialize(
        [benchmark_report_asset], instance=everything.instance, resources=resources_for(load_profile())
    )
    assert "external-elsewhere" in _materializations(again)["benchmark_report"].metadata["methods"].value


def test_the_ablation_trains_evaluates_and_tabulates_table_3(everything):
    # Table 3's ablation as one job: three SFT configurations and + DPO, trained, evaluated, tabulated.
    ablation = _materializations(
        everything.defs.resolve_job_def("sft_ablation_job").execute_in_process(instance=everything.instance)
    )
    rows = ablation["sft_ablation"].metadata["table"].value.splitlines()[2:]
    assert len(rows) == 8 and {r.split(" | ")[1] for r in rows} == {
        "no ID loss",
        "constant",
        "annealing",
        "gating",
        "+ DPO",
    }
    assert "*0.64 / 6.09*" in ablation["sft_ablation"].metadata["table"].value  # annealing, published
    results = pd.read_parquet(ablation["sft_ablation"].metadata["ablation_uri"].value)
    assert list(results.columns) == list(ABLATION_COLUMNS) and len(results) == 8
    assert set(results["configuration"]) == {"no_id_loss", "constant", "task_adaptive", "task_adaptive+dpo"}
    assert results.loc[results["task"] == "group_fusion", "child_rate"].isna().all()
    _assert_ablation_runs(
        everything.root,
        ablation["sft_ablation"].metadata,
        everything.materialized["sft_checkpoint"].metadata,
        everything.materialized["dpo_checkpoint"].metadata,
    )
    assert Path(ablation["sft_ablation"].metadata["samples_uri"].value).read_bytes()[:4] == b"\x89PNG"
    # The report, written again after the ablation (as `make demo` orders them), tabulates it.
    again = dg.materialize(
        [benchmark_report_asset], instance=everything.instance, resources=resources_for(load_profile())
    )
    report = Path(_materializations(again)["benchmark_report"].metadata["report_uri"].value)
    ablation_part = report.read_text().split("## SFT ablation")[1]
    assert "| group_fusion | no ID loss |" in ablation_part and "*0.64 / 6.09*" in ablation_part
    assert (report.parent / "ablation_samples.png").read_bytes()[:4] == b"\x89PNG"


def test_the_aligned_prompt_model_is_a_version_the_prompts_asset_can_name(everything):
    alignment = everything.materialized["prompt_model_alignment"].metadata
    assert alignment["prompt_model_version"].value.startswith("aligned:") and alignment["step"].value == 8
    base_settings = IdglowSettings.from_profile(load_profile())
    aligned_settings = type(base_settings)(prompt_model_version=alignment["checkpoint_uri"].value)
    renamed = dg.materialize(
        [prompts_asset],
        instance=everything.instance,
        resources={**resources_for(load_profile()), "settings": aligned_settings},
    )
    written = pd.read_parquet(_materializations(renamed)["prompts"].metadata["prompts_uri"].value)
    assert set(written["prompt_model_version"]) == {alignment["prompt_model_version"].value}


def test_two_processes_per_run_launch_torchrun_through_pipes(everything, monkeypatch):
    # Two processes per run: the same asset launches torchrun (gloo on CPU) through Pipes.
    sft = everything.materialized["sft_checkpoint"]
    monkeypatch.setenv("IDGLOW_TRAINING_GPUS", "2")
    two = build_definitions(load_profile())
    k8s = json.loads(two.resolve_assets_def("sft_checkpoint").op.tags["dagster-k8s/config"])
    assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "2"
    ddp = _materializations(
        two.resolve_job_def("materialize_everything").execute_in_process(
            instance=everything.instance,
            partition_key="round-000",
            asset_selection=[dg.AssetKey("sft_checkpoint")],
        )
    )["sft_checkpoint"]
    assert ddp.metadata["world_size"].value == 2 and ddp.metadata["step"].value == 4
    assert ddp.metadata["checkpoint_uri"].value != sft.metadata["checkpoint_uri"].value  # its own run folder
    assert ddp.tags["dagster/data_version"] == ddp.metadata["lora_sha256"].value


def test_a_rerun_of_the_same_round_generates_nothing_new(everything):
    candidates = everything.materialized["candidate_images"].metadata
    again = _materializations(
        everything.defs.resolve_job_def("materialize_everything").execute_in_process(
            instance=everything.instance,
            partition_key="round-000",
            asset_selection=[dg.AssetKey("candidate_images")],
        )
    )
    assert again["candidate_images"].metadata["generated_now"].value == 0
    assert again["candidate_images"].metadata["skipped_existing"].value == candidates["dagster/row_count"].value


def test_sft_checkpoint_trains_with_its_run_config_in_its_own_folder(
    storage_env, tiny_models_dir, sft_shards, monkeypatch
):
    import shutil

    monkeypatch.setenv("IDGLOW_MODELS_DIR", str(tiny_models_dir))
    shutil.copytree(sft_shards, storage_env / "sft_shards")
    profile = load_profile()
    from assets.training import build_training_assets

    sft = build_training_assets(profile.training_gpus, profile)[0]
    runs = {}
    with dg.DagsterInstance.ephemeral() as instance:
        for lambda_id in (0.1, 0.25):
            result = dg.materialize(
                [sft],
                instance=instance,
                resources=resources_for(profile),
                run_config={
                    "ops": {
                        "sft_checkpoint": {"config": {"steps": 1, "lambda_id": lambda_id, "modulation": "constant"}}
                    }
                },
            )
            runs[lambda_id] = _materializations(result)["sft_checkpoint"].metadata
    for lambda_id, metadata in runs.items():
        assert metadata["config"].value["lambda_id"] == lambda_id and metadata["config"].value["steps"] == 1
        saved = json.loads(Path(metadata["checkpoint_uri"].value, "manifest.json").read_text())["config"]
        assert saved == metadata["config"].value  # what the checkpoint says it trained with
    # Another lambda_id is another run: its own folder, not the first run's checkpoint.
    assert Path(runs[0.1]["checkpoint_uri"].value).parent != Path(runs[0.25]["checkpoint_uri"].value).parent
    for metadata in runs.values():  # each run trained its own step
        assert len(Path(metadata["checkpoint_uri"].value).parent.joinpath("log.jsonl").read_text().splitlines()) == 1


def test_overlapping_split_fails_the_check_and_blocks_downstream(storage_env):
    @dg.asset(name="identity_splits", group_name="identities")
    def overlapping_splits(settings: IdglowSettings) -> dg.MaterializeResult:
        frame = pd.DataFrame(
            {
                "identity": [1, 1, 2],
                "split": ["train", "benchmark", "train"],
                "n_images": [2, 2, 2],
                "partitions": ["test", "test", "train"],
            }
        )
        settings.paths.identity_splits.parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(settings.paths.identity_splits)
        return dg.MaterializeResult()

    settings = IdglowSettings.from_profile(load_profile())
    with dg.DagsterInstance.ephemeral() as instance:
        result = dg.materialize(
            [overlapping_splits, identity_splits_are_disjoint, benchmark_groups, training_groups],
            resources={"settings": settings},
            instance=instance,
            raise_on_error=False,
        )
    evaluation = result.get_asset_check_evaluations()[0]
    assert not evaluation.passed
    assert evaluation.metadata["overlapping_identities"].value == 1
    assert set(_materializations(result)) == {"identity_splits"}
    assert not result.success
    started = {event.step_key for event in result.all_events if event.event_type_value == "STEP_START"}
    assert not started & {"benchmark_groups", "training_groups"}
    assert not settings.paths.benchmark_groups.exists()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.mark.slow
def test_webserver_serves_the_asset_graph(tmp_path):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text((REPO / "dagster.yaml").read_text())
    port = _free_port()
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "IDGLOW_PROFILE": "demo",
        "IDGLOW_STORAGE_ROOT": str(tmp_path / "storage"),
    }
    webserver = Path(sys.executable).parent / "dagster-webserver"
    process = subprocess.Popen(
        [str(webserver), "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        keys: set[str] = set()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and not FOUNDATION_ASSETS <= keys:
            assert process.poll() is None, "dagster-webserver exited early"
            try:
                answer = _graphql(port, "{ assetNodes { assetKey { path } } }")
                keys = {"/".join(node["assetKey"]["path"]) for node in answer["data"]["assetNodes"]}
            except OSError:
                pass
            time.sleep(1)
        assert FOUNDATION_ASSETS <= keys
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode is not None


def test_source_sensor_requests_a_run_only_when_the_source_changes(tmp_path, demo_dataset):
    import shutil

    from assets.sensors import celebahq_source_changed

    root = tmp_path / "root"
    shutil.copytree(demo_dataset.root, root)
    env = {"IDGLOW_CELEBAHQ_ROOT": str(root), "IDGLOW_STORAGE_ROOT": str(tmp_path / "storage")}
    resources = {"settings": IdglowSettings.from_profile(load_profile("demo", env=env))}
    with dg.DagsterInstance.ephemeral() as instance:
        first = dg.build_sensor_context(instance=instance, resources=resources)
        assert isinstance(celebahq_source_changed(first), dg.SkipReason)
        recorded = first.cursor
        assert recorded
        unchanged = dg.build_sensor_context(instance=instance, resources=resources, cursor=recorded)
        assert isinstance(celebahq_source_changed(unchanged), dg.SkipReason)
        (root / "CelebA-HQ-img" / "999.jpg").write_bytes(b"new")
        changed = dg.build_sensor_context(instance=instance, resources=resources, cursor=recorded)
        request = celebahq_source_changed(changed)
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == changed.cursor != recorded
