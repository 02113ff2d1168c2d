"""The model layer: every tiny twin loads through the hub with the real libraries' own loaders,
and the face path sees faces."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from diffusers import QwenImageEditPlusPipeline
from insightface.app import FaceAnalysis
from PIL import Image
from scipy.stats import mannwhitneyu

from idglow.data.faces import render_portrait, sample_style
from idglow.editing import ReferenceBudget, edit
from idglow.faces import count_faces, pil_to_bgr
from idglow.models.face_torch import align_faces, detect_landmarks, embed_faces
from idglow.models.face_training import (
    FaceTrainingConfig,
    WorldAgeConfig,
    aligned_crop,
    draw_scene,
    write_tiny_face_pack,
)
from idglow.models.hub import ModelHub
from idglow.models.registry import CLIP, REAL_COMPONENTS, FileStatus, MissingModelFile, check_models
from idglow.models.tiny_generator import write_tiny_generator
from idglow.models.world_generator import (
    COMMITTED_FOLDER,
    committed_stamp,
    config_of,
    draw_pair,
    write_committed_world_generator,
)
from idglow.profiles import load_profile
from idglow.storage import sha256_file


def portraits(dataset, n=3):
    truth = pd.read_parquet(dataset.root / "idglow_demo_truth.parquet").head(n)
    return [Image.open(dataset.root / "CelebA-HQ-img" / f"{i}.jpg").convert("RGB") for i in truth["hq_idx"]]


def test_generator_is_the_real_pipeline_with_tiny_parts(hub, demo_dataset):
    pipeline = hub.generator()
    assert isinstance(pipeline, QwenImageEditPlusPipeline)
    assert pipeline.transformer.config.zero_cond_t is True
    assert pipeline.vae.config.z_dim == 16
    prefix = pipeline.prompt_template_encode.split("{}")[0]
    assert len(pipeline.tokenizer(prefix).input_ids) == pipeline.prompt_template_encode_start_idx
    refs = portraits(demo_dataset, 3)

    def generate(seed):
        return edit(
            pipeline,
            refs,
            "A group photo of these people",
            budget=ReferenceBudget.of_profile(load_profile("demo", env={})),
            height=64,
            width=64,
            num_inference_steps=3,
            generator=torch.Generator().manual_seed(seed),
        )

    first, again, other = generate(0), generate(0), generate(1)
    assert first.size == (64, 64)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(other))
    assert hub.generator() is pipeline  # loaded once per process


def test_the_demo_generator_is_the_committed_world_generator_and_draws_people(hub, tmp_path):
    """The demo's generator carries the committed stage's transformer, and its group photos of
    people it never saw hold faces the demo face pack finds, where a random transformer's hold none."""
    pipeline = hub.generator()
    stage = type(pipeline.transformer).from_pretrained(COMMITTED_FOLDER / "transformer")
    for name, value in stage.state_dict().items():
        assert torch.equal(pipeline.transformer.state_dict()[name], value.float()), name

    config = config_of(committed_stamp())
    rng = np.random.default_rng([77, 1])  # not the seeds the stages drew their training pairs from
    pairs = [draw_pair(rng, config, "group_fusion") for _ in range(6)]
    app = hub.face_analysis()
    write_tiny_generator(tmp_path / "random", seed=0)
    random_pipeline = QwenImageEditPlusPipeline.from_pretrained(tmp_path / "random")
    found = {}
    for name, generator in (("trained", pipeline), ("random", random_pipeline)):
        images = [
            edit(
                generator,
                pair.portraits,
                pair.prompt,
                budget=ReferenceBudget.of_profile(load_profile("demo", env={})),
                height=64,
                width=64,
                num_inference_steps=4,
                generator=torch.Generator().manual_seed(i),
            )
            for i, pair in enumerate(pairs)
        ]
        found[name] = sum(min(count_faces(app, image), len(pair.portraits)) for image, pair in zip(images, pairs))
    people = sum(len(pair.portraits) for pair in pairs)
    assert found["random"] == 0, found
    assert found["trained"] >= 0.5 * people, (found, people)


