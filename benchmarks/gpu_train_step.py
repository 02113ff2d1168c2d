"""GPU training-step benchmark at equal work: the project's SFT step on the real
Qwen-Image-Edit-2511 transformer configuration (random weights, LoRA, bf16) against the plain
diffusers-style baseline (../shared/bench/baseline_train_step.py), run on the same machine in
the same call, each baseline case in its own process with the same environment.

    python benchmarks/train_step.py --gpu [--out results.jsonl]          # on a CUDA machine
    python benchmarks/train_step.py --gpu --tiny                         # a dry run on the CPU

Cases (same batch, resolution, tokens, LoRA, warm-up and timed steps on both sides, and the same
``PYTORCH_CUDA_ALLOC_CONF``, printed):

(a) every block recomputed in backward, against the baseline's default (which calls diffusers'
    ``enable_gradient_checkpointing``: every block recomputed), at the large resolution;
(b) no block recomputed, against the baseline's ``--no-ckpt``, at the small resolution (at 1024²
    no checkpointing needs about 165 GiB: it fits neither side on a 141 GiB H200);
(c) the memory planner's choice (training.memory.plan_recomputation, what ``gradient_checkpoint_blocks:
    auto`` runs) at the large resolution, its peak memory beside the baseline default's.

Then the ID path (phase ``id``): the training ID term (training.identity.modulated_identity_term)
with every block recomputed, as in (a): the VAE decodes the clean estimate with gradient, the face
pack's insightface detector really runs on every decoded image (face_torch.detect_landmarks),
alignment and the pack's recogniser converted with onnx2torch (as IdentityLoss builds it), and
the Hungarian loss; its added seconds, its share of the step and its parts. And a FLOP check
(phase ``flops``): one step of (a) under torch.utils.flop_counter.FlopCounterMode against the
per-stream count (benchmarks/train_flops.py). Optional phases: ``dpo`` (planned) and ``compiled``
(the repeated block compiled, every block recomputed: equal work with the baseline's default).

FLOPs are counted per stream (train_flops.py): MFU is model FLOPs (forward and backward, no
recomputation) per second over 989 TFLOP/s (dense bf16, H100/H200 SXM datasheet) and over the
bf16 matrix-product rate measured on the card in the same call; HFU adds the recomputed forwards
and the fused attention kernels' recomputation of QK^T.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
from train_flops import StepFlops, StepTokens, TransformerShape, previous_count, step_flops  # beside this script

from idglow.models.tiny_generator import QWEN_IMAGE_SCHEDULER_CONFIG
from training.dpo import UNUSED_SFT_FIELDS, DPOConfig, dpo_loss
from training.encodings import EncodedBatch
from training.loop import prepare_trainable
from training.memory import checkpoint_blocks, plan_recomputation
from training.sft import SFTConfig, sft_loss

PEAK_FLOPS = 989e12  # dense bf16, H100/H200 SXM datasheet
BASELINE_WARMUP = 2  # the baseline's fixed warm-up steps; ours takes as many
DEFAULT_ALLOC_CONF = "expandable_segments:True"
# What the step's code does differently from the baseline at equal work (printed under the table).
CODE_DIFFERENCES = (
    "prompt mask: the baseline passes an all-ones mask, which keeps SDPA off the flash kernel; ours passes none "
    "when no prompt is padded",
    "precision: the baseline's LoRA weights and AdamW state are bf16 (peft casts them to the base layer's dtype), "
    "ours fp32 under bf16 autocast; both fused AdamW",
    "ours clips the gradient norm and logs a few scalars per step (.item()); the baseline does neither",
)


# ------------------------------------------------------------------------ device


def on_cuda() -> bool:
    return torch.cuda.is_available()


def synchronize() -> None:
    if on_cuda():
        torch.cuda.synchronize()


def reset_peak() -> None:
    if on_cuda():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if on_cuda() else float("nan")


def device_and_dtype() -> dict:
    """The hub's choice: CUDA in bf16 when there is one, else the CPU in fp32."""
    from idglow.models.hub import compute_dtype, resolve_device

    device = resolve_device(None)
    return {"device": device, "dtype": compute_dtype(device)}


