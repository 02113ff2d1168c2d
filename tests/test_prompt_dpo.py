"""Prompt-model alignment (section 3.2): the DPO loss on sequence log-likelihoods, and a short
run on the tiny VLM that prefers the descriptive prompts afterwards and loads like the base."""

import json
import math
import shutil

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from transformers import AutoModelForImageTextToText, AutoProcessor

from idglow.data.groups import make_training_groups, split_identities
from idglow.prompt_synthesis import build_prompt_preferences
from idglow.storage import write_parquet_atomic
from training.prompt_dpo import (
    PromptDPOConfig,
    load_pairs,
    load_policy,
    model_placement,
    response_logprob,
    sequence_dpo_loss,
    stored_dtype,
    train,
)


def test_sequence_dpo_loss_by_hand():
    # margin = (-10 - -11) - (-12 - -11) = 2; beta 0.5 -> -log sigmoid(1) = log(1 + e^-1)
    loss = sequence_dpo_loss(
        torch.tensor([-10.0]), torch.tensor([-12.0]), torch.tensor([-11.0]), torch.tensor([-11.0]), 0.5
    )
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-1)), abs=1e-6)
    assert sequence_dpo_loss(*(torch.zeros(1),) * 4, beta=0.5).item() == pytest.approx(math.log(2), abs=1e-6)


def _placement_config(device, model_dir="unused", output_dir="unused") -> PromptDPOConfig:
    return PromptDPOConfig(
        model_dir=str(model_dir),
        preferences="unused",
        catalog="unused",
        source_root="unused",
        output_dir=str(output_dir),
        device=device,
    )


def test_the_prompt_model_trains_in_bf16_on_cuda_and_fp32_on_the_cpu():
    assert model_placement(_placement_config("cuda")) == (torch.device("cuda"), torch.bfloat16)
    assert model_placement(_placement_config("cuda:1")) == (torch.device("cuda:1"), torch.bfloat16)
    assert model_placement(_placement_config("cpu")) == (torch.device("cpu"), torch.float32)
    device, dtype = model_placement(_placement_config(None))
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert dtype == (torch.bfloat16 if device.type == "cuda" else torch.float32)


def test_the_policy_loads_where_the_placement_says(tiny_models_dir):
    model = load_policy(_placement_config("cpu", tiny_models_dir / "prompt_model"))
    assert model.device.type == "cpu"
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.dtype == torch.float32 for p in model.parameters())
    assert all("lora_" in name for name, p in model.named_parameters() if p.requires_grad)


def test_alignment_prefers_descriptive_prompts_and_loads_like_the_base(
    tiny_models_dir, demo_dataset, demo_ingest, tmp_path
):
    catalog = demo_ingest.catalog
    groups = make_training_groups(catalog, split_identities(catalog, 10, 0), 2, 0, seed=0)
    write_parquet_atomic(tmp_path / "preferences.parquet", build_prompt_preferences(groups, catalog))
    write_parquet_atomic(tmp_path / "catalog.parquet", catalog)
    config = PromptDPOConfig(
        model_dir=str(tiny_models_dir / "prompt_model"),
        preferences=str(tmp_path / "preferences.parquet"),
        catalog=str(tmp_path / "catalog.parquet"),
        source_root=str(demo_dataset.root),
        output_dir=str(tmp_path / "aligned"),
        steps=6,
        learning_rate=2e-3,
    )
    folder = train(config)
    pair = load_pairs(config)[0]

    def preference(model_dir) -> float:
        model = AutoModelForImageTextToText.from_pretrained(model_dir, local_files_only=True).eval()
        processor = AutoProcessor.from_pretrained(model_dir, local_files_only=True)
        with torch.no_grad():
            args = (model, processor, pair["portraits"], pair["instruction"])
            return (response_logprob(*args, pair["chosen"]) - response_logprob(*args, pair["rejected"])).item()

    assert preference(folder) > preference(config.model_dir)
    assert (folder / "manifest.json").exists() and (tmp_path / "aligned" / "log.jsonl").read_text().count("\n") == 6
    assert train(config) == folder  # done: not trained again
    assert isinstance(pair["portraits"][0], Image.Image)


def test_the_aligned_model_is_saved_in_the_dtype_its_base_was_released_in(
    tiny_models_dir, demo_dataset, demo_ingest, tmp_path
):
    """A bf16 base (as Qwen2.5-VL is released) trains in fp32 on the CPU, but its merged copy is
    written in bf16, half the disk of an fp32 one."""
    base = tmp_path / "bf16_base"
    shutil.copytree(tiny_models_dir / "prompt_model", base)
    config_file = base / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "dtype": "bfloat16"}))
    assert stored_dtype(str(base)) == torch.bfloat16
    assert stored_dtype(str(tiny_models_dir / "prompt_model")) == torch.float32

    catalog = demo_ingest.catalog
    groups = make_training_groups(catalog, split_identities(catalog, 10, 0), 1, 0, seed=0)
    write_parquet_atomic(tmp_path / "preferences.parquet", build_prompt_preferences(groups, catalog))
    write_parquet_atomic(tmp_path / "catalog.parquet", catalog)
    config = PromptDPOConfig(
        model_dir=str(base),
        preferences=str(tmp_path / "preferences.parquet"),
        catalog=str(tmp_path / "catalog.parquet"),
        source_root=str(demo_dataset.root),
        output_dir=str(tmp_path / "aligned"),
        steps=1,
    )
    folder = train(config)
    dtypes = set()
    for weights in folder.glob("*.safetensors"):
        with safe_open(weights, "pt") as tensors:
            dtypes |= {tensors.get_slice(name).get_dtype() for name in tensors.keys()}
    assert dtypes == {"BF16"}
