"""idglow.acceleration: the generator's lossy options, each off unless a setting turns it on.

Each test that turns an option on does it on a pipeline of its own (``fresh``): an option is
applied once per pipeline and cannot be taken off, and the hub's generator is shared by the
session's other tests."""

import importlib.util
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from idglow.acceleration import (
    Acceleration,
    AccelerationError,
    applied_acceleration,
    apply_acceleration,
    fp8_supported,
    remove_acceleration,
    write_random_lora,
)
from idglow.editing import ReferenceBudget, edit_candidates, skip_unused_logits
from idglow.generation import GenerationSettings
from idglow.inference.engine import settings_hash
from idglow.profiles import Profile, defaults

SMALL_BUDGET = ReferenceBudget(64 * 64, 56 * 56)
TWO_PORTRAITS = (Image.new("RGB", (48, 48), (90, 140, 200)), Image.new("RGB", (64, 48), (200, 90, 60)))
PROMPT = "Two friends smiling in a park."
STEPS, CFG = 4, 4.0


def run(pipeline, steps: int = STEPS, true_cfg_scale: float = CFG) -> list[Image.Image]:
    """Three candidates in batches of 2 then 1 (a step cache's state must not leak between them)."""
    return edit_candidates(
        pipeline,
        TWO_PORTRAITS,
        PROMPT,
        budget=SMALL_BUDGET,
        height=64,
        width=64,
        num_inference_steps=steps,
        true_cfg_scale=true_cfg_scale,
        negative_prompt=" " if true_cfg_scale > 1 else None,
        generators=[torch.Generator().manual_seed(seed) for seed in (3, 4, 5)],
        candidates_batch=2,
    )


def max_differences(a: list[Image.Image], b: list[Image.Image]) -> list[int]:
    return [
        int(np.abs(np.asarray(x, dtype=np.int16) - np.asarray(y, dtype=np.int16)).max())
        for x, y in zip(a, b, strict=True)
    ]


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.mean((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255**2 / error))


@pytest.fixture
def fresh(tiny_models_dir: Path):
    """A call that loads the tiny generator anew, as the hub loads it (not from its cache)."""
    from diffusers import QwenImageEditPlusPipeline

    def load():
        pipeline = QwenImageEditPlusPipeline.from_pretrained(tiny_models_dir / "generator", local_files_only=True)
        pipeline.set_progress_bar_config(disable=True)
        skip_unused_logits(pipeline.text_encoder)
        return pipeline

    return load


@pytest.fixture(scope="module")
def exact(tiny_models_dir):
    """The images with no option on (the hub's shared generator, untouched)."""
    from idglow.models.hub import ModelHub

    return run(ModelHub("demo", tiny_models_dir, device="cpu").generator())


@pytest.fixture(scope="module")
def random_lora(tmp_path_factory, tiny_models_dir) -> Path:
    """A LoRA of random weights standing in for a distilled one (no distillation: a dry run)."""
    from diffusers import QwenImageTransformer2DModel

    transformer = QwenImageTransformer2DModel.from_pretrained(tiny_models_dir / "generator" / "transformer")
    return write_random_lora(transformer, tmp_path_factory.mktemp("lora") / "distilled")


@pytest.mark.parametrize("name", ["demo", "real"])
def test_every_option_is_off_by_default(name, tmp_path):
    from assets.preference import candidate_generation

    profile = defaults(name, tmp_path)
    assert Acceleration.of_profile(profile) == Acceleration()
    assert Acceleration().lossless
    assert candidate_generation(profile).acceleration == Acceleration()
    settings = GenerationSettings(64, 64, 4, 1.0, 2, 0, SMALL_BUDGET)
    assert settings.acceleration == Acceleration()
    assert settings.sampling == (4, 1.0)
    assert (profile.step_cache_threshold, profile.fp8_transformer, profile.distilled_lora) == (None, False, None)


