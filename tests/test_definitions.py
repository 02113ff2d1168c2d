"""The code location assembles itself: whatever a stage module defines is in the definitions."""

import importlib
import pkgutil
from pathlib import Path

import dagster as dg
import pytest

import assets
from idglow.profiles import load_profile
from pipelines.definitions import build_definitions

JOB_TYPES = (dg.JobDefinition, type(dg.define_asset_job("a_job")))  # define_asset_job's own type


def _stage_modules():
    """Every module of the assets package, found from the package's files (not by the loader)."""
    folder = Path(assets.__file__).parent
    names = sorted(path.stem for path in folder.glob("*.py") if path.stem != "__init__")
    assert names == sorted(info.name for info in pkgutil.iter_modules(assets.__path__))
    return [importlib.import_module(f"assets.{name}") for name in names]


def _defined(profile) -> dict[str, set]:
    """What the stage modules define, by walking each module's namespace and calling its
    ``profile_definitions``: asset keys, asset check keys, job, sensor and schedule names."""
    found = {"assets": set(), "checks": set(), "jobs": set(), "sensors": set(), "schedules": set()}

    def record(value) -> None:
        if isinstance(value, dg.AssetsDefinition):  # an asset, a multi-asset or asset checks
            found["assets"].update(value.keys)
            found["checks"].update(value.check_keys)
        elif isinstance(value, dg.AssetSpec):
            found["assets"].add(value.key)
        elif isinstance(value, JOB_TYPES):
            found["jobs"].add(value.name)
        elif isinstance(value, dg.SensorDefinition):
            found["sensors"].add(value.name)
        elif isinstance(value, dg.ScheduleDefinition):
            found["schedules"].add(value.name)

    for module in _stage_modules():
        for value in vars(module).values():
            record(value)
        if hasattr(module, "profile_definitions"):
            built = module.profile_definitions(profile)
            for kind in ("assets", "asset_checks", "jobs", "sensors", "schedules"):
                for value in getattr(built, kind) or ():
                    record(value)
    return found


@pytest.mark.parametrize("name", ["demo", "real"])
def test_every_definition_in_the_stage_modules_is_in_the_code_location(name, tmp_path):
    profile = load_profile(name, env={"IDGLOW_STORAGE_ROOT": str(tmp_path / "storage")})
    defs = build_definitions(profile)
    graph = defs.resolve_asset_graph()
    defined = _defined(profile)
    assert len(defined["assets"]) > 20 and defined["jobs"] and defined["sensors"] and defined["schedules"]
    assert defined["assets"] <= graph.get_all_asset_keys()
    assert defined["checks"] <= graph.asset_check_keys
    for job in defined["jobs"]:
        assert defs.resolve_job_def(job).name == job
    assert defined["sensors"] <= {sensor.name for sensor in defs.sensors}
    assert defined["schedules"] <= {schedule.name for schedule in defs.schedules}
    # and nothing else: the code location holds the stage modules' definitions only
    assert graph.get_all_asset_keys() == defined["assets"]
    assert {job.name for job in defs.jobs} == defined["jobs"]


@pytest.mark.parametrize(("name", "executor"), [("demo", "in_process"), ("real", "multiprocess")])
def test_resources_and_the_executor_are_set_once_for_every_stage(name, executor, tmp_path):
    profile = load_profile(name, env={"IDGLOW_STORAGE_ROOT": str(tmp_path / "storage")})
    defs = build_definitions(profile)
    assert set(defs.resources) == {"settings", "models", "pipes_subprocess_client", "ray_cluster"}
    assert defs.resources["settings"].profile == name
    assert defs.executor.name == executor
    dg.Definitions.validate_loadable(defs)


def test_a_profile_built_stage_follows_its_profile(tmp_path):
    env = {"IDGLOW_STORAGE_ROOT": str(tmp_path / "storage"), "IDGLOW_TRAINING_GPUS": "2"}
    defs = build_definitions(load_profile("demo", env=env))
    tags = defs.resolve_assets_def("sft_checkpoint").op.tags["dagster-k8s/config"]
    assert '"nvidia.com/gpu": "2"' in tags
