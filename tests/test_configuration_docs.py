"""docs/configuration.md names every knob: each profile setting, each environment variable that
sets one, each method constant of the training configs, and each filter threshold."""

from dataclasses import fields
from pathlib import Path

import pytest
from dagster_ray import RayResource

from assets.inference import IdglowRay
from assets.training import GENERATOR_FILLED, PROMPT_DPO_FILLED
from idglow.filtering import DEFAULT_THRESHOLDS
from idglow.profiles import ENVIRONMENT_FIELDS, Profile
from training.config import RunConfig
from training.dpo import DPOConfig
from training.prompt_dpo import PromptDPOConfig
from training.sft import SFTConfig

# the fields the training assets fill themselves (paths, the device, the profile's sizes) are no run config
FILLED = set(GENERATOR_FILLED)
RUN_CONFIGS = [(SFTConfig, FILLED), (DPOConfig, FILLED), (PromptDPOConfig, set(PROMPT_DPO_FILLED))]
DOC = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
TRAINING_DOC = (Path(__file__).parents[1] / "docs" / "training.md").read_text()


def own_fields(config: type, base: type) -> set[str]:
    return {f.name for f in fields(config)} - {f.name for f in fields(base)}


@pytest.mark.parametrize("name", sorted({f.name for f in fields(Profile)} - {"name", "demo_dataset"}))
def test_every_profile_setting_is_documented(name):
    assert f"`{name}`" in DOC


@pytest.mark.parametrize("variable", sorted(ENVIRONMENT_FIELDS.values()))
def test_every_variable_that_sets_a_setting_is_documented(variable):
    assert f"`{variable}`" in DOC


@pytest.mark.parametrize("name", sorted((own_fields(SFTConfig, RunConfig) | own_fields(DPOConfig, RunConfig)) - FILLED))
def test_every_method_constant_is_documented(name):
    assert f"`{name}`" in DOC


@pytest.mark.parametrize(
    ("config", "name"),
    [(config.__name__, f.name) for config, filled in RUN_CONFIGS for f in fields(config) if f.name not in filled],
)
def test_every_training_run_config_field_is_documented(config, name):
    assert f"`{name}`" in TRAINING_DOC, f"{config}.{name}"


@pytest.mark.parametrize("name", sorted(set(IdglowRay.model_fields) - set(RayResource.model_fields) | {"lifecycle"}))
def test_every_ray_setting_is_documented(name):
    assert f"`{name}`" in DOC


@pytest.mark.parametrize(("metric", "threshold"), sorted(DEFAULT_THRESHOLDS.items()))
def test_every_filter_threshold_is_documented_with_its_value(metric, threshold):
    row = next(line for line in DOC.splitlines() if line.startswith(f"| `{metric}` |"))
    assert [float(cell) for cell in row.strip("|").split("|")[1:]] == [threshold.delta, threshold.epsilon]
