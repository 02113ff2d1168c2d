"""The settings resource is generated from the profile: every setting, the profile's defaults,
the environment through dg.EnvVar, and run config on top (assets/resources.py)."""

from dataclasses import fields, replace

import dagster as dg
import pytest

from assets.resources import IdglowSettings, ModelHubResource
from idglow.profiles import ENVIRONMENT_FIELDS, Profile, load_profile


@pytest.mark.parametrize("name", ["demo", "real"])
def test_the_resource_describes_the_profile_it_was_generated_from(name, tmp_path):
    env = {"IDGLOW_STORAGE_ROOT": str(tmp_path / "storage")}
    profile = replace(load_profile(name, env=env), sft_min_aesthetic=float("-inf"), generation_size=96)
    settings = IdglowSettings.from_profile(profile, env={})
    assert settings.resolved() == profile
    expected = {f.name for f in fields(Profile)} - {"name", "demo_dataset"} | {"profile"}
    assert set(type(settings).model_fields) == expected


def test_a_variable_set_when_the_definitions_load_is_read_where_the_run_executes(tmp_path, monkeypatch):
    monkeypatch.setenv("IDGLOW_STORAGE_ROOT", str(tmp_path / "at-load"))
    monkeypatch.setenv("IDGLOW_TRAINING_GPUS", "3")
    settings = IdglowSettings.from_profile(load_profile("real"))
    assert type(settings).model_fields["storage_root"].default == dg.EnvVar("IDGLOW_STORAGE_ROOT")

    @dg.asset
    def seen(settings: IdglowSettings) -> dict:
        profile = settings.resolved()
        return {"root": profile.storage_root, "gpus": profile.training_gpus, "size": profile.generation_size}

    monkeypatch.setenv("IDGLOW_STORAGE_ROOT", str(tmp_path / "at-run"))
    plain = dg.materialize([seen], resources={"settings": settings}).output_for_node("seen")
    assert plain == {"root": tmp_path / "at-run", "gpus": 3, "size": 1024}
    run_config = {"resources": {"settings": {"config": {"generation_size": 512}}}}
    changed = dg.materialize([seen], resources={"settings": settings}, run_config=run_config).output_for_node("seen")
    assert changed == {"root": tmp_path / "at-run", "gpus": 3, "size": 512}


def test_resolving_reads_nothing_from_the_environment(tmp_path, monkeypatch):
    for variable in ENVIRONMENT_FIELDS.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("IDGLOW_STORAGE_ROOT", str(tmp_path))
    settings = IdglowSettings.from_profile(load_profile("demo"), env={})
    before = settings.resolved()
    monkeypatch.setenv("IDGLOW_STORAGE_ROOT", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("IDGLOW_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("IDGLOW_PROFILE", "real")
    assert settings.resolved() == before
    assert settings.paths.root == tmp_path


def test_the_model_hub_reads_its_folder_and_clip_hash_from_the_settings(tmp_path):
    profile = replace(load_profile("real", env={}), models_dir=tmp_path / "models", clip_sha256="ab" * 32)
    hub = ModelHubResource(device="cpu").hub(IdglowSettings.from_profile(profile, env={}))
    assert (hub.profile, hub.models_dir, hub.clip_sha256) == ("real", tmp_path / "models", "ab" * 32)
    assert str(hub.device) == "cpu"
