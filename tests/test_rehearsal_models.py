"""The rehearsal models directory: the real profile's layout and formats with random weights.

The light components (LAION MLP, TorchScript CLIP, buffalo_l, the VAE, scheduler, tokenizer and
processor files) are built here and loaded through the real profile's loaders; the 7B-wide text
encoders and the transformer (several GB) are built by ``idglow models build --layout real``
(docs/models.md gives the figures), and by the slow test below.
"""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import open_clip
import pytest
import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler
from PIL import Image
from transformers import AutoProcessor, AutoTokenizer

from idglow.models.clip import WeightsHashMismatch, is_torchscript_archive
from idglow.models.hub import ModelHub
from idglow.models.registry import AESTHETIC, CLIP, FACE_PACK, GENERATOR, PROMPT_MODEL, REAL_COMPONENTS, check_models
from idglow.models.rehearsal import (
    BASE_VOCAB_SIZE,
    QWEN_IMAGE_VAE_CONFIG,
    build_rehearsal_models,
    build_released_processor,
    build_released_tokenizer,
    qwen2_5_vl_7b_sizes,
    rehearsal_stamp,
    write_processor_folder,
)
from idglow.models.tiny import BUILD_LOCK_SUFFIX, STAMP_FILE
from idglow.models.tiny_generator import QWEN_IMAGE_SCHEDULER_CONFIG
from idglow.storage import sha256_file

LIGHT = (AESTHETIC, CLIP, FACE_PACK)
RELEASED_IDS = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|vision_start|>": 151652,
    "<|vision_end|>": 151653,
    "<|vision_pad|>": 151654,
    "<|image_pad|>": 151655,
    "<|video_pad|>": 151656,
}


@pytest.fixture(scope="module")
def light_dir(tmp_path_factory):
    models_dir = tmp_path_factory.mktemp("rehearsal")
    assert build_rehearsal_models(models_dir, roles=LIGHT, progress=False) == list(LIGHT)
    return models_dir


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    """A processor folder as the generator's processor/ and the Instruct folder carry it."""
    folder = tmp_path_factory.mktemp("processor")
    tokenizer, vocab, merges = build_released_tokenizer()
    return write_processor_folder(folder, build_released_processor(tokenizer), vocab, merges)


def test_a_second_build_with_the_same_recipe_does_nothing_and_a_new_seed_rebuilds(light_dir):
    before = sha256_file(light_dir / REAL_COMPONENTS[AESTHETIC].path)
    assert build_rehearsal_models(light_dir, roles=LIGHT, progress=False) == []
    assert build_rehearsal_models(light_dir, seed=1, roles=(AESTHETIC,), progress=False) == [AESTHETIC]
    assert sha256_file(light_dir / REAL_COMPONENTS[AESTHETIC].path) != before
    assert build_rehearsal_models(light_dir, seed=0, roles=(AESTHETIC,), progress=False) == [AESTHETIC]
    assert sha256_file(light_dir / REAL_COMPONENTS[AESTHETIC].path) == before