def test_prompt_model_writes_text_from_pictures(hub, demo_dataset):
    model, processor = hub.prompt_model()
    assert model.config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Describe."}]}
    ]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert text.count("<|image_pad|>") == 2
    inputs = processor(text=[text], images=portraits(demo_dataset, 2), return_tensors="pt")
    output = model.generate(**inputs, max_new_tokens=8, do_sample=False)
    assert output.shape[1] > inputs["input_ids"].shape[1]


def test_clip_embeddings_are_normalised(hub, demo_dataset):
    clip = hub.clip()
    images = clip.encode_images(portraits(demo_dataset, 3))
    texts = clip.encode_texts(["a group photo", "two children"])
    assert images.shape == (3, clip.embed_dim) and texts.shape == (2, clip.embed_dim)
    assert torch.allclose(images.norm(dim=1), torch.ones(3), atol=1e-5)
    assert not torch.allclose(images[0], images[1])


def test_aesthetic_score_is_the_mlp_on_the_normalised_embedding(hub, demo_dataset):
    clip, mlp = hub.clip(), hub.aesthetic()
    embedding = clip.encode_images(portraits(demo_dataset, 2))
    with torch.no_grad():
        score = mlp(embedding)
    x = embedding / embedding.norm(dim=1, keepdim=True)
    for index in (0, 2, 4, 6, 7):  # dropout layers are identity at inference
        layer = mlp.layers[index]
        x = x @ layer.weight.T + layer.bias
    assert score.shape == (2,)
    assert torch.allclose(score, x.squeeze(-1), atol=1e-6)


def _iou(a, b):
    x1, y1, x2, y2 = max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])
    inter = max(0, x2 - x1) * max(0, y2 - y1)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


@pytest.fixture(scope="module")
def detections(hub, demo_dataset):
    """insightface's own FaceAnalysis over every demo portrait (images the models never saw)."""
    app = hub.face_analysis()
    truth = pd.read_parquet(demo_dataset.root / "idglow_demo_truth.parquet")
    results = []
    for row in truth.itertuples():
        image = Image.open(demo_dataset.root / "CelebA-HQ-img" / f"{row.hq_idx}.jpg")
        faces = app.get(pil_to_bgr(image))
        best = max(faces, key=lambda f: _iou(f.bbox, row.bbox), default=None)
        results.append((row, best if best is not None and _iou(best.bbox, row.bbox) >= 0.5 else None))
    return results


def test_face_pack_is_loaded_by_insightface(hub):
    app = hub.face_analysis()
    assert isinstance(app, FaceAnalysis)
    assert {name: type(model).__name__ for name, model in app.models.items()} == {
        "detection": "SCRFD",
        "recognition": "ArcFaceONNX",
        "genderage": "Attribute",
    }


def test_detector_recall_on_held_out_demo_images(detections):
    recall = sum(face is not None for _, face in detections) / len(detections)
    assert recall >= 0.9, recall


def test_recogniser_verification_auc(detections):
    found = [(row.identity, face.normed_embedding) for row, face in detections if face is not None]
    identities = np.array([i for i, _ in found])
    embeddings = np.stack([e for _, e in found])
    similarity = embeddings @ embeddings.T
    upper = np.triu_indices(len(identities), 1)
    same = identities[upper[0]] == identities[upper[1]]
    scores = similarity[upper]
    auc = mannwhitneyu(scores[same], scores[~same]).statistic / (same.sum() * (~same).sum())
    assert auc >= 0.9, auc
    assert all(face.gender in (0, 1) and 0 <= face.age <= 100 for _, face in detections if face is not None)


