"""Training settings as Dagster run config: the profile's defaults, the run folder keyed by the
whole config, and the reference budgets training shares with inference."""

import dataclasses
from pathlib import Path

import pytest

from assets.training import build_training_assets, in_run_dir, profile_filled, run_key, training_config
from idglow.editing import ReferenceBudget
from idglow.profiles import load_profile
from training.checkpoints import checkpoint_due
from training.dpo import DPOConfig
from training.sft import SFTConfig

PATHS = {"generator_dir": "models/generator", "shards": "storage/sft_shards"}
INPUTS = "a" * 64


def _defaults(asset) -> dict:
    fields = asset.op.config_schema.config_type.fields
    return {name: field.default_value if field.default_provided else None for name, field in fields.items()}


def _class_default(config_type, name):
    spec = next(f for f in dataclasses.fields(config_type) if f.name == name)
    return spec.default


def test_run_config_shows_the_profiles_defaults():
    for name in ("demo", "real"):
        profile = load_profile(name, env={})
        sft, dpo, prompt = build_training_assets(profile.training_gpus, profile)
        sft_defaults, dpo_defaults, prompt_defaults = _defaults(sft), _defaults(dpo), _defaults(prompt)
        assert sft_defaults["steps"] == profile.sft_steps and dpo_defaults["steps"] == profile.dpo_steps
        assert prompt_defaults["steps"] == profile.prompt_dpo_steps
        assert sft_defaults["lora_rank"] == dpo_defaults["lora_rank"] == profile.lora_rank
        assert sft_defaults["checkpoint_every"] == profile.checkpoint_every_steps
        assert sft_defaults["checkpoint_every_minutes"] == profile.checkpoint_every_minutes
        # The method's constants keep the one default their config class gives them.
        for knob in ("lambda_id", "tau", "t1", "t2", "modulation", "learning_rate", "gradient_accumulation", "compile"):
            assert sft_defaults[knob] == _class_default(SFTConfig, knob)
        for knob in ("beta", "chosen_weight", "margin", "sft_weight"):
            assert dpo_defaults[knob] == _class_default(DPOConfig, knob)
        # Paths, the seed and the sizes inference shares are not run config; DPO shows no ID-loss knobs.
        assert not {"output_dir", "shards", "seed", "resolution", "reference_resolution", "condition_pixels"} & set(
            sft_defaults
        )
        assert not {"lambda_id", "modulation", "sft_checkpoint"} & set(dpo_defaults)
        assert sft_defaults["gradient_checkpoint_blocks"] == str(profile.gradient_checkpoint_blocks)
    assert (
        _defaults(build_training_assets(1, load_profile("real", env={}))[0])["checkpoint_every"]
        < load_profile("real", env={}).sft_steps
    )


def test_sft_and_dpo_share_the_loops_fields_and_add_only_their_own():
    from training.config import RunConfig
    from training.dpo import UNUSED_SFT_FIELDS

    loop, sft, dpo = ({f.name for f in dataclasses.fields(c)} for c in (RunConfig, SFTConfig, DPOConfig))
    assert loop < sft and loop < dpo
    assert sft - loop == set(UNUSED_SFT_FIELDS) and not dpo & set(UNUSED_SFT_FIELDS)
    assert dpo - loop == {"sft_checkpoint", "beta", "chosen_weight", "margin", "sft_weight"}


def test_the_run_folder_is_keyed_by_the_whole_config_and_its_inputs(tmp_path):
    profile = load_profile("demo", env={})
    base = training_config(SFTConfig, profile, {}, **PATHS)
    folder = Path(in_run_dir(base, tmp_path, INPUTS, 0).output_dir)
    assert folder.parent == tmp_path and folder == Path(in_run_dir(base, tmp_path, INPUTS, 0).output_dir)
    for change in (
        {"lambda_id": 0.2},
        {"tau": 0.3},
        {"t1": 0.2},
        {"t2": 0.8},
        {"modulation": "gate"},
        {"learning_rate": 5e-5},
        {"batch_size": 2},
        {"gradient_accumulation": 4},
        {"compile": True},
        {"checkpoint_every": 7},
        {"checkpoint_every_minutes": None},
        {"lora_rank": 8},
    ):
        other = training_config(SFTConfig, profile, change, **PATHS)
        assert Path(in_run_dir(other, tmp_path, INPUTS, 0).output_dir) != folder, change
    dpo = training_config(DPOConfig, profile, {}, **PATHS, sft_checkpoint="sft/step-4")
    assert run_key(dpo, INPUTS, 0) != run_key(dataclasses.replace(dpo, beta=5000.0), INPUTS, 0)
    assert run_key(dpo, INPUTS, 0) != run_key(dataclasses.replace(dpo, sft_checkpoint="sft/step-8"), INPUTS, 0)
    assert run_key(base, INPUTS, 0) != run_key(base, "b" * 64, 0)  # other shards
    assert run_key(base, INPUTS, 0) != run_key(base, INPUTS, 2)  # more ranks
    # What a resume may change leaves the folder: a run recomputing more to fit a smaller card resumes.
    for same in (
        {"output_dir": "elsewhere"},
        {"device": "cuda:1"},
        {"gradient_checkpoint_blocks": -1},
        {"memory_fraction": 0.8},
    ):
        assert run_key(base, INPUTS, 0) == run_key(dataclasses.replace(base, **same), INPUTS, 0), same