@pytest.mark.slow
def test_light_builds_are_deterministic(light_dir, tmp_path):
    """Byte for byte, except the TorchScript archive's code: it names its classes by a counter of
    the process's earlier scripting (``___torch_mangle_19``), so only its tensors are compared; two
    fresh processes running the same build write the same archive."""
    script = (
        f"from idglow.models.rehearsal import build_rehearsal_models; "
        f"build_rehearsal_models({str(tmp_path)!r}, roles={LIGHT!r}, progress=False)"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    # the build locks beside each component are empty and not outputs
    files = [p for p in light_dir.rglob("*") if p.is_file() and not p.name.endswith(BUILD_LOCK_SUFFIX)]
    assert len(files) == 2 + 5 + 3  # two single files, five ONNX files, a stamp per component
    archive = light_dir / REAL_COMPONENTS[CLIP].path
    for path in files:
        if path != archive:
            assert sha256_file(path) == sha256_file(tmp_path / path.relative_to(light_dir)), path
    ours, theirs = (
        torch.jit.load(str(root / REAL_COMPONENTS[CLIP].path)).state_dict() for root in (light_dir, tmp_path)
    )
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_the_light_files_are_where_the_real_check_expects(light_dir):
    statuses = {s.role: s for s in check_models("real", light_dir)}
    for role in LIGHT:
        assert statuses[role].ok, statuses[role]
    clip = statuses[CLIP]
    assert clip.state == "present (unverified)"  # random weights: the pin cannot match


def test_aesthetic_mlp_has_the_released_keys_and_loads(light_dir):
    path = light_dir / REAL_COMPONENTS[AESTHETIC].path
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert {k: tuple(v.shape) for k, v in state.items()} == {
        "layers.0.weight": (1024, 768),
        "layers.0.bias": (1024,),
        "layers.2.weight": (128, 1024),
        "layers.2.bias": (128,),
        "layers.4.weight": (64, 128),
        "layers.4.bias": (64,),
        "layers.6.weight": (16, 64),
        "layers.6.bias": (16,),
        "layers.7.weight": (1, 16),
        "layers.7.bias": (1,),
    }
    predictor = ModelHub("real", light_dir, device="cpu").aesthetic()
    embeddings = torch.nn.functional.normalize(torch.randn(2, 768), dim=-1)
    assert predictor(embeddings).shape == (2,)


def test_clip_is_openais_torchscript_of_vit_l14_widths(light_dir):
    archive = light_dir / REAL_COMPONENTS[CLIP].path
    assert is_torchscript_archive(archive)
    state = torch.jit.load(str(archive), map_location="cpu").state_dict()
    assert state["input_resolution"].item() == 224 and state["context_length"].item() == 77
    assert state["vocab_size"].item() == 49408
    assert tuple(state["visual.conv1.weight"].shape) == (1024, 3, 14, 14)
    assert tuple(state["visual.proj"].shape) == (1024, 768) and tuple(state["text_projection"].shape) == (768, 768)
    assert tuple(state["token_embedding.weight"].shape) == (49408, 768)
    assert state["visual.conv1.weight"].dtype == torch.float16
    model = open_clip.load_openai_model(str(archive), precision="fp32", device="cpu")  # what the loader calls
    assert model.visual.image_size == (224, 224) and model.visual.transformer.resblocks[0].attn.num_heads == 16
    assert model.transformer.resblocks[0].attn.num_heads == 12
    assert type(model.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"
    image = model.encode_image(torch.zeros(1, 3, 224, 224))
    assert image.shape == (1, 768) and torch.isfinite(image).all()


def test_the_hub_holds_the_rehearsal_clip_to_the_release_pin_unless_told_its_hash(light_dir):
    """The real hub refuses TorchScript that is not the released file; given the file's own hash
    (IDGLOW_CLIP_SHA256, as `make rehearse` sets it) it loads it as ViT-L-14-quickgelu, which the
    rehearsal's CLIP is at full depth. A wrong hash is still refused."""
    with pytest.raises(WeightsHashMismatch, match=REAL_COMPONENTS[CLIP].required[0].sha256):
        ModelHub("real", light_dir, device="cpu").clip()
    with pytest.raises(WeightsHashMismatch, match="0" * 64):
        ModelHub("real", light_dir, device="cpu", clip_sha256="0" * 64).clip()
    trusted = sha256_file(light_dir / REAL_COMPONENTS[CLIP].path)
    clip = ModelHub("real", light_dir, device="cpu", clip_sha256=trusted).clip()
    assert clip.name == "ViT-L-14-quickgelu" and len(clip.model.visual.transformer.resblocks) == 24
    embeddings = clip.encode_images([Image.new("RGB", (64, 48), (200, 120, 90))])
    assert embeddings.shape == (1, 768) and torch.allclose(embeddings.norm(dim=-1), torch.ones(1), atol=1e-5)


def test_buffalo_l_loads_all_five_models_to_their_tasks(light_dir):
    from insightface.app import FaceAnalysis

    pack = light_dir / REAL_COMPONENTS[FACE_PACK].path
    app = FaceAnalysis(name=str(pack), providers=["CPUExecutionProvider"])
    routed = {task: (type(model).__name__, os.path.basename(model.model_file)) for task, model in app.models.items()}
    assert routed == {
        "detection": ("SCRFD", "det_10g.onnx"),
        "recognition": ("ArcFaceONNX", "w600k_r50.onnx"),
        "genderage": ("Attribute", "genderage.onnx"),
        "landmark_3d_68": ("Landmark", "1k3d68.onnx"),
        "landmark_2d_106": ("Landmark", "2d106det.onnx"),
    }
    detector = app.models["detection"]
    assert detector.input_shape[:2] == [1, 3] and all(isinstance(d, str) for d in detector.input_shape[2:])
    assert detector.fmc == 3 and detector._num_anchors == 2 and detector.use_kps
    assert detector._feat_stride_fpn == [8, 16, 32]
    recognizer = app.models["recognition"]
    assert recognizer.input_shape[1:] == [3, 112, 112] and recognizer.output_shape[1] == 512
    assert (recognizer.input_mean, recognizer.input_std) == (127.5, 127.5)
    assert app.models["landmark_3d_68"].lmk_num == 68 and app.models["landmark_2d_106"].lmk_num == 106


def test_the_recogniser_is_an_iresnet50_graph(light_dir):
    import onnx

    graph = onnx.load(str(light_dir / REAL_COMPONENTS[FACE_PACK].path / "w600k_r50.onnx")).graph
    ops = [node.op_type for node in graph.node]
    blocks = 3 + 4 + 14 + 3
    assert ops.count("PRelu") == 1 + blocks and ops.count("Add") == blocks
    assert ops.count("Conv") == 1 + 2 * blocks + 4  # stem, two per block, one shortcut per stage
    assert ops.count("Gemm") == 1 and "Identity" not in ops  # every tensor its own initializer, as released


def test_the_hub_loads_the_face_pack_and_its_torch_encoder(light_dir):
    hub = ModelHub("real", light_dir, device="cpu")
    app = hub.face_analysis()
    assert set(app.models) == {"detection", "recognition", "genderage"}
    image = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    boxes, points = app.det_model.detect(image, max_num=2)
    assert boxes.shape[1] == 5 and points.shape[1:] == (5, 2)
    encoder = hub.face_encoder()
    crops = torch.rand(2, 3, 112, 112) * 2 - 1
    embedding = encoder(crops)
    assert embedding.shape == (2, 512) and torch.isfinite(embedding).all()
    onnx_embedding = app.models["recognition"].session.run(None, {"input.1": crops.numpy()})[0]
    assert np.allclose(embedding.numpy(), onnx_embedding, atol=1e-3, rtol=1e-3)


def test_tokenizer_and_processor_carry_the_released_ids_and_files(text_files):
    for name in (
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.json",
        "merges.txt",
        "preprocessor_config.json",
        "video_preprocessor_config.json",
        "chat_template.jinja",
    ):
        assert (text_files / name).is_file(), name
    assert len(json.loads((text_files / "vocab.json").read_text())) == BASE_VOCAB_SIZE
    tokenizer = AutoTokenizer.from_pretrained(text_files, local_files_only=True)
    assert {t: tokenizer.convert_tokens_to_ids(t) for t in RELEASED_IDS} == RELEASED_IDS
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.bos_token) == ("<|im_end|>", "<|endoftext|>", None)
    assert len(tokenizer) == 151665
    processor = AutoProcessor.from_pretrained(text_files, local_files_only=True)
    config = json.loads((text_files / "preprocessor_config.json").read_text())
    assert (config["patch_size"], config["merge_size"], config["temporal_patch_size"]) == (14, 2, 2)
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "a group photo"}]}]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    inputs = processor(text=[text], images=[Image.new("RGB", (56, 84))], return_tensors="pt")
    assert (inputs["input_ids"] == RELEASED_IDS["<|image_pad|>"]).sum() == 2 * 3  # (4 x 6 patches) / merge 2x2
    assert tuple(inputs["image_grid_thw"][0].tolist()) == (1, 6, 4)  # (t, h, w): 84 high, 56 wide


