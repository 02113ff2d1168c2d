"""The one face module: insightface's channel order, batched detection that sees exactly what
``FaceAnalysis.get`` sees, and the portrait's face chosen by size."""

import numpy as np
import pytest
from PIL import Image

from idglow.data.group_photos import write_demo_group_photos
from idglow.data.groups import make_training_groups, split_identities
from idglow.faces import (
    Faces,
    count_faces,
    detect_faces,
    detect_faces_batched,
    embedding_width,
    pil_to_bgr,
    portrait_embedding,
)


@pytest.fixture(scope="module")
def demo_images(demo_dataset, demo_ingest, tmp_path_factory):
    """Two demo group photos and their portraits, plus a blank image with no face."""
    catalog = demo_ingest.catalog
    groups = make_training_groups(catalog, split_identities(catalog, 10, 0), 4, 0, seed=0)
    photos = write_demo_group_photos(groups, catalog, demo_dataset.root, tmp_path_factory.mktemp("faces"), 2, 256, 0)
    paths = [*photos["photo_path"], *dict.fromkeys(p for paths in photos["condition_paths"] for p in paths)]
    return [Image.open(p).convert("RGB") for p in paths] + [Image.new("RGB", (128, 128), (128, 128, 128))]


def test_pil_to_bgr_reverses_the_channels_of_a_hand_made_image():
    image = Image.new("RGB", (3, 2), (10, 20, 30))
    image.putpixel((2, 1), (200, 100, 0))
    bgr = pil_to_bgr(image)
    assert bgr.shape == (2, 3, 3) and bgr.dtype == np.uint8 and bgr.flags["C_CONTIGUOUS"]
    assert bgr[0, 0].tolist() == [30, 20, 10]
    assert bgr[1, 2].tolist() == [0, 100, 200]
    assert pil_to_bgr(Image.new("L", (1, 1), 7))[0, 0].tolist() == [7, 7, 7]  # grey becomes three channels


def test_batched_detection_equals_one_image_at_a_time(hub, demo_images):
    app = hub.face_analysis()
    one_by_one = [detect_faces(app, image) for image in demo_images]
    batched = detect_faces_batched(app, demo_images, batch_size=3, ages=True)
    assert len(batched) == len(demo_images)
    assert sum(len(f) for f in one_by_one) >= len(demo_images)  # the group photos hold several faces
    assert len(one_by_one[-1]) == 0 and batched[-1].embeddings.shape == (0, embedding_width(app))
    for single, batch in zip(one_by_one, batched, strict=True):
        assert np.array_equal(single.boxes, batch.boxes)
        assert single.embeddings.shape == batch.embeddings.shape
        assert np.allclose(single.embeddings, batch.embeddings, atol=1e-5)
        assert np.allclose(np.linalg.norm(batch.embeddings, axis=1), 1, atol=1e-5)
        assert np.array_equal(single.ages, batch.ages) and not np.isnan(batch.ages).any()
    without_ages = detect_faces_batched(app, demo_images[:1])[0]
    assert len(without_ages.ages) == len(one_by_one[0]) and np.isnan(without_ages.ages).all()
    assert [count_faces(app, image) for image in demo_images] == [len(f) for f in one_by_one]


def test_portrait_embedding_is_the_largest_face_or_zeros():
    faces = Faces(
        boxes=np.array([[0, 0, 10, 10], [0, 0, 30, 20], [5, 5, 20, 20]], dtype=float),
        embeddings=np.eye(3, dtype=np.float32),
        ages=np.full(3, np.nan),
    )
    assert portrait_embedding(faces).tolist() == [0, 1, 0]
    empty = Faces(np.zeros((0, 4)), np.zeros((0, 5), dtype=np.float32), np.zeros(0))
    assert portrait_embedding(empty).tolist() == [0.0] * 5
