"""The identity term on real detections: a demo group photo against its people's portraits, and
no decoder or face model at all when every lambda is zero."""

import hashlib
import json
import shutil
from functools import partial

import numpy as np
import onnx
import pytest
import torch
from diffusers import AutoencoderKLQwenImage
from insightface.app import FaceAnalysis
from onnx import TensorProto, helper
from peft import LoraConfig
from PIL import Image
from safetensors.torch import load_file, save_file

from idglow.data.group_photos import write_demo_group_photos
from idglow.data.groups import make_training_groups, split_identities
from idglow.models.face_torch import detect_landmarks, to_bgr_uint8
from idglow.models.hub import FACE_ANALYSIS, ModelHub
from idglow.models.registry import FACE_PACK
from idglow.storage import atomic_dir
from training.flow import decode, noisy, pack, predict_velocity, vae_scale_factor
from training.identity import IdentityLoss, identity_losses, modulated_identity_term, source_embeddings
from training.sft import SFTConfig


@pytest.fixture(scope="module")
def group_photo(demo_dataset, demo_ingest, tmp_path_factory):
    catalog = demo_ingest.catalog
    groups = make_training_groups(catalog, split_identities(catalog, 10, 0), 4, 0, seed=0)
    photos = write_demo_group_photos(groups, catalog, demo_dataset.root, tmp_path_factory.mktemp("photo"), 1, 256, 0)
    return photos.iloc[0]


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]


def test_identity_loss_on_a_real_group_photo_has_gradient(hub, group_photo):
    app, encoder = hub.face_analysis(), hub.face_encoder()
    sources = source_embeddings(app, [Image.open(p) for p in group_photo["condition_paths"]])
    image = _tensor(Image.open(group_photo["photo_path"])).requires_grad_(True)
    losses, detections = identity_losses(image, [sources], partial(detect_landmarks, app), encoder)
    assert detections[0] >= group_photo["n_subjects"]
    assert 0 < losses.item() < 1
    losses.sum().backward()
    assert image.grad.abs().sum() > 0
    strangers = torch.roll(sources, 1, dims=1)  # same shapes, wrong people
    worse, _ = identity_losses(image.detach(), [strangers], partial(detect_landmarks, app), encoder)
    assert worse.item() > losses.item()


