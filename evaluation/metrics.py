"""The metrics shared by the pair scorer (Eq. 8) and the benchmark.

``face_similarity`` is the one implementation of FaceSim / identity consistency: the scorer,
the benchmark and the training ID loss (as ``1 - face_similarity``) agree by construction.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment


def hungarian_match(source_embeddings: np.ndarray, generated_embeddings: np.ndarray) -> np.ndarray:
    """Eq. 2: for each source, the index of its generated face under the best one-to-one
    assignment (maximum total cosine similarity), or -1 when it gets none."""
    sources = np.asarray(source_embeddings, dtype=np.float64)
    generated = np.asarray(generated_embeddings, dtype=np.float64)
    if sources.ndim != 2 or len(sources) == 0:
        raise ValueError("face_similarity needs at least one source embedding, as an (N, d) array")
    match = np.full(len(sources), -1)
    if generated.size == 0:
        return match
    if generated.ndim != 2 or generated.shape[1] != sources.shape[1]:
        raise ValueError(f"embedding widths differ: sources {sources.shape}, generated {generated.shape}")
    rows, cols = linear_sum_assignment(sources @ generated.T, maximize=True)
    match[rows] = cols
    return match


def matched_similarities(source_embeddings: np.ndarray, generated_embeddings: np.ndarray) -> np.ndarray:
    """Eq. 2: the similarity each source gets under the best one-to-one assignment.

    Rows are L2-normalised embeddings: N sources (N >= 1) and M generated faces (any M). The
    assignment maximises the total cosine similarity (Hungarian algorithm, N != M allowed); a
    source left without a face gets 0. Returns an array of N similarities.
    """
    match = hungarian_match(source_embeddings, generated_embeddings)
    result = np.zeros(len(match))
    found = match >= 0
    if found.any():
        sources = np.asarray(source_embeddings, dtype=np.float64)[found]
        generated = np.asarray(generated_embeddings, dtype=np.float64)[match[found]]
        result[found] = (sources * generated).sum(axis=1)
    return result


def face_similarity(source_embeddings: np.ndarray, generated_embeddings: np.ndarray) -> float:
    """Hungarian-matched mean cosine similarity; an unmatched source counts 0 (Eq. 2-3 reading)."""
    return float(matched_similarities(source_embeddings, generated_embeddings).mean())


CHILD_AGE_BELOW = 18.0  # a face the age model estimates younger than this is judged a child (choice)


def child_rate(ages: np.ndarray, below: float = CHILD_AGE_BELOW) -> float:
    """The share of faces estimated younger than ``below`` (Task 2's children); NaN with no face."""
    ages = np.asarray(ages, dtype=np.float64)
    return float((ages < below).mean()) if len(ages) else float("nan")


def people_count_score(expected: int, found: int) -> float:
    """1 when the image holds exactly ``expected`` faces, 1/2 with one missing or extra, 1/3 with two.

    (choice) Eq. 3 does not punish extra faces; this metric does, symmetrically.
    """
    return 1.0 / (1.0 + abs(int(found) - int(expected)))
