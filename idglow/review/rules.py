"""How decisions become outcomes: the final-decision rule, the written rule of review mode
``auto``, and agreement between reviewers (Cohen's and Fleiss' kappa, via statsmodels)."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
from statsmodels.stats.inter_rater import cohens_kappa, fleiss_kappa, to_table

AUTO_RULE_NAME = "auto-rule:every-delta-agrees"


@dataclass(frozen=True)
class FinalRule:
    """An item is decided once it has ``overlap`` standing decisions: accepted when at least
    ``min_accepts`` of them accept and at most ``max_rejects`` reject, rejected otherwise."""

    overlap: int = 1
    min_accepts: int = 1
    max_rejects: int = 0

    @classmethod
    def for_overlap(cls, overlap: int) -> FinalRule:
        """The default: unanimity (one review; two accepts and no reject when overlap is 2; ...)."""
        return cls(overlap=overlap, min_accepts=overlap, max_rejects=0)


def final_decision(standing: list[str], rule: FinalRule) -> str | None:
    """``accept`` / ``reject`` for an item whose standing decisions number ``rule.overlap``, else None."""
    if len(standing) < rule.overlap:
        return None
    accepts, rejects = standing.count("accept"), standing.count("reject")
    return "accept" if accepts >= rule.min_accepts and rejects <= rule.max_rejects else "reject"


def auto_decision(payload: dict) -> str:
    """Review mode ``auto``: accept when every score delta agrees with the preference (chosen at
    least as good as rejected on each metric), reject otherwise."""
    deltas = payload.get("deltas") or {}
    return "accept" if deltas and all(value >= 0 for value in deltas.values()) else "reject"


def pairwise_cohen_kappa(decisions_by_item: dict[int, dict[str, str]]) -> list[dict]:
    """Cohen's kappa for every pair of reviewers over the items both decided (accept/reject)."""
    reviewers = sorted({r for by in decisions_by_item.values() for r in by})
    results = []
    for a, b in combinations(reviewers, 2):
        shared = [(by[a], by[b]) for by in decisions_by_item.values() if a in by and b in by]
        if len(shared) < 2:
            continue
        codes = np.array([[x == "accept", y == "accept"] for x, y in shared], dtype=int)
        table = to_table(codes, bins=[0, 1, 2])[0]
        observed = float(np.trace(table)) / len(shared)
        kappa = float(cohens_kappa(table).kappa) if observed < 1 or table.sum(axis=0).min() > 0 else 1.0
        results.append(
            {
                "reviewers": f"{a} / {b}",
                "items": len(shared),
                "agreement": round(observed, 3),
                "cohen_kappa": round(kappa, 3),
            }
        )
    return results


def fleiss(decisions_by_item: dict[int, dict[str, str]]) -> float | None:
    """Fleiss' kappa over the items with the most common number of raters (at least 2)."""
    sizes = [len(by) for by in decisions_by_item.values() if len(by) >= 2]
    if not sizes:
        return None
    raters = max(set(sizes), key=sizes.count)
    table = np.array(
        [
            [list(by.values()).count("accept"), list(by.values()).count("reject")]
            for by in decisions_by_item.values()
            if len(by) == raters
        ]
    )
    if len(table) < 2:
        return None
    return float(fleiss_kappa(table))