def matmul_rate(size: int = 8192, repeats: int = 10) -> float:
    """bf16 FLOP/s of a ``size``³ matrix product on random data (CUDA events, after 3 warm-ups)."""
    a, b = (torch.randn(size, size, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        a @ b
    end.record()
    torch.cuda.synchronize()
    del a, b
    torch.cuda.empty_cache()
    return 2 * size**3 * repeats / (start.elapsed_time(end) / 1e3)


def random_batch(resolution: int, references: int, text: int, joint_dim: int, seed: int) -> EncodedBatch:
    """What the encoding cache hands the step for one sample, with random values, no prompt mask."""
    side = resolution // 16
    tokens = side * side
    generator = torch.Generator().manual_seed(seed)
    x0 = torch.randn(1, tokens, 64, generator=generator)
    refs = torch.randn(1, tokens * references, 64, generator=generator)
    prompt = torch.randn(1, text, joint_dim, generator=generator)
    to = device_and_dtype()
    return EncodedBatch(x0.to(**to), refs.to(**to), prompt.to(**to), None, [(1, side, side)] * (1 + references))


# ----------------------------------------------------------------------- ID path


class PartTimer:
    """Seconds per named part, synchronised around each (only while ``on``)."""

    def __init__(self):
        self.on = False
        self.seconds: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def part(self, name: str):
        if not self.on:
            yield
            return
        synchronize()
        start = time.perf_counter()
        yield
        synchronize()
        self.seconds[name].append(time.perf_counter() - start)

    def wrap(self, name: str, function: Callable) -> Callable:
        def timed(*args, **kwargs):
            with self.part(name):
                return function(*args, **kwargs)

        return timed


def build_face_pack(folder: Path) -> Path:
    """The rehearsal's buffalo_l (idglow.models.rehearsal_faces): the released five files'
    signatures, random weights; the recogniser a full iresnet50."""
    from idglow.models.rehearsal_faces import write_rehearsal_face_pack

    return write_rehearsal_face_pack(folder, seed=40)


class DetectedFacesIdentity:
    """The training ID term on the real path, ``detect`` being the pack's insightface detector on
    each decoded image (training.identity.IdentityLoss's pieces: load_face_analysis,
    load_face_encoder's recogniser through onnx2torch, face_torch.detect_landmarks).

    A random-weight detector on a random-weight decode either finds nothing (and alignment and the
    recogniser would not run) or, at insightface's threshold, thousands of boxes whose NMS costs a
    second a step; a trained one finds the image's faces. So, with ``calibrate``, the threshold is
    raised once, on the first decoded image, to pass at most ``candidates_per_face`` boxes per
    expected face to decoding and NMS (a pack that passes fewer keeps its threshold), and the
    faces the detector keeps are topped up (or cut) to the expected
    count with fixed landmarks: the detector's network and post-processing really run on every
    image, and alignment and the recogniser embed as many faces as a trained generator draws."""

    def __init__(
        self,
        resolution: int,
        tiny: bool,
        pack: Path,
        faces: int = 2,
        calibrate: bool = True,
        candidates_per_face: int = 16,
    ):
        from insightface.utils.face_align import arcface_dst

        from idglow.models.hub import load_face_analysis, load_face_encoder

        to = device_and_dtype()
        self.app = load_face_analysis(pack)
        self.providers = self.app.det_model.session.get_providers()
        encoder = load_face_encoder(pack, to["device"])
        with torch.no_grad():
            dim = encoder(torch.zeros(1, 3, 112, 112, device=to["device"])).shape[-1]
        vae = AutoencoderKLQwenImage(base_dim=8) if tiny else AutoencoderKLQwenImage()  # defaults: Qwen-Image's VAE
        self.vae = vae.to(**to).eval().requires_grad_(False)
        self.timer = PartTimer()
        self.vae.decode = self.timer.wrap("decode (forward)", self.vae.decode)
        self.encoder = self.timer.wrap("recogniser (forward)", encoder)
        scale = 0.3 * resolution / 112  # the 112 px ArcFace crop covers 30% of the image side
        self.fixed = np.stack(
            [
                (arcface_dst - 56) * scale + np.array([resolution * (i + 0.5) / faces, resolution * 0.4])
                for i in range(faces)
            ]
        ).astype(np.float32)
        self.sources = torch.nn.functional.normalize(
            torch.randn(faces, dim, generator=torch.Generator().manual_seed(7)), dim=-1
        ).to(to["device"])
        self.resolution, self.faces = resolution, faces
        self.calibrate, self.candidates = calibrate, candidates_per_face * faces
        self.found: list[int] = []
        self.threshold: float | None = None
        self.at_pack_threshold: int | None = None

    def _calibrate(self, image: torch.Tensor) -> None:
        from idglow.models.face_torch import to_bgr_uint8

        det = self.app.det_model
        candidates, _ = det._detect_candidates(to_bgr_uint8(image), det.input_size, 0.0)  # every anchor's box
        scores = np.sort(candidates[:, 4])[::-1]
        self.at_pack_threshold = int((scores >= det.det_thresh).sum())  # boxes the pack's own threshold passes
        # raised only: a pack whose detector passes few boxes keeps its own threshold
        self.threshold = max(float(det.det_thresh), float(scores[min(self.candidates, len(scores)) - 1]))
        det.det_thresh = self.threshold

    def detect(self, image: torch.Tensor) -> np.ndarray:
        from idglow.models.face_torch import detect_landmarks

        if self.calibrate and self.threshold is None:
            self._calibrate(image)
        with self.timer.part("detect (copy to host, detector, NMS)"):
            found = detect_landmarks(self.app, image)
        self.found.append(len(found))
        kept = np.asarray(found[: self.faces], dtype=np.float32).reshape(-1, 5, 2)
        return np.concatenate([kept, self.fixed[len(kept) :]]) if len(kept) < self.faces else kept

    def __call__(self, x_t, velocity, sigma, lambdas, samples):
        from training.identity import modulated_identity_term

        return modulated_identity_term(
            x_t,
            velocity,
            sigma,
            lambdas,
            self.resolution,
            self.resolution,
            self.vae,
            [self.sources] * x_t.shape[0],
            self.detect,
            self.encoder,
        )


# ----------------------------------------------------------------------- harness


def optimizer_step(loss_fn: Callable[[], tuple[torch.Tensor, dict]], parameters, optimizer, config) -> None:
    """One optimizer step as training.loop.train takes it: ``gradient_accumulation`` micro-batches
    (``loss_fn``, bf16 autocast on CUDA) and their backward, clipping, the AdamW update.

    A minimal copy of the loop's inline update, kept here on purpose: the loop itself needs a
    generator pipeline, shards and the encoding cache, and writes its log and checkpoints, which
    this benchmark (a bare transformer on one random batch, as the baseline times it) leaves out.
    Keep it in step with training.loop.train."""
    on_gpu = parameters[0].device.type == "cuda"
    optimizer.zero_grad(set_to_none=True)
    for _ in range(config.gradient_accumulation):
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_gpu):
            loss, _ = loss_fn()
        (loss / config.gradient_accumulation).backward()
    torch.nn.utils.clip_grad_norm_(parameters, config.max_grad_norm)
    optimizer.step()


def timed_steps(run: Callable[[], None], steps: int, warmup: int = BASELINE_WARMUP) -> tuple[float, float]:
    """Seconds per step and peak GiB of ``steps`` steps after ``warmup``, as the baseline times them."""
    for _ in range(warmup):
        run()
    synchronize()
    reset_peak()
    start = time.perf_counter()
    for _ in range(steps):
        run()
    synchronize()
    return (time.perf_counter() - start) / steps, peak_gib()


class Harness:
    """One transformer (built once) with the training code's LoRA set-up, re-checkpointed per case."""

    def __init__(self, args):
        self.args = args
        torch.manual_seed(0)
        to = device_and_dtype()
        torch.set_default_dtype(to["dtype"])
        with torch.device(to["device"]):
            self.transformer = QwenImageTransformer2DModel(**transformer_shape_config(args))
        torch.set_default_dtype(torch.float32)
        self.transformer.requires_grad_(False)
        self.n_params = sum(p.numel() for p in self.transformer.parameters())  # before the LoRA, as the baseline counts
        self.shape = TransformerShape.of(self.transformer.config)
        self.config = SFTConfig(
            generator_dir="",
            shards="",
            output_dir="",
            lora_rank=args.lora_rank,
            modulation="none",
            gradient_checkpoint_blocks=-1,
        )
        _, self.parameters, self.optimizer = prepare_trainable(self.transformer, self.config)
        self.scheduler = FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG)
        self.generator = torch.Generator().manual_seed(0)
        self.layers = len(self.transformer.transformer_blocks)

    def recompute(self, count: int) -> int:
        return checkpoint_blocks(self.transformer, count)

    def sft_loss_fn(self, batch: EncodedBatch, config: SFTConfig, identity=None):
        return lambda b=batch: sft_loss(
            self.transformer, self.scheduler, b, ["direct_fusion"], config, self.generator, identity
        )

    def sft_runner(self, batch: EncodedBatch, config: SFTConfig, identity=None) -> Callable[[], None]:
        loss_fn = self.sft_loss_fn(batch, config, identity)
        return lambda: optimizer_step(loss_fn, self.parameters, self.optimizer, config)

    def dpo_runner(self, chosen: EncodedBatch, rejected_x0: torch.Tensor, config: DPOConfig) -> Callable[[], None]:
        def loss_fn():
            return dpo_loss(self.transformer, self.scheduler, chosen, rejected_x0, config, self.generator)

        return lambda: optimizer_step(loss_fn, self.parameters, self.optimizer, config)

    def plan(self, loss_fn) -> tuple[int, dict]:
        """The training loop's own planner (gradient_checkpoint_blocks: auto); on the CPU auto recomputes none."""
        if not on_cuda():
            return self.recompute(0), {"plan": "cpu: auto recomputes none"}
        return plan_recomputation(self.transformer, self.parameters, self.optimizer, self.config, loss_fn)


