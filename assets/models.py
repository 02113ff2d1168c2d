"""The model components every stage uses: built (demo) or checked (real), hashed, smoke-tested."""

import dagster as dg
import pandas as pd
from PIL import Image

from assets.resources import IdglowSettings, ModelHubResource
from idglow.editing import ReferenceBudget
from idglow.models.registry import ROLES, check_models, component_fingerprint
from idglow.models.smoke import smoke_test


@dg.asset(group_name="models", code_version="1", deps=["celebahq_images"], kinds={"pytorch", "onnx"})
def model_weights(
    context: dg.AssetExecutionContext, models: ModelHubResource, settings: IdglowSettings
) -> dg.MaterializeResult:
    """The generator, prompt model, CLIP, aesthetic MLP and face pack of the active profile.

    The demo profile builds its tiny twins here (the face models train once, about two minutes
    on one CPU thread, then are reused); the real profile checks its local weights. Each
    component is fingerprinted for lineage and loaded and run once on three catalog portraits.
    """
    hub = models.hub(settings)
    built = hub.prepare()
    if built:
        context.log.info(f"built tiny components: {built}")
    missing = [s for s in check_models(hub.profile, hub.models_dir) if not s.present]
    if missing:
        raise dg.Failure(
            description="model files missing: " + ", ".join(str(s.path) for s in missing),
            metadata={
                "run": dg.MetadataValue.text(
                    f"idglow models check --profile {hub.profile} --models-dir {hub.models_dir}"
                )
            },
        )
    catalog = pd.read_parquet(settings.paths.catalog)
    profile = settings.resolved()
    portraits = [Image.open(profile.celebahq_source / path).convert("RGB") for path in catalog["path"].head(3)]
    timings = smoke_test(hub, portraits, ReferenceBudget.of_profile(profile))
    fingerprints = {role: component_fingerprint(hub.profile, role, hub.models_dir) for role in ROLES}
    return dg.MaterializeResult(
        metadata={
            "models_uri": dg.MetadataValue.path(str(hub.models_dir)),
            "device": dg.MetadataValue.text(str(hub.device)),
            "built_now": dg.MetadataValue.json(built),
            "fingerprints": dg.MetadataValue.json(fingerprints),
            "timings_s": dg.MetadataValue.json(timings),
            "generate_s": dg.MetadataValue.float(timings["generate_s"]),
        },
        data_version=dg.DataVersion("-".join(fingerprints[role][:12] for role in ROLES)),
    )