def test_torch_encoder_equals_onnxruntime_and_passes_gradients(hub, detections, demo_dataset):
    app, encoder = hub.face_analysis(), hub.face_encoder()
    recognizer = app.models["recognition"]
    row, face = next((r, f) for r, f in detections if f is not None)
    bgr = pil_to_bgr(Image.open(demo_dataset.root / "CelebA-HQ-img" / f"{row.hq_idx}.jpg"))
    crop = aligned_crop(bgr, face.kps)
    reference = recognizer.get_feat(crop)
    pixels = torch.from_numpy((crop[:, :, ::-1].astype(np.float32) - 127.5) / 127.5).permute(2, 0, 1)[None]
    pixels.requires_grad_(True)
    ours = encoder(pixels)
    assert np.abs(ours.detach().numpy() - reference).max() < 1e-4
    ours.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0


def _rgb_tensor(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image.astype(np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def test_training_face_path_matches_face_analysis(hub):
    """Raw image -> detect -> differentiable alignment -> torch encoder, against normed_embedding."""
    app, encoder = hub.face_analysis(), hub.face_encoder()
    rng = np.random.default_rng(123)
    checked = 0
    for _ in range(40):
        if checked >= 8:
            break
        image, _ = draw_scene(rng)
        faces = app.get(np.ascontiguousarray(image[:, :, ::-1]))
        pixels = _rgb_tensor(image).requires_grad_(True)
        landmarks = detect_landmarks(app, pixels[0])
        assert len(landmarks) == len(faces)
        embeddings = embed_faces(encoder, align_faces(pixels, [0] * len(landmarks), list(landmarks)))
        for face, embedding in zip(faces, embeddings, strict=True):
            assert float(np.dot(face.normed_embedding, embedding.detach().numpy())) >= 0.99
            checked += 1
        if len(embeddings):
            embeddings.sum().backward()
            assert pixels.grad.abs().sum() > 0
    assert checked >= 8


def test_real_profile_with_a_missing_file_names_it(tmp_path):
    hub = ModelHub("real", tmp_path, device="cpu")
    with pytest.raises(MissingModelFile, match=r"Qwen-Image-Edit-2511/model_index\.json"):
        hub.generator()
    with pytest.raises(MissingModelFile, match=r"clip/ViT-L-14\.pt"):
        hub.clip()


def test_demo_profile_without_building_names_the_missing_file(tmp_path):
    hub = ModelHub("demo", tmp_path, device="cpu", build_missing_twins=False)
    with pytest.raises(MissingModelFile, match=r"insightface/tiny_pack/det_tiny_scrfd\.onnx"):
        hub.face_analysis()


def test_models_check_command(tiny_models_dir, tmp_path):
    def check(*args):
        return subprocess.run(
            [sys.executable, "-m", "idglow.cli", "models", "check", *args], capture_output=True, text=True, timeout=120
        )

    missing = check("--profile", "real", "--models-dir", str(tmp_path))
    assert missing.returncode == 1
    assert f"MISSING       face_pack     {tmp_path}/insightface/buffalo_l/w600k_r50.onnx" in missing.stdout
    assert "non-commercial" in missing.stdout
    present = check("--profile", "demo", "--models-dir", str(tiny_models_dir))
    assert present.returncode == 0, present.stdout
    assert all(s.present for s in check_models("demo", tiny_models_dir))


def _complete_real_directory(root: Path) -> Path:
    """Every file the real profile requires, as small placeholders (the check reads no content
    unless asked to verify hashes)."""
    for component in REAL_COMPONENTS.values():
        for path, _ in component.files(root):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"placeholder for " + path.name.encode())
    return root


def test_real_check_counts_an_unverified_pinned_file_as_present(tmp_path):
    statuses = check_models("real", _complete_real_directory(tmp_path), verify_hashes=False)
    assert all(s.ok for s in statuses), [s.state for s in statuses if not s.ok]
    (clip,) = [s for s in statuses if s.role == CLIP]
    assert clip.expected_sha256 == REAL_COMPONENTS[CLIP].required[0].sha256
    assert not clip.verified and clip.state == "present (unverified)"
    assert {s.state for s in statuses if s.role != CLIP} == {"present"}


def test_real_check_with_verified_hashes_rejects_a_wrong_file(tmp_path):
    statuses = check_models("real", _complete_real_directory(tmp_path), verify_hashes=True)
    (clip,) = [s for s in statuses if s.role == CLIP]
    assert clip.verified and clip.actual_sha256 == sha256_file(clip.path)
    assert not clip.ok and clip.state == "HASH MISMATCH"
    assert all(s.ok for s in statuses if s.role != CLIP)
    right = FileStatus(CLIP, clip.path, True, clip.expected_sha256, clip.expected_sha256)
    assert right.ok and right.state == "present"


def test_models_check_command_passes_on_a_complete_real_directory(tmp_path):
    root = _complete_real_directory(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "idglow.cli", "models", "check", "--profile", "real", "--models-dir", str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "present (unverified)" in result.stdout  # the pinned CLIP file, its hash not computed
    failed = subprocess.run(
        [
            sys.executable,
            "-m",
            "idglow.cli",
            "models",
            "check",
            "--profile",
            "real",
            "--models-dir",
            str(root),
            "--verify-hashes",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert failed.returncode == 1 and "HASH MISMATCH" in failed.stdout


def test_tiny_builds_are_deterministic(tmp_path):
    write_committed_world_generator(tmp_path / "a")
    write_committed_world_generator(tmp_path / "b")
    for name in ("transformer", "vae", "text_encoder"):
        (a,) = (tmp_path / "a" / name).glob("*.safetensors")
        assert sha256_file(a) == sha256_file(tmp_path / "b" / name / a.name)
    small = FaceTrainingConfig(
        detector_scenes=40,
        detector_epochs=1,
        recognizer_identities=8,
        renders_per_identity=2,
        recognizer_epochs=1,
        world_age=WorldAgeConfig(samples=16, epochs=1),
    )
    write_tiny_face_pack(tmp_path / "p1", small, progress=False)
    write_tiny_face_pack(tmp_path / "p2", small, progress=False)
    for onnx_file in (tmp_path / "p1").glob("*.onnx"):
        assert sha256_file(onnx_file) == sha256_file(tmp_path / "p2" / onnx_file.name)


def test_portrait_identity_is_consistent_across_renders(hub):
    """A sanity check on the procedural data itself: one style, two renders, same person."""
    app = hub.face_analysis()
    style = sample_style(np.random.default_rng(77))
    embeddings = []
    for seed in (1, 2):
        image, _ = render_portrait(style, 256, np.random.default_rng(seed))
        (face,) = app.get(pil_to_bgr(image))
        embeddings.append(face.normed_embedding)
    assert float(np.dot(*embeddings)) > 0.3


def test_the_face_pack_stamp_reads_back_equal():
    # build_atomically compares the stamp read from disk with the recipe's: a tuple in the
    # recipe would read back as a list and rebuild the pack on every call.
    stamp = FaceTrainingConfig().recorded()
    assert json.loads(json.dumps(stamp)) == stamp and stamp["world_age"]["scene_sides"] == [64, 96, 128, 256]


def test_a_second_build_of_the_same_folder_waits_and_reuses_the_first(tmp_path):
    # make demo and make test start beside each other in CI: the second asker must not train the
    # component again, nor replace the folder the first is about to read.
    import threading

    from idglow.models.tiny import STAMP_FILE, build_atomically

    folder, stamp, builds = tmp_path / "component", {"recipe": 1}, []
    first_started, second_returned = threading.Event(), threading.Event()

    def build(staging: Path) -> None:
        builds.append(staging)
        first_started.set()
        second_returned.wait(timeout=2)  # without the lock the second build runs meanwhile
        (staging / "weights.bin").write_bytes(b"w")

    first = threading.Thread(target=lambda: build_atomically(folder, stamp, build))
    first.start()
    first_started.wait()
    second = build_atomically(folder, stamp, build)
    second_returned.set()
    first.join()
    assert second is False and len(builds) == 1
    assert sorted(p.name for p in folder.iterdir()) == [STAMP_FILE, "weights.bin"]
