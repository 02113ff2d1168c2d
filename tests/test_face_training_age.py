"""The world age recipe of the tiny gender/age model (``FaceTrainingConfig.world_age``): it tells
young children from adults on held-out portraits, and leaving it out trains the constant-age model
of recipe version 4 exactly."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from insightface.app.common import Face
from insightface.model_zoo import model_zoo

from idglow.data.faces import YOUNG_CHILD_AGES, render_portrait, sample_style
from idglow.models.face_nets import TinyGenderAge, export_onnx
from idglow.models.face_training import (
    CANVAS,
    FaceTrainingConfig,
    WorldAgeConfig,
    _attribute_crop,
    _fit,
    _to_input,
    train_genderage,
)

SMALL = FaceTrainingConfig(genderage_samples=24, genderage_epochs=1, world_age=None)


def _todays_recipe(config: FaceTrainingConfig) -> TinyGenderAge:
    """``train_genderage`` as it was before the world age recipe (a verbatim copy of recipe 4)."""
    rng = np.random.default_rng([config.seed, 3])
    crops, genders = [], []
    for _ in range(config.genderage_samples):
        style = sample_style(rng)
        image, truth = render_portrait(style, CANVAS, rng)
        crops.append(_to_input(_attribute_crop(np.asarray(image), truth.bbox), 128.0))
        genders.append(int(style.male))
    x_all, y_all = torch.stack(crops), torch.tensor(genders)
    torch.manual_seed(config.seed)
    model = TinyGenderAge().train()

    def gender_age_loss(index: torch.Tensor) -> torch.Tensor:
        out = model(x_all[index])
        return F.cross_entropy(out[:, :2], y_all[index]) + F.mse_loss(out[:, 2], torch.full((len(index),), 0.3))

    _fit(
        list(model.parameters()), len(x_all), config.genderage_epochs, 64, gender_age_loss, config.seed, "", False, 1e-4
    )
    return model.eval()


def _single_thread(train):
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # as write_tiny_face_pack trains
    try:
        return train()
    finally:
        torch.set_num_threads(previous)


def test_without_world_age_the_model_is_recipe_4s():
    ours = _single_thread(lambda: train_genderage(SMALL, progress=False))
    today = _single_thread(lambda: _todays_recipe(SMALL))
    ours_state, today_state = ours.state_dict(), today.state_dict()
    assert ours_state.keys() == today_state.keys()
    for name, value in ours_state.items():
        assert torch.equal(value, today_state[name]), name


def _auc(child: np.ndarray, adult: np.ndarray) -> float:
    """P(a child's predicted age < an adult's), ties counted half: any constant predictor scores 0.5."""
    return float((child[:, None] < adult[None, :]).mean() + (child[:, None] == adult[None, :]).mean() / 2)


def test_world_age_tells_children_from_adults_on_held_out_portraits(tmp_path):
    world_age = WorldAgeConfig(samples=500, epochs=8, scene_fraction=0.0, box_jitter=0.0)
    model = _single_thread(lambda: train_genderage(replace(SMALL, world_age=world_age), progress=False))
    path = export_onnx(model, torch.zeros(1, 3, 96, 96), tmp_path / "genderage.onnx", ["fc1"])
    attributes = model_zoo.get_model(str(path))  # insightface's attribute model, as FaceAnalysis loads it
    attributes.prepare(ctx_id=-1)
    assert attributes.taskname == "genderage"

    rng = np.random.default_rng([12345, 7])  # identities no training stream draws
    ages = {"adult": [], "child": []}
    for _ in range(40):
        style = sample_style(rng)
        for group, age in (
            ("adult", None),
            ("child", int(rng.integers(YOUNG_CHILD_AGES.start, YOUNG_CHILD_AGES.stop))),
        ):
            image, truth = render_portrait(style, CANVAS, rng, age=age)
            face = Face(bbox=np.asarray(truth.bbox, dtype=np.float32))
            attributes.get(np.ascontiguousarray(np.asarray(image)[:, :, ::-1]), face)  # BGR, as the pipeline
            ages[group].append(face.age)
    child, adult = np.array(ages["child"]), np.array(ages["adult"])
    assert _auc(child, adult) > 0.75, (child, adult)
    assert np.median(child) < np.median(adult) - 5
