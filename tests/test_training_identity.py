"""The identity term on real detections: a demo group photo against its people's portraits, and
no decoder or face model at all when every lambda is zero."""

import numpy as np
import pytest
import torch
from PIL import Image

from idglow.data.group_photos import write_demo_group_photos
from idglow.data.groups import make_training_groups, split_identities
from training.identity import identity_losses, modulated_identity_term, source_embeddings


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
    losses, detections = identity_losses(image, [sources], app, encoder)
    assert detections[0] >= group_photo["n_subjects"]
    assert 0 < losses.item() < 1
    losses.sum().backward()
    assert image.grad.abs().sum() > 0
    strangers = torch.roll(sources, 1, dims=1)  # same shapes, wrong people
    worse, _ = identity_losses(image.detach(), [strangers], app, encoder)
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
    x_t, velocity = torch.randn(2, 16, 64), torch.randn(2, 16, 64)
    sources = [torch.randn(2, 64), torch.randn(3, 64)]
    args = (x_t, velocity, torch.tensor([0.1, 0.9]))
    off = modulated_identity_term(*args, torch.zeros(2), 64, 64, pipeline.vae, sources, app, encoder)
    assert calls == {"decode": 0, "detect": 0} and off.decoded == 0
    assert torch.equal(off.weighted, torch.zeros(2))
    on = modulated_identity_term(*args, torch.tensor([0.0, 0.1]), 64, 64, pipeline.vae, sources, app, encoder)
    assert calls == {"decode": 1, "detect": 1} and on.decoded == 1
    assert on.weighted[0] == 0 and on.detections[0] == -1
    assert on.weighted[1] == pytest.approx(0.1 * on.losses[1].item())