def test_nothing_on_leaves_the_pipelines_outputs_byte_identical(fresh, exact):
    pipeline = fresh()
    before = run(pipeline)
    apply_acceleration(pipeline, Acceleration())
    after = run(pipeline)
    assert [image.tobytes() for image in after] == [image.tobytes() for image in before]
    assert [image.tobytes() for image in after] == [image.tobytes() for image in exact]
    assert not pipeline.transformer.is_cache_enabled
    assert not getattr(pipeline.transformer, "peft_config", None)


def test_the_step_cache_at_threshold_0_is_lossless_and_a_huge_threshold_changes_the_images(fresh, exact):
    """At threshold 0 no step reuses a residual and the images are the uncached ones; at an
    unreachable threshold every step after the first does, and they change (batches of 2 then 1:
    the cache's state does not leak from one batch into the next)."""
    never = fresh()
    apply_acceleration(never, Acceleration(step_cache_threshold=0.0))
    assert never.transformer.is_cache_enabled
    assert max_differences(run(never), exact) == [0, 0, 0]
    always = fresh()
    apply_acceleration(always, Acceleration(step_cache_threshold=1e9))
    changed = run(always)
    assert min(max_differences(changed, exact)) > 0
    assert min(psnr(a, b) for a, b in zip(changed, exact, strict=True)) < float("inf")
    assert max_differences(run(always), changed) == [0, 0, 0]  # the cache resets after each call


@pytest.mark.skipif(fp8_supported("cuda"), reason="this device runs float8: the next test covers it")
def test_fp8_where_it_cannot_run_is_refused_naming_the_requirement(fresh, exact):
    pipeline = fresh()
    with pytest.raises(AccelerationError, match=r"CUDA with compute capability ≥ 8\.9"):
        apply_acceleration(pipeline, Acceleration(fp8=True, step_cache_threshold=0.0))
    # refused before anything changed: the pipeline is as it was, and takes other options
    assert applied_acceleration(pipeline) == Acceleration()
    assert not pipeline.transformer.is_cache_enabled
    assert max_differences(run(pipeline), exact) == [0, 0, 0]


@pytest.mark.skipif(
    not fp8_supported("cuda") or importlib.util.find_spec("torchao") is None,
    reason="float8 needs CUDA with compute capability ≥ 8.9 and torchao (idglow[fp8])",
)
def test_fp8_on_cuda_changes_the_images_slightly(fresh):
    pipeline = fresh().to("cuda", torch.bfloat16)
    before = run(pipeline)
    apply_acceleration(pipeline, Acceleration(fp8=True))
    after = run(pipeline)
    assert all(np.isfinite(psnr(a, b)) for a, b in zip(after, before, strict=True))


def test_a_distilled_lora_is_loaded_changes_the_images_and_sets_the_steps(fresh, exact, random_lora):
    at_same_sampling = Acceleration(
        distilled_lora=str(random_lora), distilled_steps=STEPS, distilled_true_cfg_scale=CFG
    )
    pipeline = fresh()
    apply_acceleration(pipeline, at_same_sampling)
    assert pipeline.get_active_adapters() == ["distilled"]
    assert min(max_differences(run(pipeline, *at_same_sampling.sampling(STEPS, CFG)), exact)) > 0
    # its own steps and CFG replace the settings' (a distillation's point), through the settings
    few = Acceleration(distilled_lora=str(random_lora), distilled_steps=2)
    assert few.sampling(40, 4.0) == (2, 1.0)
    assert GenerationSettings(64, 64, 40, 4.0, 2, 0, SMALL_BUDGET, few).sampling == (2, 1.0)
    assert Acceleration(distilled_lora="x").sampling(40, 4.0) == (8, 1.0)


def test_a_distilled_lora_file_joins_the_adapter_already_active(fresh, random_lora, tmp_path, tiny_models_dir):
    pipeline = fresh()
    trained = write_random_lora(pipeline.transformer, tmp_path / "trained", seed=1)
    pipeline.load_lora_weights(trained)
    (name,) = pipeline.get_active_adapters()
    apply_acceleration(pipeline, Acceleration(distilled_lora=str(random_lora / "pytorch_lora_weights.safetensors")))
    assert pipeline.get_active_adapters() == [name, "distilled"]