def test_vae_and_scheduler_have_qwen_images_configuration(tmp_path):
    torch.manual_seed(0)
    AutoencoderKLQwenImage(**QWEN_IMAGE_VAE_CONFIG).to(torch.bfloat16).save_pretrained(tmp_path / "vae")
    vae = AutoencoderKLQwenImage.from_pretrained(tmp_path / "vae", dtype=torch.float32, local_files_only=True).eval()
    assert vae.config.base_dim == 96 and vae.config.num_res_blocks == 2 and len(vae.config.latents_mean) == 16
    assert vae.config.latents_mean[0] == -0.7571 and vae.config.latents_std[0] == 2.8184
    with torch.no_grad():
        latents = vae.encode(torch.zeros(1, 3, 1, 32, 32)).latent_dist.mode()
    assert latents.shape == (1, 16, 1, 4, 4)
    FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER_CONFIG).save_pretrained(tmp_path / "scheduler")
    scheduler = FlowMatchEulerDiscreteScheduler.from_pretrained(tmp_path / "scheduler", local_files_only=True)
    assert scheduler.config.use_dynamic_shifting and scheduler.config.max_image_seq_len == 8192
    assert (
        scheduler.config.base_shift == 0.5
        and scheduler.config.max_shift == 0.9
        and scheduler.config.shift_terminal == 0.02
    )


