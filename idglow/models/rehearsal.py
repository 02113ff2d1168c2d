"""A rehearsal models directory: the real profile's layout, formats and configurations, random weights.

``build_rehearsal_models(dir)`` writes every component ``check_models("real", dir)`` expects, as
the releases ship them: Qwen-Image-Edit-2511's diffusers folder (the transformer at its real
widths with ``zero_cond_t``, the real VAE, a Qwen2.5-VL-7B-wide text encoder, tokenizer,
processor, scheduler), a Qwen2.5-VL-7B-Instruct folder, OpenAI's TorchScript ViT-L-14.pt, the
LAION MLP and buffalo_l's five ONNX files. Only depth is reduced (``depth`` blocks per tower,
clipped to the real count); widths, token ids, key names and file formats are the releases'.
CLIP keeps its real depth (24 + 12 blocks, 0.9 GB): the loader rebuilds ``ViT-L-14-quickgelu``
from open_clip's own configuration and refuses any other network, a shallower one included.
It is what a real-profile run is rehearsed on without the weights (docs/models.md).

Each component is built into a staging folder and renamed into place with a stamp (recipe,
seed, depth), as the tiny twins are, so a second call with the same recipe does nothing.
Weights are seeded: the same seed and depth give the same bytes on one machine.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from pathlib import Path

import torch
from open_clip.model import CLIP as OpenClipModel
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, convert_weights_to_lp
from tokenizers import AddedToken
from transformers import Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer, Qwen2VLProcessor

from idglow.models.aesthetic import write_tiny_aesthetic
from idglow.models.registry import AESTHETIC, CLIP, FACE_PACK, GENERATOR, PROMPT_MODEL, REAL_COMPONENTS
from idglow.models.rehearsal_faces import write_rehearsal_face_pack
from idglow.models.tiny import build_atomically, component_folder
from idglow.models.tiny_generator import build_generator
from idglow.models.tiny_qwen_vl import VLSizes, build_model, build_processor, train_bpe

RECIPE_VERSION = 3  # 2: CLIP at its real depth; 3: the detector finds about as many faces as a trained one

# Qwen2's regular vocabulary ends at 151642; its 22 added tokens follow in this order (the
# release's tokenizer.json), those marked True special.
BASE_VOCAB_SIZE = 151643
ADDED_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)

# Qwen2-VL's chat template as released: a default system turn, optional "Picture n:" labels.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Qwen2.5-VL-7B's image processor bounds (preprocessor_config.json of the release)
MIN_PIXELS, MAX_PIXELS = 3136, 12845056
MODEL_MAX_LENGTH = 131072

QWEN2_5_VL_7B_LAYERS, QWEN2_5_VL_7B_VISION_DEPTH = 28, 32
QWEN2_5_VL_7B_FULL_ATTENTION_BLOCKS = (7, 15, 23, 31)
QWEN_IMAGE_LAYERS = 60
CLIP_L14_VISION_LAYERS, CLIP_L14_TEXT_LAYERS = 24, 12


def qwen2_5_vl_7b_sizes(depth: int) -> VLSizes:
    """Qwen2.5-VL-7B's configuration with ``depth`` text and vision blocks (at most the real counts)."""
    text_layers, vision_depth = min(depth, QWEN2_5_VL_7B_LAYERS), min(depth, QWEN2_5_VL_7B_VISION_DEPTH)
    # the release attends over the whole image every eighth block, the last one always
    full_attention = sorted({i for i in QWEN2_5_VL_7B_FULL_ATTENTION_BLOCKS if i < vision_depth} | {vision_depth - 1})
    return VLSizes(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=text_layers,
        head_dim=128,
        num_key_value_heads=4,
        vocab_size=152064,
        max_position_embeddings=128000,
        rope_theta=1000000.0,
        mrope_section=(16, 24, 24),
        vision_depth=vision_depth,
        vision_hidden_size=1280,
        vision_intermediate_size=3420,
        vision_num_heads=16,
        vision_out_hidden_size=3584,
        fullatt_block_indexes=tuple(full_attention),
        text_extra={
            "rms_norm_eps": 1e-06,
            "hidden_act": "silu",
            "use_sliding_window": False,
            "sliding_window": 32768,
            "max_window_layers": QWEN2_5_VL_7B_LAYERS,
            "attention_dropout": 0.0,
        },
        vision_extra={
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
            "hidden_act": "silu",
            "tokens_per_second": 2,
        },
        top_extra={"tie_word_embeddings": False},
        dtype=torch.bfloat16,
    )


