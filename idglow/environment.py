"""The process environment, settled once by each entry point before any model library is imported.

``settle()`` is the first thing the entry points do: the ``idglow`` command (``idglow.cli``), the
code location (``pipelines.definitions``), and whatever else starts a process that loads models.
No library module sets the environment at import time: importing ``idglow.models.hub`` leaves
``os.environ`` as it was.

``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, when it is imported, and transformers and
diffusers copy its value when they are (``huggingface_hub.constants.HF_HUB_OFFLINE``); setting
the variable afterwards changes nothing. ``settle()`` therefore refuses to run late: when
``huggingface_hub`` was already imported with another value, it raises instead of letting a
process think it is offline.
"""

from __future__ import annotations

import os
import sys

# Nothing is downloaded from a model or data hub: every model is read from a local folder
# (docs/models.md). A value already set (by the Makefile, a deployment, a user) is kept.
DEFAULTS = {"HF_HUB_OFFLINE": "1"}


def _is_true(value: str | None) -> bool:
    """How huggingface_hub reads a flag (huggingface_hub.constants._is_true)."""
    return value is not None and value.upper() in {"1", "ON", "YES", "TRUE"}


def settle() -> None:
    """Set ``DEFAULTS`` in ``os.environ`` where unset; raise if ``huggingface_hub`` was imported
    before with a different ``HF_HUB_OFFLINE`` (the entry point settled too late)."""
    for name, value in DEFAULTS.items():
        os.environ.setdefault(name, value)
    constants = sys.modules.get("huggingface_hub.constants")
    wanted = _is_true(os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE"))
    if constants is not None and constants.HF_HUB_OFFLINE != wanted:
        raise RuntimeError(
            "huggingface_hub was imported before idglow.environment.settle() ran, with HF_HUB_OFFLINE "
            f"{constants.HF_HUB_OFFLINE}: call settle() at the entry point, before anything imports it"
        )
