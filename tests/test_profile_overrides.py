"""IDGLOW_PROFILE_OVERRIDES: a TOML file of profile fields, applied with their types or refused."""

import math
from pathlib import Path

import pytest

from idglow.profiles import ProfileError, load_profile

REPO = Path(__file__).resolve().parent.parent


def overrides(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "overrides.toml"
    path.write_text(text)
    return {"IDGLOW_PROFILE_OVERRIDES": str(path)}


def test_fields_are_set_with_their_types(tmp_path):
    env = overrides(
        tmp_path,
        'sft_steps = 2\ntrue_cfg_scale = 2\nsft_min_aesthetic = "-inf"\ngradient_checkpoint_blocks = 0\n'
        'benchmark_partitions = ["test", "val"]\ndynamic_prompts = false\n',
    )
    profile = load_profile("real", env)
    assert profile.sft_steps == 2 and profile.true_cfg_scale == 2.0 and isinstance(profile.true_cfg_scale, float)
    assert profile.sft_min_aesthetic == -math.inf
    assert profile.gradient_checkpoint_blocks == 0
    assert profile.benchmark_partitions == ("test", "val")
    assert profile.dynamic_prompts is False
    untouched = load_profile("real", {})
    assert profile.dpo_steps == untouched.dpo_steps and profile.generation_size == untouched.generation_size


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sft_step = 2\n", r"unknown profile fields \['sft_step'\]"),
        ('storage_root = "/elsewhere"\n', "cannot be set by an overrides file"),
        ('clip_sha256 = "00"\n', "cannot be set by an overrides file"),
        ('sft_steps = "two"\n', "sft_steps = 'two': expected <class 'int'>"),
        ("sft_steps = 2.5\n", "expected <class 'int'>"),
        ("sft_steps = true\n", "expected <class 'int'>"),
        ("sft_steps = \n", "not valid TOML"),
    ],
)
def test_a_wrong_file_is_refused_with_the_reason(tmp_path, text, message):
    with pytest.raises(ProfileError, match=message):
        load_profile("real", overrides(tmp_path, text))


def test_a_missing_file_is_named(tmp_path):
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile("real", {"IDGLOW_PROFILE_OVERRIDES": str(tmp_path / "nope.toml")})


def test_the_rehearsal_changes_only_counts_steps_and_sizes():
    """configs/rehearsal.toml loads on the real profile and sets nothing but counts, steps and
    sizes: every value it sets is a whole number."""
    import tomllib

    values = tomllib.loads((REPO / "configs" / "rehearsal.toml").read_text())
    assert values and all(isinstance(v, int) and not isinstance(v, bool) for v in values.values())
    profile = load_profile("real", {"IDGLOW_PROFILE_OVERRIDES": str(REPO / "configs" / "rehearsal.toml")})
    assert {name: getattr(profile, name) for name in values} == values
    assert profile.review_mode == "human" and profile.generate_demo_data is False


def test_the_clip_hash_comes_from_the_environment_only(tmp_path):
    assert load_profile("real", {}).clip_sha256 is None
    assert load_profile("real", {"IDGLOW_CLIP_SHA256": " AB12 "}).clip_sha256 == "ab12"
