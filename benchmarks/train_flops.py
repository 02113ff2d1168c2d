"""FLOPs of one LoRA training step of QwenImageTransformer2DModel, counted per stream from what
each part computes (matrix products only: norms, RoPE, activations and the loss are left out,
as torch.utils.flop_counter leaves them out).

The blocks are double-stream (MMDiT): per block,

- the image stream's linears (to_q, to_k, to_v, to_out.0, img_mlp: 12 d² weights) act on the
  image tokens: the target latents *and* the reference latents appended after them;
- the text stream's linears (add_q/k/v_proj, to_add_out, txt_mlp: 12 d² weights) act on the
  prompt tokens actually fed, nothing else;
- joint attention runs over both (S = text + image tokens): QK^T and AV, 4 S² d;
- the AdaLN modulation linears (img_mod, txt_mod: 12 d² weights, a third of the model's
  parameters) act on the timestep embedding only, one vector per sample (two for img_mod with
  ``zero_cond_t``: the reference tokens get the t = 0 modulation), not on any token.

So "2 N T" (every parameter on every token) overcounts a forward about threefold at 1024².

Backward (LoRA on a frozen base): a frozen linear computes the input gradient only (1x its
forward: there is no weight gradient), a LoRA factor both (2x); attention's backward is 2x its
forward (dV, dP, dQ, dK); the modulation and embedding linears have no backward (nothing
before them is trainable). The first block's Q/K/V projections need no input gradient (their
input comes from img_in / txt_in, which are frozen), and the last block's text stream after
attention (to_add_out, txt_mlp) has no backward at all (its output is not used).

Model FLOPs = forward + backward, as above. Hardware FLOPs add what the implementation runs on
top: the forward of every checkpointed block again in backward, and the fused attention
kernels' recomputation of QK^T in their backward (flash / memory-efficient / cuDNN SDPA; the
math kernel keeps the scores instead). MFU uses model FLOPs; HFU hardware FLOPs.

``tests/test_train_step_flops.py`` checks this against a hand count and against
``torch.utils.flop_counter.FlopCounterMode`` on a tiny transformer.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from training.config import DEFAULT_LORA_TARGETS  # the baseline's targets too (peft matches by name suffix)

PARTS = ("image", "text", "attention", "modulation", "embedding", "lora")

# Block linears: module name, stream, input and output width in units of d, and where the block
# reads it: "qkv" (the block's first projections), "post" (image stream after attention),
# "post_text" (text stream after attention).
BLOCK_LINEARS: tuple[tuple[str, str, int, int, str], ...] = (
    ("attn.to_q", "image", 1, 1, "qkv"),
    ("attn.to_k", "image", 1, 1, "qkv"),
    ("attn.to_v", "image", 1, 1, "qkv"),
    ("attn.add_q_proj", "text", 1, 1, "qkv"),
    ("attn.add_k_proj", "text", 1, 1, "qkv"),
    ("attn.add_v_proj", "text", 1, 1, "qkv"),
    ("attn.to_out.0", "image", 1, 1, "post"),
    ("img_mlp.net.0.proj", "image", 1, 4, "post"),
    ("img_mlp.net.2", "image", 4, 1, "post"),
    ("attn.to_add_out", "text", 1, 1, "post_text"),
    ("txt_mlp.net.0.proj", "text", 1, 4, "post_text"),
    ("txt_mlp.net.2", "text", 4, 1, "post_text"),
)


@dataclass(frozen=True)
class TransformerShape:
    """The sizes of a QwenImageTransformer2DModel that its FLOPs depend on."""

    layers: int
    heads: int
    head_dim: int
    joint_attention_dim: int = 3584
    in_channels: int = 64
    out_channels: int = 16
    patch_size: int = 2
    zero_cond_t: bool = True
    mlp_ratio: int = 4  # FeedForward's default mult
    time_channels: int = 256  # the sinusoidal projection fed to the timestep embedder

    @property
    def width(self) -> int:
        return self.heads * self.head_dim

    @classmethod
    def of(cls, config) -> TransformerShape:
        """From a transformer's ``config``."""
        return cls(
            layers=config.num_layers,
            heads=config.num_attention_heads,
            head_dim=config.attention_head_dim,
            joint_attention_dim=config.joint_attention_dim,
            in_channels=config.in_channels,
            out_channels=config.out_channels or config.in_channels,
            patch_size=config.patch_size,
            zero_cond_t=bool(config.zero_cond_t),
        )


@dataclass(frozen=True)
class StepTokens:
    """Tokens per sample each stream sees, and the batch."""

    target: int  # target image tokens (the latents the loss is on)
    references: int  # reference image tokens, all references together
    text: int  # prompt tokens fed to the text stream
    batch: int = 1

    @property
    def image(self) -> int:
        return self.target + self.references

    @property
    def joint(self) -> int:
        return self.image + self.text

    @classmethod
    def square(cls, resolution: int, references: int, text: int, batch: int = 1) -> StepTokens:
        """A ``resolution``² target and ``references`` references of the same size (VAE /8, 2x2 packing)."""
        side = resolution // 16
        return cls(side * side, references * side * side, text, batch)


