"""face_similarity and the people-count score on hand-computed cases."""

import numpy as np
import pytest

from evaluation.metrics import face_similarity, matched_similarities, people_count_score

E1, E2, E3 = np.eye(3)
HALF = np.array([np.sqrt(0.5), np.sqrt(0.5), 0.0])


def test_perfect_match_in_any_order():
    assert face_similarity(np.stack([E1, E2]), np.stack([E2, E1])) == pytest.approx(1.0)


def test_hungarian_beats_greedy():
    # Greedy would give source 1 the face HALF (0.707) first; the optimum pairs 1->E1, 2->HALF.
    sources = np.stack([E1, E2])
    generated = np.stack([HALF, E1])
    assert matched_similarities(sources, generated).tolist() == pytest.approx([1.0, np.sqrt(0.5)])
    assert face_similarity(sources, generated) == pytest.approx((1 + np.sqrt(0.5)) / 2)


def test_fewer_faces_than_sources_count_zero():
    sources = np.stack([E1, E2, E3])
    assert face_similarity(sources, np.stack([E2])) == pytest.approx(1 / 3)
    assert matched_similarities(sources, np.stack([HALF])).tolist() == pytest.approx([np.sqrt(0.5), 0, 0])


def test_no_faces_at_all():
    assert face_similarity(np.stack([E1, E2]), np.zeros((0, 3))) == 0.0


def test_extra_faces_do_not_lower_identity():
    assert face_similarity(np.stack([E1]), np.stack([E3, E1, E2])) == pytest.approx(1.0)


def test_negative_similarities_are_kept():
    assert face_similarity(np.stack([E1]), np.stack([-E1])) == pytest.approx(-1.0)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="at least one source"):
        face_similarity(np.zeros((0, 3)), np.stack([E1]))
    with pytest.raises(ValueError, match="widths differ"):
        face_similarity(np.stack([E1]), np.ones((1, 4)))


@pytest.mark.parametrize("expected, found, score", [(2, 2, 1.0), (2, 1, 0.5), (3, 4, 0.5), (3, 0, 0.25)])
def test_people_count(expected, found, score):
    assert people_count_score(expected, found) == pytest.approx(score)