def test_no_decoder_and_no_face_model_when_every_lambda_is_zero(hub, monkeypatch):
    pipeline, app, encoder = hub.generator(), hub.face_analysis(), hub.face_encoder()
    calls = {"decode": 0, "detect": 0}
    original_decode, original_detect = pipeline.vae.decode, app.det_model.detect

    def counting_decode(*args, **kwargs):
        calls["decode"] += 1
        return original_decode(*args, **kwargs)

    def counting_detect(*args, **kwargs):
        calls["detect"] += 1
        return original_detect(*args, **kwargs)

    monkeypatch.setattr(pipeline.vae, "decode", counting_decode)
    monkeypatch.setattr(app.det_model, "detect", counting_detect)
    tokens = (64 // (2 * vae_scale_factor(pipeline.vae))) ** 2  # a 64 px image's latent, packed 2 x 2
    x_t, velocity = torch.randn(2, tokens, 64), torch.randn(2, tokens, 64)
    sources = [torch.randn(2, 64), torch.randn(3, 64)]
    args = (x_t, velocity, torch.tensor([0.1, 0.9]))
    off = modulated_identity_term(
        *args, torch.zeros(2), 64, 64, pipeline.vae, sources, partial(detect_landmarks, app), encoder
    )
    assert calls == {"decode": 0, "detect": 0} and off.decoded == 0
    assert torch.equal(off.weighted, torch.zeros(2))
    on = modulated_identity_term(
        *args, torch.tensor([0.0, 0.1]), 64, 64, pipeline.vae, sources, partial(detect_landmarks, app), encoder
    )
    assert calls == {"decode": 1, "detect": 1} and on.decoded == 1
    assert on.weighted[0] == 0 and on.detections[0] == -1
    assert on.weighted[1] == pytest.approx(0.1 * on.losses[1].item())


def test_id_loss_detects_faces_with_the_metrics_face_analysis(hub, tmp_path):
    """The loss and FaceSim must see the same faces: one FaceAnalysis, one det_size, one threshold."""
    pack = hub.path(FACE_PACK)
    config = SFTConfig(
        generator_dir=str(hub.path("generator")),
        shards=str(tmp_path),
        output_dir=str(tmp_path),
        face_pack_dir=str(pack),
    )
    loss, metric = IdentityLoss(hub.generator(), config), hub.face_analysis()
    size = (FACE_ANALYSIS.det_size, FACE_ANALYSIS.det_size)
    assert loss.app.det_size == metric.det_size == size
    assert loss.app.det_thresh == metric.det_thresh == FACE_ANALYSIS.det_thresh
    # the demo's detector has a static 128^2 input, which insightface keeps over det_size; a
    # dynamic one (buffalo_l's) takes det_size: either way both see the same sizes
    assert loss.app.det_model.input_sizes == metric.det_model.input_sizes
    assert loss.app is metric


def _write_landmark_model(path, outputs: int) -> None:
    """An ONNX graph shaped like buffalo_l's landmark models (192^2 input, one output), which
    insightface routes to its Landmark task by shape."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Gemm", ["flat", "weight"], ["fc1"]),
        ],
        "landmarks",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, outputs])],
        [helper.make_tensor("weight", TensorProto.FLOAT, [3, outputs], np.zeros(3 * outputs, np.float32))],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8), str(path))


def test_face_analysis_skips_the_landmark_models_of_a_full_pack(tiny_models_dir, tmp_path):
    pack = tmp_path / "insightface" / "tiny_pack"
    shutil.copytree(tiny_models_dir / "insightface" / "tiny_pack", pack)
    _write_landmark_model(pack / "1k3d68.onnx", 3309)
    _write_landmark_model(pack / "2d106det.onnx", 212)
    everything = FaceAnalysis(name=str(pack), providers=["CPUExecutionProvider"])
    assert {"landmark_3d_68", "landmark_2d_106"} <= set(everything.models)  # insightface would load them
    app = ModelHub("demo", tmp_path, device="cpu", build_missing_twins=False).face_analysis()
    assert set(app.models) == set(FACE_ANALYSIS.modules) == {"detection", "recognition", "genderage"}


# ---------------------------------------------------------------- teacher forcing

FIT_RECIPE = {"version": 2, "base_dim": 12, "steps": 700, "lr": 2e-3, "face_weight": 4.0, "seed": 0}


def fit_reconstructing_decoder(
    image: torch.Tensor, face_boxes: np.ndarray
) -> tuple[AutoencoderKLQwenImage, torch.Tensor]:
    """A small Qwen-Image VAE whose decoder, with a latent fitted jointly, reproduces ``image``.

    The tiny generator's VAE has random weights and decodes any latent to noise, so no clean
    estimate of it can hold a face. This fixture stands in for a trained VAE: an auto-decoder
    fitted to the one group photo the test needs (face regions weighted up so the features
    survive), about three minutes on one CPU thread, then cached beside the tiny twins. 700 steps:
    the tiny detector scores the demo photo's faces barely above its threshold (0.57 for one), and
    after 400 steps the reconstruction of that face fell below it on one machine."""
    torch.manual_seed(FIT_RECIPE["seed"])
    vae = AutoencoderKLQwenImage(
        base_dim=FIT_RECIPE["base_dim"],
        z_dim=16,
        dim_mult=[1, 2, 4, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 16,
        latents_std=[1.0] * 16,
    )
    side = image.shape[-1]
    latent = torch.nn.Parameter(torch.randn(1, 16, 1, side // 8, side // 8))
    weight = torch.ones(1, 1, side, side)
    for x1, y1, x2, y2 in face_boxes[:, :4].astype(int):
        weight[..., max(y1, 0) : y2 + 1, max(x1, 0) : x2 + 1] = FIT_RECIPE["face_weight"]
    lr, steps = FIT_RECIPE["lr"], FIT_RECIPE["steps"]
    decoder = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    optimizer = torch.optim.Adam([{"params": decoder}, {"params": [latent], "lr": lr * 5}], lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[lr, lr * 5], total_steps=steps, pct_start=0.1)
    for _ in range(steps):
        error = decode(vae, latent) - image
        loss = (weight * (error.abs() + error**2)).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    return vae.eval().requires_grad_(False), latent.detach()


@pytest.fixture(scope="module")
def teacher_forcing_case(hub, tiny_models_dir, demo_dataset, demo_ingest, tmp_path_factory):
    catalog = demo_ingest.catalog
    groups = make_training_groups(catalog, split_identities(catalog, 10, 0), 4, 0, seed=0)
    photos = write_demo_group_photos(groups, catalog, demo_dataset.root, tmp_path_factory.mktemp("tf"), 1, 128, 0)
    row = photos.iloc[0]
    image = _tensor(Image.open(row["photo_path"]))
    app = hub.face_analysis()
    key = hashlib.sha256(image.numpy().tobytes() + json.dumps(FIT_RECIPE).encode()).hexdigest()[:16]
    cache = tiny_models_dir / "test_fixtures" / f"reconstructing_vae-{key}"
    if (cache / "latent.safetensors").exists():
        vae = AutoencoderKLQwenImage.from_pretrained(cache).eval().requires_grad_(False)
        latent = load_file(str(cache / "latent.safetensors"))["latent"]
    else:
        boxes, _ = app.det_model.detect(to_bgr_uint8(image[0]))
        vae, latent = fit_reconstructing_decoder(image, boxes)
        with atomic_dir(cache) as tmp:
            vae.save_pretrained(tmp)
            save_file({"latent": latent.contiguous()}, str(tmp / "latent.safetensors"))
    sources = source_embeddings(app, [Image.open(p) for p in row["condition_paths"]])
    return row, vae, latent, sources


@pytest.mark.slow
def test_teacher_forced_clean_estimate_gives_faces_identity_and_lora_gradient(hub, teacher_forcing_case):
    """v = u_t + small noise in value (gradient still through the LoRA transformer), so that
    x0_hat = x_t - t v decodes to the group photo: the identity term must see its faces."""
    row, vae, latent, sources = teacher_forcing_case
    app, encoder = hub.face_analysis(), hub.face_encoder()
    transformer = hub.generator().transformer
    lora = LoraConfig(
        r=4, lora_alpha=4, init_lora_weights="gaussian", target_modules=["to_q", "to_k", "to_v", "to_out.0"]
    )
    transformer.add_adapter(lora, adapter_name="teacher_forcing")
    try:
        transformer.set_adapter("teacher_forcing")
        generator = torch.Generator().manual_seed(0)
        x0 = pack(latent)  # (1, 64, 64): 8 x 8 tokens of the 128 px photo
        refs = torch.randn(1, 2 * 16, 64, generator=generator)  # two 64 px references
        prompt = torch.randn(1, 6, transformer.config.joint_attention_dim, generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        sigma = torch.tensor([0.6])
        x_t = noisy(x0, noise, sigma)
        model_velocity = predict_velocity(
            transformer, x_t, refs, prompt, None, sigma, [(1, 8, 8), (1, 4, 4), (1, 4, 4)]
        )
        forced = noise - x0 + 0.01 * torch.randn(x0.shape, generator=generator)
        velocity = model_velocity - model_velocity.detach() + forced  # forced value, the model's gradient

        term = modulated_identity_term(
            x_t, velocity, sigma, torch.tensor([0.1]), 128, 128, vae, [sources], partial(detect_landmarks, app), encoder
        )
        assert term.decoded == 1
        assert term.detections[0] >= row["n_subjects"]
        assert 0 < term.losses[0].item() < 1
        term.weighted.sum().backward()
        lora_grads = [
            p.grad for name, p in transformer.named_parameters() if "teacher_forcing" in name and p.grad is not None
        ]
        assert lora_grads and max(g.abs().max().item() for g in lora_grads) > 0
    finally:
        transformer.delete_adapters("teacher_forcing")