def qwen_image_transformer_config(depth: int) -> dict:
    """QwenImageTransformer2DModel as in Qwen-Image-Edit-2511, with ``depth`` blocks."""
    return {
        "patch_size": 2,
        "in_channels": 64,
        "out_channels": 16,
        "num_layers": min(depth, QWEN_IMAGE_LAYERS),
        "attention_head_dim": 128,
        "num_attention_heads": 24,
        "guidance_embeds": False,
        "axes_dims_rope": (16, 56, 56),
        "zero_cond_t": True,
    }


# The VAE at full depth (it is small); latents_mean/std are diffusers' defaults, which are Qwen-Image's.
QWEN_IMAGE_VAE_CONFIG = {
    "base_dim": 96,
    "z_dim": 16,
    "dim_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_scales": [],
    "temperal_downsample": [False, True, True],
    "dropout": 0.0,
}


# --------------------------------------------------------------------- tokenizer


def released_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE vocabulary of Qwen2's size: the fixed corpus's tokens, then unreachable
    fillers (no merge produces them) up to id 151642, so the added tokens get the release's ids."""
    vocab, merges = train_bpe(1024)
    fillers = (f"<|idglow_filler_{i}|>" for i in range(len(vocab), BASE_VOCAB_SIZE))
    return {**vocab, **{token: i for i, token in zip(range(len(vocab), BASE_VOCAB_SIZE), fillers, strict=True)}}, merges


def build_released_tokenizer() -> tuple[Qwen2Tokenizer, dict[str, int], list[tuple[str, str]]]:
    """Qwen2.5-VL's tokenizer layout: pad ``<|endoftext|>`` 151643, eos ``<|im_end|>`` 151645,
    ``<|image_pad|>`` 151655 ... (every added token at its released id)."""
    vocab, merges = released_vocabulary()
    # no special tokens at construction: the constructor would add them in its own order
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token=None,
        pad_token=None,
        model_max_length=MODEL_MAX_LENGTH,
        errors="replace",
    )
    tokenizer.add_tokens([AddedToken(token, special=special, normalized=False) for token, special in ADDED_TOKENS])
    tokenizer.add_special_tokens(
        {
            "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>",
            "additional_special_tokens": [t for t, special in ADDED_TOKENS[1:] if special],
        }
    )
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    for position, (token, _) in enumerate(ADDED_TOKENS):
        if tokenizer.convert_tokens_to_ids(token) != BASE_VOCAB_SIZE + position:
            raise AssertionError(
                f"{token} got id {tokenizer.convert_tokens_to_ids(token)}, expected {BASE_VOCAB_SIZE + position}"
            )
    return tokenizer, vocab, merges


def build_released_processor(tokenizer: Qwen2Tokenizer) -> Qwen2VLProcessor:
    return build_processor(
        tokenizer, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, chat_template=QWEN2_VL_CHAT_TEMPLATE
    )


def write_release_tokenizer_files(folder: Path, vocab: dict[str, int], merges: list[tuple[str, str]]) -> None:
    """vocab.json and merges.txt beside tokenizer.json, as the releases ship them (transformers 5
    writes only tokenizer.json)."""
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")


def write_release_processor_files(folder: Path, processor: Qwen2VLProcessor) -> None:
    """preprocessor_config.json and video_preprocessor_config.json, the files the releases carry
    (transformers 5 nests both inside processor_config.json, which is kept too)."""
    processor.image_processor.save_pretrained(folder)
    processor.video_processor.save_pretrained(folder)


def write_processor_folder(
    folder: Path, processor: Qwen2VLProcessor, vocab: dict[str, int], merges: list[tuple[str, str]]
) -> Path:
    """The processor with its tokenizer in the release's files (the Instruct folder's, or the
    generator's processor/)."""
    processor.save_pretrained(folder)
    write_release_tokenizer_files(folder, vocab, merges)
    write_release_processor_files(folder, processor)
    return folder


# ----------------------------------------------------------------- Qwen models


def build_text_model(tokenizer: Qwen2Tokenizer, seed: int, depth: int) -> Qwen2_5_VLForConditionalGeneration:
    model = build_model(tokenizer, seed, qwen2_5_vl_7b_sizes(depth))
    model.generation_config.bos_token_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
    return model


def write_prompt_model(folder: Path, seed: int, depth: int) -> Path:
    """A Qwen2.5-VL-7B-Instruct folder: model, generation config, tokenizer and processor files."""
    tokenizer, vocab, merges = build_released_tokenizer()
    processor = build_released_processor(tokenizer)
    build_text_model(tokenizer, seed, depth).save_pretrained(folder)
    return write_processor_folder(folder, processor, vocab, merges)


def build_rehearsal_generator(tokenizer: Qwen2Tokenizer, processor: Qwen2VLProcessor, seed: int, depth: int):
    """Qwen-Image-Edit-2511's pipeline with ``depth`` blocks per tower and random bf16 weights,
    built on the current default device."""
    return build_generator(
        seed,
        tokenizer,
        processor,
        build_text_model(tokenizer, seed, depth),
        qwen_image_transformer_config(depth),
        QWEN_IMAGE_VAE_CONFIG,
        dtype=torch.bfloat16,
    )


def write_generator(folder: Path, seed: int, depth: int) -> Path:
    """A Qwen-Image-Edit-2511 diffusers folder (model_index.json and the six components)."""
    tokenizer, vocab, merges = build_released_tokenizer()
    processor = build_released_processor(tokenizer)
    pipeline = build_rehearsal_generator(tokenizer, processor, seed, depth)
    pipeline.save_pretrained(folder)
    write_release_tokenizer_files(folder / "tokenizer", vocab, merges)
    write_processor_folder(folder / "processor", processor, vocab, merges)
    return folder


# ------------------------------------------------------------------------ CLIP


def build_clip_l14(seed: int) -> OpenClipModel:
    """ViT-L/14 in OpenAI's layout (quick-GELU, 64-wide heads), at its real depth."""
    torch.manual_seed(seed)
    return OpenClipModel(
        embed_dim=768,
        vision_cfg=CLIPVisionCfg(layers=CLIP_L14_VISION_LAYERS, width=1024, patch_size=14, image_size=224),
        text_cfg=CLIPTextCfg(context_length=77, vocab_size=49408, width=768, heads=12, layers=CLIP_L14_TEXT_LAYERS),
        quick_gelu=True,
    ).eval()


def write_openai_torchscript(model: OpenClipModel, path: Path) -> Path:
    """``model`` saved as OpenAI released ViT-L-14.pt: traced (encode_image, encode_text, forward),
    with the size attributes as top-level tensors (OpenAI's clip.load reads
    ``input_resolution.item()``), the causal mask a traced constant rather than a state-dict
    entry, and the convolution, linear and attention weights and both projections in fp16."""
    model = copy.deepcopy(model).eval()
    size = model.visual.image_size[0]
    sizes = {"input_resolution": size, "context_length": model.context_length, "vocab_size": model.vocab_size}
    del model.context_length, model.vocab_size
    mask = model.attn_mask
    del model.attn_mask
    model.attn_mask = mask
    for name, value in sizes.items():
        model.register_buffer(name, torch.tensor(value))
    image = torch.ones(1, 3, size, size)
    text = torch.zeros(1, sizes["context_length"], dtype=torch.int)  # open_clip's trace_model inputs
    # no re-trace check: the checker compares two traces of the same module and trips on the
    # mangled class names of the second one
    traced = torch.jit.trace_module(
        model, {"forward": (image, text), "encode_text": (text,), "encode_image": (image,)}, check_trace=False
    )
    convert_weights_to_lp(model, torch.float16)  # the traced module shares these parameters
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.jit.save(traced, str(path))
    return path


# ------------------------------------------------------------------------ build


def _file_in(folder: Path, role: str) -> Path:
    return folder / Path(REAL_COMPONENTS[role].path).name


def rehearsal_builders(seed: int, depth: int) -> dict[str, Callable[[Path], object]]:
    """Per role, what writes its folder (lightest first, so a killed build keeps the most)."""
    return {
        AESTHETIC: lambda d: write_tiny_aesthetic(_file_in(d, AESTHETIC), 768, seed + 30),
        CLIP: lambda d: write_openai_torchscript(build_clip_l14(seed + 20), _file_in(d, CLIP)),
        FACE_PACK: lambda d: write_rehearsal_face_pack(d, seed + 40),
        GENERATOR: lambda d: write_generator(d, seed, depth),
        PROMPT_MODEL: lambda d: write_prompt_model(d, seed + 10, depth),
    }


def rehearsal_stamp(role: str, seed: int, depth: int) -> dict:
    """What a built component's stamp holds: a component stamped alike is not rebuilt."""
    return {"layout": "real", "recipe": RECIPE_VERSION, "seed": seed, "depth": depth, "role": role}


def build_rehearsal_models(
    models_dir: Path, seed: int = 0, depth: int = 1, progress: bool = True, roles: tuple[str, ...] | None = None
) -> list[str]:
    """Write the real layout into ``models_dir`` (all roles, or ``roles``); returns the roles built
    (a role already stamped with this recipe, seed and depth is skipped)."""
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    models_dir = Path(models_dir)
    built = []
    for role, build in rehearsal_builders(seed, depth).items():
        if roles is not None and role not in roles:
            continue
        stamp = rehearsal_stamp(role, seed, depth)
        if progress:
            print(f"rehearsal models: {role} ...", flush=True)
        if build_atomically(component_folder(models_dir, role, REAL_COMPONENTS), stamp, build):
            built.append(role)
    return built