@dataclass
class StepFlops:
    """FLOPs of one step by part (``PARTS``): forward, backward, and what the hardware runs on top."""

    forward: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    backward: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PARTS, 0.0))
    recompute: float = 0.0  # checkpointed blocks' forward, run again in backward
    score_recompute: float = 0.0  # QK^T recomputed by fused attention kernels in backward

    @property
    def model(self) -> float:
        """Forward + backward, no recomputation: the numerator of MFU."""
        return sum(self.forward.values()) + sum(self.backward.values())

    @property
    def hardware(self) -> float:
        """What runs: model FLOPs, the recomputed forwards, the attention kernels' score recomputation."""
        return self.model + self.recompute + self.score_recompute

    def part(self, name: str) -> float:
        return self.forward[name] + self.backward[name]

    def __add__(self, other: StepFlops) -> StepFlops:
        return StepFlops(
            {k: self.forward[k] + other.forward[k] for k in PARTS},
            {k: self.backward[k] + other.backward[k] for k in PARTS},
            self.recompute + other.recompute,
            self.score_recompute + other.score_recompute,
        )


def _targeted(name: str, targets: Iterable[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def step_flops(
    shape: TransformerShape,
    tokens: StepTokens,
    lora_rank: int,
    lora_targets: Iterable[str] = DEFAULT_LORA_TARGETS,
    recomputed_blocks: int = 0,
    backward: bool = True,
    lora: bool = True,
    fused_attention: bool = True,
) -> StepFlops:
    """One forward (and, with ``backward``, its backward) of the transformer on ``tokens``.

    ``recomputed_blocks``: how many blocks are checkpointed (-1: all). ``lora`` False: the
    adapters are disabled (DPO's reference forward). ``fused_attention``: SDPA runs a fused
    kernel whose backward recomputes QK^T (counted in hardware FLOPs only)."""
    targets = tuple(lora_targets)
    if backward and not any(_targeted(n, targets) for n, *_, where in BLOCK_LINEARS if where == "qkv"):
        raise ValueError("the count assumes a LoRA on the attention projections (every block's attention trainable)")
    d, b, layers = shape.width, tokens.batch, shape.layers
    recomputed = layers if recomputed_blocks < 0 else min(recomputed_blocks, layers)
    stream_tokens = {"image": b * tokens.image, "text": b * tokens.text}
    out = StepFlops()
    fwd, bwd = out.forward, out.backward

    # outside the blocks (forward only: inputs and timestep carry no gradient), except proj_out's input gradient
    time_vectors = 2 * b if shape.zero_cond_t else b  # zero_cond_t: [t, 0] for target and references
    projection = shape.patch_size**2 * shape.out_channels
    fwd["embedding"] += 2 * stream_tokens["image"] * shape.in_channels * d  # img_in
    fwd["embedding"] += 2 * stream_tokens["text"] * shape.joint_attention_dim * d  # txt_in
    fwd["embedding"] += 2 * time_vectors * (shape.time_channels * d + d * d)  # timestep embedder, two linears
    fwd["embedding"] += 2 * b * d * 2 * d  # norm_out's AdaLN linear, on the target's embedding
    fwd["embedding"] += 2 * stream_tokens["image"] * d * projection  # proj_out, on every image token
    if backward:
        bwd["embedding"] += 2 * stream_tokens["image"] * d * projection

    for index in range(layers):
        block_forward = 0.0
        # modulation: img_mod on the (2 with zero_cond_t) timestep vectors, txt_mod on one; no backward
        modulation = 2 * time_vectors * d * 6 * d + 2 * b * d * 6 * d
        fwd["modulation"] += modulation
        block_forward += modulation
        for name, stream, fan_in, fan_out, where in BLOCK_LINEARS:
            n = stream_tokens[stream]
            base = 2 * n * fan_in * d * fan_out * d
            fwd[stream] += base
            block_forward += base
            has_lora = lora and _targeted(name, targets)
            adapter = 2 * n * lora_rank * (fan_in + fan_out) * d if has_lora else 0.0
            fwd["lora"] += adapter
            block_forward += adapter
            if not backward:
                continue
            if where == "post_text" and index == layers - 1:
                continue  # the last block's text stream after attention is not on the loss's path
            input_gradient = not (where == "qkv" and index == 0)  # block 0 reads frozen img_in / txt_in
            if input_gradient:
                bwd[stream] += base
            if has_lora:
                # dB and the gradient of A's output (n r d_out each), dA (n d_in r), A's input gradient
                weights = 2 * n * lora_rank * fan_out * d * 2 + 2 * n * lora_rank * fan_in * d
                bwd["lora"] += weights + (2 * n * lora_rank * fan_in * d if input_gradient else 0.0)
        attention = 4 * b * tokens.joint**2 * d  # QK^T and AV over the joint sequence
        fwd["attention"] += attention
        block_forward += attention
        if backward:
            bwd["attention"] += 2 * attention  # dV, dP, dQ, dK
            if fused_attention:
                out.score_recompute += attention / 2  # QK^T again
            if index < recomputed:
                out.recompute += block_forward
    return out


def previous_count(n_params: int, layers: int, width: int, tokens: int) -> float:
    """The count the earlier figures used (and the baseline prints): every parameter on every
    token (4 N T for forward and input-gradient backward) plus attention forward and one backward
    (2 x 4 L T² d). Kept to show what it got wrong."""
    return 4 * n_params * tokens + 2 * layers * 4 * tokens * tokens * width