def transformer_shape_config(args) -> dict:
    """The baseline's model: 2511's transformer, or its --tiny toy shape."""
    shape = {"num_layers": args.layers, "zero_cond_t": True}
    if args.tiny:
        shape.update(attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, axes_dims_rope=(4, 6, 6))
    return shape


def flop_fields(flops: StepFlops, seconds: float, rate: float | None) -> dict:
    fields = {
        "model_tflop": round(flops.model / 1e12, 3),
        "hardware_tflop": round(flops.hardware / 1e12, 3),
        "mfu_vs_989": round(flops.model / seconds / PEAK_FLOPS, 3),
        "hfu_vs_989": round(flops.hardware / seconds / PEAK_FLOPS, 3),
    }
    if rate:
        fields["mfu_vs_measured"] = round(flops.model / seconds / rate, 3)
    return fields


def sft_flops(shape: TransformerShape, tokens: StepTokens, rank: int, recomputed: int) -> StepFlops:
    return step_flops(shape, tokens, rank, recomputed_blocks=recomputed)


def dpo_flops(shape: TransformerShape, tokens: StepTokens, rank: int, recomputed: int) -> StepFlops:
    """Policy on chosen and rejected as one batch of 2 with gradient, the reference (adapters off) without."""
    pairs = StepTokens(tokens.target, tokens.references, tokens.text, 2 * tokens.batch)
    policy = step_flops(shape, pairs, rank, recomputed_blocks=recomputed)
    return policy + step_flops(shape, pairs, rank, backward=False, lora=False)


