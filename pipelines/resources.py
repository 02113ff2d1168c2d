"""Resources per profile: the same assets, configured for the demo laptop or the GPU cluster."""

from __future__ import annotations

from typing import Any

import dagster as dg

from assets.inference import IdglowRay
from assets.resources import IdglowSettings, ModelHubResource
from idglow.profiles import Profile


def resources_for(profile: Profile) -> dict[str, Any]:
    return {
        "settings": IdglowSettings.from_profile(profile),
        "models": ModelHubResource(),
        "pipes_subprocess_client": dg.PipesSubprocessClient(),  # training runs (assets/training.py)
        "ray_cluster": IdglowRay.from_environment(),  # batch inference: embedded, or IDGLOW_RAY_ADDRESS's cluster
    }
