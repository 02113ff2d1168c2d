"""The code location ``workspace.yaml`` loads: ``defs`` for the profile in ``IDGLOW_PROFILE``.

The definitions assemble themselves from the stage modules, every module of the ``assets``
package: each one's module-level assets, asset specs, asset checks, jobs, schedules and sensors
(``dg.load_definitions_from_modules``), and what its ``profile_definitions(profile)`` returns,
where it has one (the definitions built per profile: the training assets, ``sft_ablation``). A
new job, sensor or asset in a stage module, or a new stage module, needs no edit here
(tests/test_definitions.py walks the modules to check). What is set once for all of them is
set here: the resources (``pipelines.resources.resources_for``) and the executor.
"""

from __future__ import annotations

import importlib
import pkgutil
import warnings
from types import ModuleType

import dagster as dg

import assets
from idglow.environment import settle
from idglow.profiles import Profile, load_profile

settle()  # before the stage modules import the model libraries


def stage_modules() -> list[ModuleType]:
    """Every module of the ``assets`` package, in name order."""
    return [importlib.import_module(f"{assets.__name__}.{info.name}") for info in pkgutil.iter_modules(assets.__path__)]


def build_definitions(profile: Profile) -> dg.Definitions:
    """Assemble the pipeline for ``profile``.

    The demo profile executes each run in one process (a laptop CPU gains nothing from a
    process per step and pays for each start); the real profile uses the multiprocess executor.
    """
    from pipelines.resources import resources_for  # imports the model hub: after settle()

    modules = stage_modules()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.PreviewWarning)  # the loader is marked preview in Dagster 1.13
        found = dg.load_definitions_from_modules(modules)
    built = [module.profile_definitions(profile) for module in modules if hasattr(module, "profile_definitions")]
    executor = dg.in_process_executor if profile.name == "demo" else dg.multiprocess_executor
    return dg.Definitions.merge(found, *built, dg.Definitions(resources=resources_for(profile), executor=executor))


defs = build_definitions(load_profile())