def test_training_and_generation_carry_each_profiles_reference_budget():
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as pipeline

    from assets.benchmark import benchmark_generation
    from assets.preference import candidate_generation

    for name in ("demo", "real"):
        profile = load_profile(name, env={})
        budget = ReferenceBudget(profile.reference_pixels, profile.condition_pixels)
        for config_type in (SFTConfig, DPOConfig):
            assert training_config(config_type, profile, {}, **PATHS).reference_budget == budget, (name, config_type)
        assert benchmark_generation(profile).budget == candidate_generation(profile).budget == budget, name
    # The real model's budgets are diffusers' defaults (read, never set: no stage patches them).
    assert (
        ReferenceBudget.of_profile(load_profile("real", env={}))
        == ReferenceBudget(pipeline.VAE_IMAGE_SIZE, pipeline.CONDITION_IMAGE_SIZE)
        == ReferenceBudget(1024 * 1024, 384 * 384)
    )
    real = training_config(SFTConfig, load_profile("real", env={}), {}, **PATHS)
    assert real.resolution == load_profile("real", env={}).generation_size == 1024
    assert real.steps == 2000 and real.lora_rank == 32  # the real profile's run, not the class defaults


def test_reference_budgets_must_make_whole_latent_tokens():
    from idglow.profiles import ProfileError

    profile = dataclasses.replace(load_profile("demo", env={}), reference_pixels=60 * 60)
    with pytest.raises(ProfileError, match="reference_pixels 3600"):
        profile_filled(profile)


def test_checkpoints_follow_the_step_and_the_minute_cadence():
    config = SFTConfig(
        generator_dir="", shards="", output_dir="", steps=10, checkpoint_every=4, checkpoint_every_minutes=30
    )
    assert [s for s in range(1, 11) if checkpoint_due(s, config, seconds_since_last=0)] == [4, 8, 10]
    assert checkpoint_due(5, config, seconds_since_last=30 * 60) and not checkpoint_due(
        5, config, seconds_since_last=29 * 60
    )
    steps_only = dataclasses.replace(config, checkpoint_every_minutes=None)
    assert not checkpoint_due(5, steps_only, seconds_since_last=10**6)


def test_the_recomputed_block_count_is_auto_or_a_count():
    real = load_profile("real", env={})
    assert real.gradient_checkpoint_blocks == "auto" and load_profile("demo", env={}).gradient_checkpoint_blocks == 0
    sft = build_training_assets(1, real)[0]
    assert _defaults(sft)["gradient_checkpoint_blocks"] == "auto"  # text in the launchpad: Dagster config has no unions
    assert (
        training_config(SFTConfig, real, {"gradient_checkpoint_blocks": "12"}, **PATHS).gradient_checkpoint_blocks == 12
    )
    assert training_config(SFTConfig, real, {}, **PATHS).gradient_checkpoint_blocks == "auto"
    with pytest.raises(ValueError, match="block count or 'auto'"):
        SFTConfig(generator_dir="", shards="", output_dir="", gradient_checkpoint_blocks="most")


def _memory(layers: int, base: float, per_block: float, capacity: float, extra_per_kept: float = 0.0):
    """Peak bytes of a step with ``count`` blocks recomputed: each kept block holds its
    activations (``extra_per_kept`` makes the cost grow faster than the planner's estimate)."""
    calls = []

    def peak(count: int) -> float | None:
        calls.append(count)
        kept = layers - count
        used = base + per_block * kept + extra_per_kept * kept**2
        return None if used > capacity else used

    return peak, calls


def test_the_planner_keeps_the_most_blocks_that_fit():
    from training.memory import plan_recomputed_blocks

    gib = 2**30
    peak, _ = _memory(60, base=40 * gib, per_block=2 * gib, capacity=139 * gib)
    count, info = plan_recomputed_blocks(60, peak, budget_bytes=125 * gib)
    assert count == 60 - 42  # (125 - 40) // 2 blocks keep their activations
    assert info == {"peak_all_checkpointed_gib": 40.0, "gib_per_kept_block": 2.0}
    # The estimate from two probes is short when the cost grows: it recomputes a tenth more until the step fits.
    peak, calls = _memory(60, base=40 * gib, per_block=2 * gib, capacity=100 * gib, extra_per_kept=0.05 * gib)
    count, _ = plan_recomputed_blocks(60, peak, budget_bytes=100 * gib)
    assert calls == [60, 54, 34, 40] and count == 40  # 34 ran out of memory; 40 keeps 20 blocks at exactly 100 GiB
    # Nothing to keep when even the fully recomputed step fills the budget; an error when it cannot run.
    peak, _ = _memory(60, base=90 * gib, per_block=2 * gib, capacity=139 * gib)
    assert plan_recomputed_blocks(60, peak, budget_bytes=80 * gib)[0] == 60
    peak, _ = _memory(60, base=150 * gib, per_block=2 * gib, capacity=139 * gib)
    with pytest.raises(RuntimeError, match="even with all 60 blocks recomputed"):
        plan_recomputed_blocks(60, peak, budget_bytes=125 * gib)
