"""Selective gradient checkpointing and its GPU memory planner: ``checkpoint_blocks`` makes the
first N transformer blocks recompute their activations in backward, and the planner finds the
fewest recomputed blocks whose training step fits a memory budget. Used by the training loop
(``training.loop``) when ``gradient_checkpoint_blocks`` is ``"auto"`` and by the GPU benchmark
(benchmarks/gpu_train_step.py).

Two measured steps give the plan: one with every block recomputed, and one with a tenth of the
blocks keeping their activations; their difference is the memory a kept block costs. A plan the
estimate got wrong (the step runs out of memory) recomputes a tenth more until the step fits.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch


def checkpoint_blocks(transformer, count: int) -> int:
    """Selective gradient checkpointing: the first ``count`` blocks (all for -1) recompute their
    activations in the backward pass, the rest keep them. Calling it again changes the count
    (the memory planner does). The blocks keep their names, so LoRA keys do not change."""
    blocks = list(transformer.transformer_blocks)
    chosen = len(blocks) if count < 0 else min(count, len(blocks))
    for index, block in enumerate(blocks):
        if not hasattr(block, "recompute_in_backward"):
            original = block.forward

            def forward(*args, _block=block, _original=original, **kwargs):
                if _block.recompute_in_backward and torch.is_grad_enabled():
                    return torch.utils.checkpoint.checkpoint(_original, *args, use_reentrant=False, **kwargs)
                return _original(*args, **kwargs)

            block.forward = forward
        block.recompute_in_backward = index < chosen
    return chosen


class MemoryPlanError(RuntimeError):
    """Not even a step with every block recomputed fits on the device."""


def plan_recomputed_blocks(layers: int, peak: Callable[[int], float | None], budget_bytes: float) -> tuple[int, dict]:
    """The plan from measurements: ``peak(count)`` is a step's peak bytes with ``count`` blocks
    recomputed, or None when it ran out of memory. Returns the count and what it was based on."""
    probe = max(1, layers // 10)
    every = peak(layers)
    if every is None:
        raise MemoryPlanError(
            f"out of memory even with all {layers} blocks recomputed in backward: lower the "
            "batch size, the resolution or the LoRA rank"
        )
    fewer = peak(layers - probe)
    per_block = (fewer - every) / probe if fewer is not None else budget_bytes
    count = layers - int(max(budget_bytes - every, 0) // max(per_block, 1))
    count = min(max(count, 0), layers)
    while count < layers and peak(count) is None:  # the estimate was short: recompute more
        count = min(layers, count + probe)
    return count, {
        "peak_all_checkpointed_gib": round(every / 2**30, 1),
        "gib_per_kept_block": round(per_block / 2**30, 2),
    }


def plan_checkpointing(
    run: Callable[[], None], apply: Callable[[int], int], layers: int, budget_bytes: float, extra_bytes: float = 0.0
) -> tuple[int, dict]:
    """Plan on the current CUDA device: ``run`` is one training step (or its forward and
    backward), ``apply(count)`` sets how many blocks recompute (``checkpoint_blocks``).
    ``extra_bytes`` is memory the measured step does not hold yet (the optimizer state before
    the first update). Leaves the planned count applied."""

    def peak(count: int) -> float | None:
        apply(count)
        torch.cuda.reset_peak_memory_stats()
        try:
            run()
            torch.cuda.synchronize()
        except torch.OutOfMemoryError:
            return None
        finally:
            torch.cuda.empty_cache()
        return float(torch.cuda.max_memory_allocated()) + extra_bytes

    count, info = plan_recomputed_blocks(layers, peak, budget_bytes)
    apply(count)
    return count, info


def forward_backward(optimizer, loss_fn: Callable[[], tuple[torch.Tensor, dict]]) -> None:
    """One micro-batch's forward and backward under bf16 autocast, without an update: the step
    the planner measures. The gradients are cleared before and after."""
    optimizer.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss, _ = loss_fn()
    loss.backward()
    optimizer.zero_grad(set_to_none=True)


def plan_recomputation(transformer, parameters, optimizer, config, loss_fn) -> tuple[int, dict]:
    """The ``auto`` count of recomputed blocks on CUDA: the planner over the forward and backward
    of ``loss_fn`` (one micro-batch, no update, gradients cleared after), the budget
    ``config.memory_fraction`` of the card. AdamW's two moments, allocated at the first update,
    are counted on top when they do not exist yet. Leaves the planned count applied."""
    moments = 0.0 if optimizer.state else 2.0 * sum(p.numel() * p.element_size() for p in parameters)
    budget = torch.cuda.get_device_properties(transformer.device).total_memory * config.memory_fraction
    return plan_checkpointing(
        partial(forward_backward, optimizer, loss_fn),
        partial(checkpoint_blocks, transformer),
        len(transformer.transformer_blocks),
        budget,
        moments,
    )