def test_generation_applies_the_options_and_samples_with_the_distilled_steps(fresh, random_lora, tmp_path, monkeypatch):
    """generate_candidates applies the settings' options to its pipeline and samples with the
    distilled LoRA's steps and CFG; a pipeline carrying options refuses settings without them."""
    import idglow.generation as generation

    calls = []

    def recording(*args, **kwargs):
        calls.append(kwargs)
        return edit_candidates(*args, **kwargs)

    monkeypatch.setattr(generation, "edit_candidates", recording)
    portrait = tmp_path / "portrait.png"
    TWO_PORTRAITS[0].save(portrait)
    jobs = pd.DataFrame(
        [
            {
                "job_id": "job-1",
                "group_id": "g1",
                "task": "group_fusion",
                "prompt_kind": "static",
                "prompt": PROMPT,
                "condition_paths": [str(portrait)],
                "identities": [1],
                "n_subjects": 1,
                "photo_id": None,
            }
        ]
    )
    lossless = GenerationSettings(32, 32, 6, 4.0, 2, 0, SMALL_BUDGET)
    accelerated = replace(lossless, acceleration=Acceleration(distilled_lora=str(random_lora), distilled_steps=2))
    pipeline = fresh()
    generation.generate_candidates(pipeline, jobs, accelerated, tmp_path / "out", "r1", "base", progress=False)
    assert (calls[0]["num_inference_steps"], calls[0]["true_cfg_scale"], calls[0]["negative_prompt"]) == (2, 1.0, None)
    assert applied_acceleration(pipeline) == accelerated.acceleration
    with pytest.raises(AccelerationError, match="already carries distilled LoRA"):
        generation.generate_candidates(pipeline, jobs, lossless, tmp_path / "other", "r1", "base", progress=False)


@pytest.mark.parametrize(
    "options",
    [
        {"step_cache_threshold": 0.05},
        {"step_cache_threshold": 0.0},
        {"fp8": True},
        {"distilled_lora": "/loras/lightning"},
    ],
    ids=lambda options: next(iter(options)),
)
def test_the_settings_hash_differs_when_an_option_is_on(options):
    lossless = GenerationSettings(64, 64, 4, 1.0, 2, 0, SMALL_BUDGET)
    assert settings_hash(lossless) == settings_hash(replace(lossless, acceleration=Acceleration()))
    assert settings_hash(replace(lossless, acceleration=Acceleration(**options))) != settings_hash(lossless)


def test_the_options_are_checked_and_the_profile_field_names_match():
    with pytest.raises(ValueError, match="distilled_steps"):
        Acceleration(distilled_steps=1)
    with pytest.raises(ValueError, match="step_cache_threshold"):
        Acceleration(step_cache_threshold=-1.0)
    names = {"step_cache_threshold", "fp8_transformer", "distilled_lora", "distilled_steps", "distilled_true_cfg_scale"}
    assert names <= set(Profile.__dataclass_fields__)


def test_the_options_come_off_again_but_fp8(fresh, exact, random_lora):
    """remove_acceleration (the benchmark's rows share one pipeline) gives the lossless images back."""
    pipeline = fresh()
    apply_acceleration(pipeline, Acceleration(step_cache_threshold=1e9, distilled_lora=str(random_lora)))
    remove_acceleration(pipeline)
    assert applied_acceleration(pipeline) == Acceleration()
    assert max_differences(run(pipeline), exact) == [0, 0, 0]


def test_a_user_turns_the_options_on_in_an_overrides_file(tmp_path):
    from idglow.profiles import apply_overrides

    overrides = tmp_path / "fast.toml"
    overrides.write_text(
        'step_cache_threshold = 0.05\nfp8_transformer = true\ndistilled_lora = "loras/lightning"\n'
        "distilled_steps = 4\ndistilled_true_cfg_scale = 1\n"
    )
    acceleration = Acceleration.of_profile(apply_overrides(defaults("real", tmp_path), overrides))
    assert acceleration == Acceleration(0.05, True, str(Path("loras/lightning").absolute()), 4, 1.0)
    assert acceleration.sampling(40, 4.0) == (4, 1.0)
