"""The encoding cache on disk: files keyed by content and settings, nothing held in memory as
the sample count grows, reuse across runs (counted encoder calls), exact losses."""

import gc
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from training.data import Sample
from training.encodings import held_tensor_bytes
from training.flow import sample_generators
from training.loop import load_generator
from training.sft import SFTConfig, sft_loss


def portrait(seed: int, size: int = 96) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def samples(count: int, start: int = 0, subjects: int = 2) -> list[Sample]:
    """In-memory samples (no shard): distinct pixels, one prompt length."""
    return [
        Sample(
            f"s{i:04d}",
            {"prompt": f"Two friends number {i % 10} in a park.", "task": "group_photo"},
            {"target": portrait(10_000 + i)},
            [portrait(20_000 + 10 * i + j) for j in range(subjects)],
        )
        for i in range(start, start + count)
    ]


class EncoderCalls:
    """Counts forward calls of the VAE's encoder and of the text encoder (hooks on the real modules)."""

    def __init__(self, pipeline):
        self.vae = self.text = 0
        pipeline.vae.encoder.register_forward_hook(lambda *_: self._add("vae"))
        pipeline.text_encoder.register_forward_hook(lambda *_: self._add("text"))

    def _add(self, name: str) -> None:
        setattr(self, name, getattr(self, name) + 1)


@pytest.fixture(scope="module")
def pipeline(tiny_models_dir):
    torch.manual_seed(0)
    return load_generator(SFTConfig(generator_dir=str(tiny_models_dir / "generator"), shards="", output_dir=""))


def cache_config(tiny_models_dir, cache_dir, **overrides) -> SFTConfig:
    return SFTConfig(
        generator_dir=str(tiny_models_dir / "generator"),
        shards="",
        output_dir="",
        encoding_cache_dir=str(cache_dir),
        **overrides,
    )


def test_the_cache_holds_no_encodings_in_memory_as_the_sample_count_grows(pipeline, tiny_models_dir, tmp_path):
    from training.encodings import EncodingCache

    held = {}
    for count in (4, 16):
        cache = EncodingCache(pipeline, cache_config(tiny_models_dir, tmp_path / f"n{count}"))
        batch_samples = samples(count)
        for index in range(0, count, 2):
            cache.batch(batch_samples[index : index + 2], "target")
        gc.collect()
        held[count] = held_tensor_bytes(cache, skip=(pipeline, cache.config))
        assert len(list((tmp_path / f"n{count}").glob("*.safetensors"))) == count  # one file per sample
    assert held[16] == held[4] == 0


def test_a_second_run_reads_the_files_instead_of_encoding(pipeline, tiny_models_dir, tmp_path):
    from training.encodings import EncodingCache

    calls = EncoderCalls(pipeline)
    config = cache_config(tiny_models_dir, tmp_path / "encodings")
    first = EncodingCache(pipeline, config)
    for pair in (samples(2), samples(2, start=2)):
        first.batch(pair, "target")
    assert first.encoded == 4 and first.read == 0
    encoded_calls = (calls.vae, calls.text)
    assert min(encoded_calls) > 0

    second = EncodingCache(pipeline, config)  # a new run: a new cache object on the same folder
    for epoch in range(2):
        for pair in (samples(2), samples(2, start=2)):
            second.batch(pair, "target")
    assert second.encoded == 0 and second.read == 8
    assert (calls.vae, calls.text) == encoded_calls  # neither encoder ran again

    # Another target resolution is another encoding: another key, encoded anew.
    other = EncodingCache(pipeline, replace(config, resolution=32))
    other.batch(samples(2), "target")
    assert other.encoded == 2
    assert len(list((tmp_path / "encodings").glob("*.safetensors"))) == 6


def test_the_key_follows_content_and_encoding_settings(pipeline, tiny_models_dir, tmp_path):
    from training.encodings import EncodingSettings, encoding_key

    config = cache_config(tiny_models_dir, tmp_path)
    settings = EncodingSettings.of(pipeline, config)
    sample = samples(1)[0]
    renamed = replace(sample, key="another-name")  # the same content under another sample key
    key = encoding_key(sample, settings)
    assert encoding_key(renamed, settings) == key and len(key) == 64
    changed = [
        encoding_key(sample, EncodingSettings.of(pipeline, replace(config, resolution=32))),
        encoding_key(sample, EncodingSettings.of(pipeline, replace(config, reference_resolution=32))),
        encoding_key(sample, EncodingSettings.of(pipeline, replace(config, condition_pixels=48 * 48))),
        encoding_key(replace(sample, meta={**sample.meta, "prompt": "Someone else."}), settings),
        encoding_key(replace(sample, images={"target": portrait(1)}), settings),
        encoding_key(replace(sample, conditions=sample.conditions[::-1]), settings),
        encoding_key(sample, replace(settings, dtype="torch.bfloat16")),
        encoding_key(sample, replace(settings, model="0" * 64)),
    ]
    assert len(set(changed)) == len(changed) and key not in changed


def test_the_disk_cache_gives_the_loss_without_a_cache_bitwise(pipeline, tiny_models_dir, tmp_path):
    from training.encodings import EncodingCache, encode_sample, stack

    config = cache_config(tiny_models_dir, tmp_path / "encodings")
    pair = samples(2)
    pair[1].meta["prompt"] = "A longer prompt, so that the batch needs a padding mask for the shorter one."
    generators = lambda: sample_generators(0, 3, [s.key for s in pair])  # noqa: E731

    def loss(batch) -> torch.Tensor:
        with torch.no_grad():
            return sft_loss(pipeline.transformer, pipeline.scheduler, batch, ["group_photo"] * 2, config, generators())[
                0
            ]

    uncached = stack([encode_sample(pipeline, s, config) for s in pair], "target", config)
    cache = EncodingCache(pipeline, config)
    encoded, read = cache.batch(pair, "target"), EncodingCache(pipeline, config).batch(pair, "target")
    assert cache.encoded == 2 and uncached.mask is not None
    for batch in (encoded, read):
        assert torch.equal(batch.x0, uncached.x0) and torch.equal(batch.refs, uncached.refs)
        assert torch.equal(batch.prompt, uncached.prompt) and torch.equal(batch.mask, uncached.mask)
        assert batch.shapes == uncached.shapes
        assert torch.equal(loss(batch), loss(uncached))


def test_a_damaged_file_is_encoded_again(pipeline, tiny_models_dir, tmp_path):
    from training.encodings import EncodingCache

    config = cache_config(tiny_models_dir, tmp_path)
    sample = samples(1)
    first = EncodingCache(pipeline, config)
    expected = first.batch(sample, "target")
    (file,) = tmp_path.glob("*.safetensors")
    file.write_bytes(file.read_bytes()[:100])  # torn by something other than our atomic writes
    again = EncodingCache(pipeline, config)
    with pytest.warns(UserWarning, match="encoding it again"):
        batch = again.batch(sample, "target")
    assert again.encoded == 1 and torch.equal(batch.x0, expected.x0)
    assert EncodingCache(pipeline, config).batch(sample, "target") is not None  # the rewritten file reads
