"""A tiny Qwen2.5-VL, built offline: tokenizer, processor and model in the real folder layout.

It serves twice: as the generator's text encoder (inside the diffusers pipeline folder) and as
the demo's prompt model. Both are saved with ``save_pretrained`` and loaded back through the
same ``from_pretrained`` calls the real 7B weights go through. Weights are random but fixed by
the seed.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Enough English that the byte-level BPE learns words for the prompts the pipeline writes.
_CORPUS = (
    "Describe the key features of the input image (color, shape, size, texture, objects, background), "
    "then explain how the user's text instruction should alter or modify the image. Generate a new image "
    "that meets the user's requirements while maintaining consistency with the original input where appropriate.",
    "Picture 1: Picture 2: Picture 3: A group photo of the people in the pictures, standing together, "
    "smiling, natural light, outdoors, indoors, park, beach, living room, studio portrait.",
    "The same people as young children, aged five to seven, playing together in a garden.",
    "Person one has short black hair and a blue shirt; person two has long blond hair and glasses; "
    "person three has a beard and a red jacket. Left, right, centre, warm evening light, soft shadows.",
    "system user assistant You are a helpful assistant. Write a detailed instruction.",
)

# Qwen2-VL's chat layout: images become vision tokens inside the user turn.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def train_bpe(vocab_size: int, corpus: Sequence[str] | None = None) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges of a byte-level BPE trained on ``corpus`` (default: the fixed one)."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(list(_CORPUS) * 4 if corpus is None else corpus, trainer)
    with tempfile.TemporaryDirectory() as folder:
        bpe.model.save(folder)
        vocab = json.loads((Path(folder) / "vocab.json").read_text())
        merges = [
            tuple(line.split())
            for line in (Path(folder) / "merges.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
    return vocab, merges


def build_tokenizer(vocab_size: int = 1024, corpus: Sequence[str] | None = None) -> Qwen2Tokenizer:
    """A byte-level BPE trained on ``corpus`` (default: the fixed one), with Qwen's special tokens
    and chat template."""
    vocab, merges = train_bpe(vocab_size, corpus)
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
    )
    tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS[1:])})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(
    tokenizer: Qwen2Tokenizer,
    min_pixels: int = 28 * 28,
    max_pixels: int = 112 * 112,
    chat_template: str = CHAT_TEMPLATE,
) -> Qwen2VLProcessor:
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    return Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
        chat_template=chat_template,
    )


@dataclass(frozen=True)
class VLSizes:
    """The widths, depths and dtype of a Qwen2.5-VL; the defaults are the tiny twin's.

    ``text_extra``/``vision_extra`` carry configuration beyond the sizes (the real release's
    norm epsilon, sliding-window settings...); the tiny twin leaves them empty so its config
    stays what it always was.
    """

    hidden_size: int = 32
    intermediate_size: int = 64
    num_hidden_layers: int = 2
    head_dim: int = 16
    num_key_value_heads: int = 1
    vocab_size: int | None = None  # None: the tokenizer's length
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    mrope_section: tuple[int, int, int] = (2, 3, 3)
    vision_depth: int = 1
    vision_hidden_size: int = 32
    vision_intermediate_size: int = 64
    vision_num_heads: int = 2
    vision_out_hidden_size: int = 32
    fullatt_block_indexes: tuple[int, ...] = (0,)
    text_extra: dict = field(default_factory=dict)
    vision_extra: dict = field(default_factory=dict)
    top_extra: dict = field(default_factory=dict)
    dtype: torch.dtype = torch.float32


def build_model(tokenizer: Qwen2Tokenizer, seed: int, sizes: VLSizes = VLSizes()) -> Qwen2_5_VLForConditionalGeneration:
    """A Qwen2.5-VL of ``sizes`` whose special-token ids match ``tokenizer``."""
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in SPECIAL_TOKENS}
    config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": sizes.vocab_size or len(tokenizer),
            "hidden_size": sizes.hidden_size,
            "intermediate_size": sizes.intermediate_size,
            "num_hidden_layers": sizes.num_hidden_layers,
            "num_attention_heads": sizes.hidden_size // sizes.head_dim,
            "num_key_value_heads": sizes.num_key_value_heads,
            "max_position_embeddings": sizes.max_position_embeddings,
            "rope_parameters": {
                "rope_type": "default",
                "rope_theta": sizes.rope_theta,
                "mrope_section": list(sizes.mrope_section),
            },
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
            **sizes.text_extra,
        },
        vision_config={
            "depth": sizes.vision_depth,
            "hidden_size": sizes.vision_hidden_size,
            "intermediate_size": sizes.vision_intermediate_size,
            "num_heads": sizes.vision_num_heads,
            "out_hidden_size": sizes.vision_out_hidden_size,
            "fullatt_block_indexes": list(sizes.fullatt_block_indexes),
            "window_size": 112,
            **sizes.vision_extra,
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
        bos_token_id=ids["<|endoftext|>"],
        eos_token_id=ids["<|im_end|>"],
        pad_token_id=ids["<|endoftext|>"],
        **sizes.top_extra,
    )
    torch.manual_seed(seed)
    if sizes.dtype == torch.float32:  # the tiny twin's config has never named a dtype: keep its bytes
        model = Qwen2_5_VLForConditionalGeneration(config)
    else:  # built directly in the dtype: a 7B-wide embedding alone is 2 GB in fp32 before any cast
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=sizes.dtype)
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    return model.eval()


def write_tiny_vl(folder: Path, seed: int) -> Path:
    """Save a tiny prompt model (model, tokenizer, processor, chat template) to ``folder``."""
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer)
    model = build_model(tokenizer, seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder
