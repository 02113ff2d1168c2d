"""How a dynamic partition gets its keys: one way for each kind of caller.

The dynamic partition sets are ``generation_rounds`` (assets.preference: a round of candidate
generation, opened by whoever starts the round: `idglow demo`, the rehearsal, an operator),
``review_batches`` (assets.review: one per published review batch) and ``model_versions``
(assets.benchmark: one per trained model version).

Code that creates the thing a key names adds the key while it runs, with ``add_partitions``:
``review_queue`` when it publishes a batch, ``model_registry`` when it registers versions, a
script when it opens a round. The key must exist before anything downstream runs for it (the
sensors request runs for it, the UI shows it at once), and an asset has no other way to add keys:
a ``MaterializeResult`` carries none. The instance ignores keys it already holds, so a rerun adds
nothing twice.

A sensor never writes to the instance itself: it returns the keys in its result
(``SensorResult(dynamic_partitions_requests=add_request(...))``), which the daemon applies
together with the tick's runs and cursor (only when the evaluation succeeds, recorded in the
tick's history), and which a test reads from the result without an instance.
"""

from __future__ import annotations

from collections.abc import Iterable

import dagster as dg


def add_partitions(instance: dg.DagsterInstance, partitions: dg.DynamicPartitionsDefinition, keys: Iterable[str]):
    """Add ``keys`` to ``partitions`` now (those the instance holds already are left as they are)."""
    instance.add_dynamic_partitions(partitions.name, list(keys))


def add_request(
    partitions: dg.DynamicPartitionsDefinition, keys: Iterable[str]
) -> list[dg.AddDynamicPartitionsRequest] | None:
    """What a sensor returns to add ``keys`` to ``partitions`` (None when there are none)."""
    keys = list(keys)
    return [partitions.build_add_request(keys)] if keys else None