# ----------------------------------------------------------------------- baseline


def run_baseline(path: Path, resolution: int, args, no_ckpt: bool, env: dict) -> dict:
    """One baseline case in its own process with ``env`` (the allocator settings ours runs with)."""
    command = [sys.executable, str(path), "--res", str(resolution), "--layers", str(args.layers)]
    command += ["--steps", str(args.steps), "--refs", str(args.refs), "--text", str(args.text)]
    command += (["--tiny"] if args.tiny else []) + (["--no-ckpt"] if no_ckpt else [])
    done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    row = {"who": "baseline", "res": resolution, "command": " ".join(command[1:])}
    if done.returncode != 0:
        oom = "OutOfMemoryError" in done.stderr or "out of memory" in done.stderr
        return {**row, "error": "out of memory" if oom else done.stderr[-2000:]}
    printed = json.loads(done.stdout.strip().splitlines()[-1])
    return {
        **row,
        "recomputed": args.layers if printed["grad_ckpt"] else 0,
        "s_per_step": printed["s_per_step"],
        "peak_gib": printed["peak_gib"],
        "params_b": printed["params_b"],
        "printed_mfu_vs_989": printed["mfu_vs_989"],  # its own count (every parameter on every token)
    }


# --------------------------------------------------------------------------- run


def main(args) -> None:
    if not on_cuda() and not args.tiny:
        raise SystemExit("--gpu needs a CUDA device (or --tiny for a dry run of the script on CPU)")
    alloc_conf = os.environ.get("PYTORCH_CUDA_ALLOC_CONF", "")
    env = dict(os.environ)  # the baseline's processes get exactly this process's environment
    large, small = args.resolutions
    phases = set(args.phases.split(","))
    start = time.monotonic()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []

    def record(row: dict) -> dict:
        row = {"elapsed_s": round(time.monotonic() - start, 1), **row}
        rows.append(row)
        with open(out, "a") as handle:
            handle.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        return row

    def time_left() -> bool:
        return time.monotonic() - start < args.budget_s

    # The baselines first, before this process touches the GPU: two 20 B models do not share a card.
    baseline = Path(args.baseline)
    base: dict[str, dict] = {}
    if args.skip_baseline:
        pass
    elif not baseline.exists():
        record({"who": "baseline", "error": f"baseline script not found: {baseline}"})
    else:
        base["a"] = record({"case": "a", **run_baseline(baseline, large, args, False, env)})
        base["b"] = record({"case": "b", **run_baseline(baseline, small, args, True, env)})
        base["c"] = base["a"]  # the baseline has only all or none: its default is what (c) compares with

    device = torch.cuda.get_device_name() if on_cuda() else "cpu"
    rate = matmul_rate() if on_cuda() else None
    harness = Harness(args)
    shape, rank = harness.shape, args.lora_rank
    joint = harness.transformer.config.joint_attention_dim
    tokens = {res: StepTokens.square(res, args.refs, args.text) for res in (large, small)}
    batch = {res: random_batch(res, args.refs, args.text, joint, seed=res) for res in (large, small)}
    sft = harness.config
    ours: dict[str, dict] = {}

    def measure(case: str, name: str, run: Callable[[], None], res: int, recomputed: int, flops=sft_flops, **extra):
        row = {"case": case, "who": "idglow", "run": name, "res": res, "recomputed": recomputed, **extra}
        try:
            seconds, peak = timed_steps(run, args.steps)
        except torch.OutOfMemoryError:
            harness.optimizer.zero_grad(set_to_none=True)
            reset_peak()
            return record({**row, "error": "out of memory"})
        counted = flops(shape, tokens[res], rank, recomputed)
        row.update(s_per_step=round(seconds, 4), peak_gib=round(peak, 2), **flop_fields(counted, seconds, rate))
        return record(row)

    if "a" in phases:
        count = harness.recompute(-1)
        ours["a"] = measure("a", f"sft {large}, all recomputed", harness.sft_runner(batch[large], sft), large, count)
    if "b" in phases and time_left():
        count = harness.recompute(0)
        ours["b"] = measure("b", f"sft {small}, none recomputed", harness.sft_runner(batch[small], sft), small, count)
    if "c" in phases and time_left():
        count, info = harness.plan(harness.sft_loss_fn(batch[large], sft))
        ours["c"] = measure(
            "c", f"sft {large}, planned", harness.sft_runner(batch[large], sft), large, count, plan=info
        )
    identity_summary = None
    if "id" in phases and time_left():
        identity_summary = measure_identity(
            args, harness, batch[large], tokens[large], large, measure, record, ours.get("a")
        )
    flop_check = None
    if "flops" in phases and time_left():
        flop_check = record(check_flops(harness, batch[large], tokens[large], large, args))
    if "dpo" in phases and time_left():
        rejected = random_batch(large, args.refs, args.text, joint, seed=2).x0
        dpo = DPOConfig(**{name: value for name, value in sft.__dict__.items() if name not in UNUSED_SFT_FIELDS})
        count, info = harness.plan(
            lambda: dpo_loss(harness.transformer, harness.scheduler, batch[large], rejected, dpo, harness.generator)
        )
        ours["dpo"] = measure(
            "dpo",
            f"dpo {large}, planned",
            harness.dpo_runner(batch[large], rejected, dpo),
            large,
            count,
            flops=dpo_flops,
            plan=info,
        )
    if "compiled" in phases and time_left():
        count = harness.recompute(-1)
        harness.transformer.compile_repeated_blocks(dynamic=False)
        try:
            ours["compiled"] = measure(
                "compiled",
                f"sft {large}, all recomputed, compiled",
                harness.sft_runner(batch[large], sft),
                large,
                count,
            )
        except Exception as error:  # a compiler failure must not lose the summary of what was measured
            record({"case": "compiled", "who": "idglow", "error": repr(error)[-2000:]})
    summarise(args, device, alloc_conf, rate, harness, tokens, large, small, ours, base, identity_summary, flop_check)


