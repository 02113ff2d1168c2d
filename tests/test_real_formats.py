"""The real profile's CLIP file formats, rehearsed offline with random weights.

A small CLIP in OpenAI's layout (one 64-wide head per tower, as OpenAI's head width; quick-GELU)
is written twice: as OpenAI released ViT-L-14.pt (a traced TorchScript archive, top-level
``input_resolution``/``context_length``/``vocab_size`` tensors, the matrices in fp16) and in
open_clip's own formats (``open_clip_pytorch_model.bin`` and ``.safetensors``). The project's
loader must take all three, by file format, and embed alike.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from idglow.models.clip import WeightsHashMismatch, is_torchscript_archive, load_clip
from idglow.models.hub import ModelHub
from idglow.models.registry import CLIP, REAL_COMPONENTS, check_models, require_component
from idglow.models.rehearsal import write_openai_torchscript
from idglow.storage import sha256_file

TEST_CLIP = "idglow-test-clip-openai"
TEST_CLIP_GELU = "idglow-test-clip-openai-gelu"  # the same network with the wrong activation
VISION = {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16}
TEXT = {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 1}
CONFIGS = {
    TEST_CLIP: {"embed_dim": 32, "quick_gelu": True, "vision_cfg": VISION, "text_cfg": TEXT},
    TEST_CLIP_GELU: {"embed_dim": 32, "quick_gelu": False, "vision_cfg": VISION, "text_cfg": TEXT},
}


@pytest.fixture(scope="module")
def clip_files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip_formats")
    for name, config in CONFIGS.items():
        (folder / f"{name}.json").write_text(json.dumps(config))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model = open_clip.create_model(TEST_CLIP, pretrained=None).eval()
    with torch.no_grad():  # OpenAI released fp16 matrices: both copies hold those values
        for parameter in model.parameters():
            parameter.copy_(parameter.half().float())
    state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    save_file(state, str(folder / "open_clip_pytorch_model.safetensors"))
    write_openai_torchscript(model, folder / "ViT-test.pt")
    return folder


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)) for _ in range(3)]


TEXTS = ["a group photo of three friends", "two children on a beach"]


def test_the_archive_is_what_open_clip_alone_refuses(clip_files):
    archive = clip_files / "ViT-test.pt"
    assert is_torchscript_archive(archive)
    assert not is_torchscript_archive(clip_files / "open_clip_pytorch_model.bin")
    assert not is_torchscript_archive(clip_files / "open_clip_pytorch_model.safetensors")
    keys = torch.jit.load(str(archive), map_location="cpu").state_dict()
    assert {
        "input_resolution",
        "context_length",
        "vocab_size",
        "visual.conv1.weight",
        "visual.class_embedding",
        "transformer.resblocks.0.attn.in_proj_weight",
        "positional_embedding",
        "text_projection",
        "logit_scale",
        "token_embedding.weight",
    } <= set(keys)
    assert keys["visual.conv1.weight"].dtype == torch.float16 and keys["ln_final.weight"].dtype == torch.float32
    with pytest.raises(RuntimeError, match="TorchScript"):
        open_clip.create_model_and_transforms(TEST_CLIP, pretrained=str(archive))


def test_openai_and_open_clip_files_load_and_embed_alike(clip_files):
    archive = clip_files / "ViT-test.pt"
    loaded = {
        "openai": load_clip(TEST_CLIP, archive, torch.device("cpu"), clip_files, expected_sha256=sha256_file(archive)),
        "bin": load_clip(TEST_CLIP, clip_files / "open_clip_pytorch_model.bin", torch.device("cpu"), clip_files),
        "safetensors": load_clip(
            TEST_CLIP, clip_files / "open_clip_pytorch_model.safetensors", torch.device("cpu"), clip_files
        ),
    }
    assert type(loaded["openai"].model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    images = {k: clip.encode_images(_images()) for k, clip in loaded.items()}
    texts = {k: clip.encode_texts(TEXTS) for k, clip in loaded.items()}
    assert images["openai"].shape == (3, 32) and texts["openai"].shape == (2, 32)
    assert not torch.allclose(images["openai"][0], images["openai"][1])
    for other in ("bin", "safetensors"):
        assert torch.allclose(images["openai"], images[other], atol=1e-6)
        assert torch.allclose(texts["openai"], texts[other], atol=1e-6)


def test_a_wrong_hash_names_the_file_and_both_hashes(clip_files):
    archive = clip_files / "ViT-test.pt"
    with pytest.raises(WeightsHashMismatch) as error:
        load_clip(TEST_CLIP, archive, torch.device("cpu"), clip_files, expected_sha256="0" * 64)
    assert (
        str(archive) in str(error.value) and sha256_file(archive) in str(error.value) and "0" * 64 in str(error.value)
    )


def test_the_released_name_is_checked_against_the_pin(clip_files, tmp_path):
    """A file named as OpenAI's release is held to the registry's pin, through the real hub."""
    pin = REAL_COMPONENTS[CLIP].required[0].sha256
    released = tmp_path / REAL_COMPONENTS[CLIP].path
    released.parent.mkdir(parents=True)
    shutil.copy(clip_files / "ViT-test.pt", released)
    with pytest.raises(WeightsHashMismatch, match=pin) as error:
        ModelHub("real", tmp_path, device="cpu").clip()
    assert str(released) in str(error.value) and sha256_file(released) in str(error.value)


def test_an_archive_with_no_known_hash_is_refused(clip_files):
    with pytest.raises(ValueError, match="no known SHA-256"):
        load_clip(TEST_CLIP, clip_files / "ViT-test.pt", torch.device("cpu"), clip_files)


def test_an_archive_is_held_to_the_named_architecture(clip_files):
    archive = clip_files / "ViT-test.pt"
    with pytest.raises(ValueError, match="different network.*QuickGELU"):
        load_clip(TEST_CLIP_GELU, archive, torch.device("cpu"), clip_files, expected_sha256=sha256_file(archive))


def test_the_real_profile_takes_open_clips_copy_when_the_openai_file_is_absent(tmp_path):
    component = REAL_COMPONENTS[CLIP]
    copy_of_release = tmp_path / "clip" / "open_clip_pytorch_model.safetensors"
    assert copy_of_release.relative_to(tmp_path).as_posix() in component.alternatives
    copy_of_release.parent.mkdir(parents=True)
    copy_of_release.write_bytes(b"weights")
    assert require_component("real", CLIP, tmp_path) == copy_of_release
    (status,) = [s for s in check_models("real", tmp_path, verify_hashes=True) if s.role == CLIP]
    assert status.path == copy_of_release and status.ok and status.expected_sha256 is None  # no pin for the copy
    released = tmp_path / component.path
    released.write_bytes(b"release")
    assert require_component("real", CLIP, tmp_path) == released  # OpenAI's file, when there, is the one checked
    (status,) = [s for s in check_models("real", tmp_path, verify_hashes=True) if s.role == CLIP]
    assert status.path == released and status.expected_sha256 == component.required[0].sha256 and not status.ok
