"""The GPU memory planner for selective gradient checkpointing: the fewest recomputed transformer
blocks whose training step fits a memory budget. Used by the training loop when
``gradient_checkpoint_blocks`` is ``"auto"`` and by the GPU benchmark (benchmarks/gpu_train_step.py).

Two measured steps give the plan: one with every block recomputed, and one with a tenth of the
blocks keeping their activations; their difference is the memory a kept block costs. A plan the
estimate got wrong (the step runs out of memory) recomputes a tenth more until the step fits.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


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
    backward), ``apply(count)`` sets how many blocks recompute (training.sft.checkpoint_blocks).
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