def measure_identity(
    args, harness: Harness, batch: EncodedBatch, tokens: StepTokens, res: int, measure, record, plain: dict | None
):
    """SFT with a constant ID loss, every block recomputed (the work of case a plus the ID path)."""
    if args.face_pack:
        pack, scratch = Path(args.face_pack), None
    else:
        scratch = tempfile.TemporaryDirectory(prefix="idglow-face-pack-")
        pack = build_face_pack(Path(scratch.name) / "buffalo_l")
    identity = DetectedFacesIdentity(res, args.tiny, pack, calibrate=not args.no_calibrate)
    constant = SFTConfig(**{**harness.config.__dict__, "modulation": "constant"})
    count = harness.recompute(-1)
    run = harness.sft_runner(batch, constant, identity)
    row = measure("id", f"sft {res}, constant ID loss, all recomputed", run, res, count)
    identity.timer.on = True  # two more steps with each part synchronised and timed
    for _ in range(2):
        run()
    identity.timer.on = False
    parts = {name: round(float(np.median(values)), 4) for name, values in identity.timer.seconds.items()}
    # the ID path's own FLOPs: a step's count less the transformer's (VAE decode and recogniser, forward and backward)
    total = counted_flops(forward_backward(harness, harness.sft_loss_fn(batch, constant, identity)))
    transformer = step_flops(harness.shape, tokens, args.lora_rank, recomputed_blocks=count, fused_attention=on_cuda())
    summary = {
        "case": "id-parts",
        "who": "idglow",
        "res": res,
        "face_pack": str(args.face_pack or "rehearsal buffalo_l (random weights, TinySCRFD detector)"),
        "detector_providers": identity.providers,
        "detector_threshold": identity.threshold,
        "boxes_at_pack_threshold_first_image": identity.at_pack_threshold,
        "faces_found_per_image": sorted(set(identity.found)),
        "faces_embedded_per_image": identity.faces,
        "parts_s": parts,
        "id_path_hardware_flop": total - transformer.hardware,
    }
    if plain and "s_per_step" in plain and "s_per_step" in row:
        added = row["s_per_step"] - plain["s_per_step"]
        summary.update(
            added_s=round(added, 4),
            share_of_step=round(added / row["s_per_step"], 3),
            backward_and_rest_s=round(added - sum(parts.values()), 4),
        )
    del identity
    if scratch is not None:
        scratch.cleanup()
    return record(summary)


def counted_flops(run: Callable[[], None]) -> int:
    """FLOPs FlopCounterMode counts over ``run`` (a forward and backward). On CUDA SDPA picks its
    kernel as in training (the fused ones recompute QK^T in backward, and FlopCounterMode counts
    that); on the CPU its fused kernel has no FLOP formula, so the math kernel runs there (it keeps
    the scores: no recomputation)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    kernels = contextlib.nullcontext() if on_cuda() else sdpa_kernel([SDPBackend.MATH])
    with kernels, FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def forward_backward(harness: Harness, loss_fn) -> Callable[[], None]:
    """One forward and backward as the training step runs them (bf16 autocast on CUDA), no update."""

    def run() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=on_cuda()):
            loss, _ = loss_fn()
        loss.backward()
        harness.optimizer.zero_grad(set_to_none=True)

    return run


def check_flops(harness: Harness, batch: EncodedBatch, tokens: StepTokens, res: int, args) -> dict:
    """One forward and backward of case (a) under FlopCounterMode against the per-stream count."""
    count = harness.recompute(-1)
    counted = counted_flops(forward_backward(harness, harness.sft_loss_fn(batch, harness.config)))
    expected = step_flops(harness.shape, tokens, args.lora_rank, recomputed_blocks=count, fused_attention=on_cuda())
    return {
        "case": "flops",
        "who": "idglow",
        "res": res,
        "recomputed": count,
        "counted_flop": counted,
        "expected_hardware_flop": expected.hardware,
        "expected_model_flop": expected.model,
        "relative_difference": round(expected.hardware / counted - 1, 6),
    }


# ------------------------------------------------------------------------- table


CASES = {
    "a": "(a) all recomputed vs baseline default",
    "b": "(b) none recomputed vs baseline --no-ckpt",
    "c": "(c) our planner vs baseline default",
    "compiled": "compiled block, all recomputed vs default",
}


def _cell(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def comparison_rows(ours: dict, base: dict, shape: TransformerShape, tokens: dict, rank: int, cuda: bool) -> list[list]:
    """One table row per case measured: ours beside the baseline case it is compared with."""
    rows = []
    for case, label in CASES.items():
        mine = ours.get(case)
        if mine is None:
            continue
        theirs = base.get("a" if case == "compiled" else case) or {}
        row = [label, mine["res"], f"{mine.get('recomputed', '?')} / {theirs.get('recomputed', '-')}"]
        base_s = theirs.get("s_per_step")
        base_flops = (
            step_flops(shape, tokens[theirs["res"]], rank, recomputed_blocks=theirs["recomputed"]) if (base_s) else None
        )
        if "error" in mine:
            row += [mine["error"]] + ["-"] * 8
        else:
            row += [_cell(mine["s_per_step"]), _cell(base_s), _cell(base_s / mine["s_per_step"], 2) if base_s else "-"]
            row += [_cell(mine["peak_gib"], 1), _cell(theirs.get("peak_gib"), 1)]
            for key, total in (("mfu_vs_989", "model"), ("hfu_vs_989", "hardware")):
                row.append(_cell(mine[key]) if cuda else "n/a")
                row.append(_cell(getattr(base_flops, total) / base_s / PEAK_FLOPS) if base_flops and cuda else "-")
        if "error" in theirs:
            row[4] = "baseline: " + theirs["error"].strip().splitlines()[-1][:120]
        rows.append(row)
    return rows


def summarise(args, device, alloc_conf, rate, harness, tokens, large, small, ours, base, identity, flop_check) -> None:
    cuda, shape, rank = device != "cpu", harness.shape, args.lora_rank
    print()
    print(
        f"Equal-work training step on {device}: {'bf16' if cuda else 'fp32 (CPU dry run)'}, batch 1, "
        f"{args.refs} references, {args.text} prompt tokens, {shape.layers} layers, LoRA r{rank}, "
        f"{BASELINE_WARMUP} warm-up + {args.steps} timed steps on each side; "
        f"PYTORCH_CUDA_ALLOC_CONF={alloc_conf!r} for ours and every baseline process."
    )
    if rate:
        print(f"Measured bf16 matmul rate (8192³, random data): {rate / 1e12:.0f} TFLOP/s (MFU below is of 989).")
    for res in (large, small):
        t, f = tokens[res], step_flops(shape, tokens[res], rank)
        parts = ", ".join(f"{k} {f.part(k) / 1e12:.4g}" for k in f.forward)
        old = previous_count(harness.n_params, shape.layers, shape.width, t.joint)
        print(
            f"{res}²: {t.image} image tokens ({t.target} target + {t.references} reference), {t.text} text tokens; "
            f"model TFLOP per SFT step {f.model / 1e12:.4g} ({parts}); the previous count (4 N T + attention) said "
            f"{old / 1e12:.4g}, {old / f.model:.2f}x."
        )
    print()
    header = ["case", "res", "recomputed ours / base", "ours s/step", "base s/step", "base/ours", "ours GiB",
              "base GiB", "ours MFU", "base MFU", "ours HFU", "base HFU"]  # fmt: skip
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in comparison_rows(ours, base, shape, tokens, rank, cuda):
        print("| " + " | ".join(str(cell) for cell in row) + " |")
    print()
    dpo = ours.get("dpo")
    if dpo and "s_per_step" in dpo:
        ratio = dpo_flops(shape, tokens[large], rank, 0).model / step_flops(shape, tokens[large], rank).model
        mfu = f", MFU {dpo['mfu_vs_989']:.3f}, HFU {dpo['hfu_vs_989']:.3f}" if cuda else ""
        print(
            f"DPO {large}², one pair, planner: {dpo['recomputed']} recomputed, {dpo['s_per_step']:.3f} s/step, "
            f"{dpo['peak_gib']:.1f} GiB{mfu} (its model FLOPs are {ratio:.2f}x an SFT step's)."
        )
    if identity:
        parts = "; ".join(f"{name} {seconds:.4f} s" for name, seconds in identity["parts_s"].items())
        added = (
            f"adds {identity['added_s']:.3f} s to the step ({100 * identity['share_of_step']:.1f}% of it): "
            if "added_s" in identity
            else ""
        )
        rest = identity.get("backward_and_rest_s")
        print(
            f"ID path at {large}² (constant lambda, all recomputed; detector on {identity['detector_providers'][0]}) "
            f"{added}{parts}; backward through the recogniser and the decoder, and the rest, "
            f"{_cell(rest, 4)} s; {identity['id_path_hardware_flop'] / 1e12:.4g} TFLOP (FlopCounterMode). "
            f"Faces the detector kept per image: {identity['faces_found_per_image']} (threshold "
            f"{_cell(identity['detector_threshold'], 4)}; the pack's own passed "
            f"{identity['boxes_at_pack_threshold_first_image']} boxes on the first image), "
            f"{identity['faces_embedded_per_image']} embedded."
        )
    if flop_check:
        print(
            f"FLOP check, one forward and backward of (a) under FlopCounterMode: {flop_check['counted_flop']:.6g} "
            f"counted, {flop_check['expected_hardware_flop']:.6g} by the per-stream count (hardware), "
            f"{100 * flop_check['relative_difference']:+.4f}%."
        )
    print(
        "MFU: model FLOPs (forward + backward, counted per stream, no recomputation) per second over 989 TFLOP/s; "
        "HFU adds the checkpointed blocks' forward run again and the fused attention kernels' QK^T in backward."
    )
    print("Besides the work, the step's code differs: " + "; ".join(CODE_DIFFERENCES) + ".")
