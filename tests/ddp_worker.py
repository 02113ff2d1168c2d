"""Run by tests/test_training_distributed.py: a few SFT optimizer steps on two fixed samples,
either as two torchrun ranks (one sample each) or as one process (both samples in one batch),
each step as training.loop.train takes it (one micro-batch: loss, backward, clipping, AdamW).
Writes the LoRA weights (rank 0) to OUT."""

import argparse
import os
from pathlib import Path

import torch
from peft.utils import get_peft_model_state_dict
from safetensors.torch import save_file

from training.data import batches
from training.distributed import setup_distributed, wrap_for_data_parallel
from training.encodings import EncodingCache
from training.flow import sample_generators
from training.loop import load_generator, prepare_trainable
from training.sft import SFTConfig, SFTObjective

parser = argparse.ArgumentParser()
parser.add_argument("--generator", required=True)
parser.add_argument("--shards", required=True)
parser.add_argument("--out", required=True)
parser.add_argument("--steps", type=int, default=3)
args = parser.parse_args()
torch.set_num_threads(1)

dist = setup_distributed()
config = SFTConfig(
    generator_dir=args.generator,
    shards=args.shards,
    output_dir="",
    modulation="none",
    learning_rate=1e-3,
    lora_rank=4,
    device=dist.device,
)
stream = batches(Path(args.shards), 2, seed=0)  # two samples of one shard: the same subject count
samples = next(stream)
for sample in samples:  # one prompt length, so the concatenated batch needs no padding mask
    sample.meta["prompt"] = "Two friends smiling together in a sunny park."
mine = samples if dist.world == 1 else [samples[dist.rank]]

torch.manual_seed(0)
pipeline = load_generator(config)
objective = SFTObjective(config)
objective.prepare(pipeline)
_, parameters, optimizer = prepare_trainable(pipeline.transformer, config)
cache = EncodingCache(pipeline, config)
model = wrap_for_data_parallel(pipeline.transformer, dist)
for step in range(args.steps):
    generators = sample_generators(config.seed, step, [s.key for s in mine])
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=pipeline.transformer.device.type == "cuda"):
        loss, _ = objective.loss(model, cache, mine, generators)
    loss.backward()  # under DDP: the all-reduce of the gradients
    torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
    optimizer.step()
if dist.is_main:
    weights = get_peft_model_state_dict(pipeline.transformer)
    save_file({k: v.contiguous() for k, v in weights.items()}, args.out)
print(f"rank {dist.rank} of {dist.world} done, pid {os.getpid()}")