def test_text_encoder_config_has_the_7b_widths():
    sizes = qwen2_5_vl_7b_sizes(depth=1)
    assert (sizes.hidden_size, sizes.intermediate_size, sizes.hidden_size // sizes.head_dim) == (3584, 18944, 28)
    assert (sizes.num_key_value_heads, sizes.vocab_size, sizes.mrope_section) == (4, 152064, (16, 24, 24))
    assert sizes.fullatt_block_indexes == (0,) and qwen2_5_vl_7b_sizes(32).fullatt_block_indexes == (7, 15, 23, 31)
    assert qwen2_5_vl_7b_sizes(100).num_hidden_layers == 28


def idglow(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "idglow.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_models_build_takes_a_layout(light_dir, tmp_path):
    """`--layout real` goes to the rehearsal builder with its seed and depth: a directory whose
    components are stamped for them builds nothing, and the real check passes on it."""
    bad = idglow("models", "build", "--layout", "huge", "--models-dir", str(tmp_path / "x"))
    assert bad.returncode == 2 and "unknown layout 'huge'" in bad.stderr
    models_dir = tmp_path / "models"
    shutil.copytree(light_dir, models_dir)
    for role in (GENERATOR, PROMPT_MODEL):  # stand-ins for the heavy folders, stamped as built
        folder = models_dir / REAL_COMPONENTS[role].path
        for required in REAL_COMPONENTS[role].required:
            (folder / required.relative_path).parent.mkdir(parents=True, exist_ok=True)
            (folder / required.relative_path).write_text("{}")
        (folder / STAMP_FILE).write_text(json.dumps(rehearsal_stamp(role, 0, 1), sort_keys=True))
    built = idglow("models", "build", "--layout", "real", "--models-dir", str(models_dir), "--depth", "1")
    assert built.returncode == 0, built.stderr
    assert "built: nothing (all present)" in built.stdout
    check = idglow("models", "check", "--profile", "real", "--models-dir", str(models_dir))
    assert check.returncode == 0 and "present (unverified)" in check.stdout, check.stdout


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("IDGLOW_REHEARSAL_FULL"),
    reason="builds 6.6 GB of 7B-wide weights (about 2 "
    "minutes, 5.7 GB peak); set IDGLOW_REHEARSAL_FULL=1, or use `idglow models build --layout real`",
)
def test_the_full_rehearsal_directory_passes_the_real_check_and_generates(tmp_path):
    from diffusers import QwenImageEditPlusPipeline

    from idglow.editing import ReferenceBudget, edit

    build_rehearsal_models(tmp_path, progress=False)
    assert all(s.ok for s in check_models("real", tmp_path))
    # bf16 and small reference images (the budget below), or the CPU needs 9.5 GB and a 1 MP VAE encode
    pipeline = QwenImageEditPlusPipeline.from_pretrained(
        tmp_path / REAL_COMPONENTS[GENERATOR].path, dtype=torch.bfloat16, local_files_only=True
    )
    assert pipeline.transformer.config.zero_cond_t and pipeline.text_encoder.config.text_config.hidden_size == 3584
    image = edit(
        pipeline,
        [Image.new("RGB", (64, 64), "red"), Image.new("RGB", (64, 64), "blue")],
        "the people of both pictures together",
        budget=ReferenceBudget(64 * 64, 56 * 56),
        height=64,
        width=64,
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert image.size == (64, 64)


def test_the_random_detector_finds_about_as_many_faces_as_a_trained_one(light_dir):
    """Uncalibrated, random SCRFD weights score thousands of anchors as faces; the rehearsal's
    detector finds a handful on drawn portraits it was not calibrated on, so every face path
    of a rehearsal costs what it would with buffalo_l."""
    import numpy as np

    from idglow.data.demo_celebahq import identity_style
    from idglow.data.faces import render_portrait
    from idglow.models.hub import load_face_analysis

    app = load_face_analysis(light_dir / REAL_COMPONENTS[FACE_PACK].path)
    rng = np.random.default_rng(5)
    counts = []
    for identity in (3, 4, 5):
        portrait, _ = render_portrait(identity_style(identity, 1), 1024, rng)
        counts.append(len(app.get(np.ascontiguousarray(np.asarray(portrait)[:, :, ::-1]))))
    assert all(1 <= count <= 10 for count in counts), counts
