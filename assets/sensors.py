"""Sensors: start work when its inputs change outside Dagster."""

import hashlib
import os

import dagster as dg

from assets.resources import IdglowSettings
from idglow.data import celebahq


def source_fingerprint(root) -> str:
    """Cheap change detection for a CelebA-HQ root: the annotation files' sizes and modification
    times, and the number of entries in the image folder (no image is read)."""
    digest = hashlib.sha256()
    for name in (celebahq.MAPPING_FILE, celebahq.IDENTITY_FILE, celebahq.ATTRIBUTE_FILE, celebahq.PARTITION_FILE):
        path = root / name
        if path.exists():
            stat = path.stat()
            digest.update(f"{name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    image_dir = root / celebahq.IMAGE_DIR
    count = sum(1 for _ in os.scandir(image_dir)) if image_dir.is_dir() else -1
    digest.update(f"images:{count}".encode())
    return digest.hexdigest()


@dg.sensor(job_name="ingest_and_groups", minimum_interval_seconds=300, default_status=dg.DefaultSensorStatus.STOPPED)
def celebahq_source_changed(context: dg.SensorEvaluationContext, settings: IdglowSettings):
    """Re-run the ingest and the groups when the CelebA-HQ root changes (files added, removed or
    re-annotated). The cursor is the root's fingerprint; the first evaluation only records it."""
    profile = settings.resolved()
    root = profile.celebahq_source
    if not root.exists():
        return dg.SkipReason(f"{root} does not exist yet")
    fingerprint = source_fingerprint(root)
    if context.cursor is None:
        context.update_cursor(fingerprint)
        return dg.SkipReason("recorded the source's fingerprint")
    if fingerprint == context.cursor:
        return dg.SkipReason("source unchanged")
    context.update_cursor(fingerprint)
    return dg.RunRequest(run_key=fingerprint, tags={"idglow/trigger": "celebahq source changed"})
