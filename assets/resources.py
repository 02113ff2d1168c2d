"""The two resources every asset reads, generated from the active profile (idglow/profiles.py).

``settings`` has one field per profile setting, its default the profile's value; a setting an
environment variable sets (``idglow.profiles.ENVIRONMENT_FIELDS``) defaults to that variable
through ``dg.EnvVar``, read where the run executes. Each field shows in the Dagster UI's resource
view and a run's config can override it; nothing is copied by hand, so a field added to the
profile shows up here. ``models`` loads the components the settings name (docs/models.md).
"""

from __future__ import annotations

import os
import types
import typing
from dataclasses import fields, replace
from pathlib import Path

import dagster as dg

from idglow.models.hub import ModelHub
from idglow.paths import ArtifactPaths, TableRoots
from idglow.profiles import ENVIRONMENT_FIELDS, Profile, defaults, field_from_text

# Not settings: the profile's name is the resource's ``profile`` field, and the demo's dataset
# recipe is part of the profile itself.
_NOT_SETTINGS = ("name", "demo_dataset")
_HINTS = typing.get_type_hints(Profile)
# What ``dg.EnvVar`` and ``dg.EnvVar.int`` return (the latter, dagster's IntEnvVar, is no EnvVar).
_ENVIRONMENT_VALUES = (dg.EnvVar, type(dg.EnvVar.int("IDGLOW_TRAINING_GPUS")))


def setting_names() -> list[str]:
    return [f.name for f in fields(Profile) if f.name not in _NOT_SETTINGS]


def _config_type(hint):
    """The Dagster config type of a profile field: paths are text, tuples lists, and a
    count-or-"auto" field text (Dagster config has no unions but Optional)."""
    if hint == int | str:
        return str
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in typing.get_args(hint)
    inner = next(arg for arg in typing.get_args(hint) if arg is not type(None)) if optional else hint
    if inner is Path:
        inner = str
    elif typing.get_origin(inner) is tuple:
        inner = list[str]
    return inner | None if optional else inner


def _config_value(hint, value):
    if hint == int | str or isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _profile_value(name: str, value):
    """A resource field's value as the profile's field has it."""
    hint = _HINTS[name]
    if value is None:
        return None
    if isinstance(value, str) and hint is not str:
        return value if hint == int | str and not value.lstrip("-").isdigit() else field_from_text(name, value)
    if isinstance(value, list):
        return tuple(value)
    return value


class IdglowSettings(dg.ConfigurableResource):
    """The active profile's settings (see docs/configuration.md); build it with ``from_profile``."""

    profile: str = "demo"

    @classmethod
    def from_profile(cls, profile: Profile, env: typing.Mapping[str, str] | None = None) -> IdglowSettings:
        """The settings of ``profile``: a resource class with a field per setting, defaulting to
        the profile's value, or to its environment variable where ``env`` (default the process's)
        sets one."""
        env = os.environ if env is None else env
        annotations, values = {"profile": str}, {"profile": profile.name}
        for name in setting_names():
            annotations[name] = _config_type(_HINTS[name])
            variable = ENVIRONMENT_FIELDS.get(name)
            if variable and env.get(variable):
                values[name] = dg.EnvVar.int(variable) if annotations[name] is int else dg.EnvVar(variable)
            else:
                values[name] = _config_value(_HINTS[name], getattr(profile, name))
        namespace = {"__annotations__": annotations, "__module__": __name__, "__doc__": cls.__doc__, **values}
        return type(cls.__name__, (cls,), namespace)()

    def resolved(self) -> Profile:
        """The profile these settings describe: the profile's plain defaults with every field's
        value here (nothing read from the environment at run time)."""
        values = {name: _profile_value(name, self._value(name)) for name in setting_names()}
        return replace(defaults(self.profile, values["storage_root"]), **values)

    def _value(self, name: str):
        """A field's value; an ``EnvVar`` default is read here when the resource is used outside a
        run (a script, a test), where Dagster has not resolved it."""
        value = getattr(self, name)
        return value.get_value() if isinstance(value, _ENVIRONMENT_VALUES) else value

    @property
    def paths(self) -> ArtifactPaths:
        return ArtifactPaths(Path(self._value("storage_root")))

    @property
    def roots(self) -> TableRoots:
        """What the paths in tables are stored relative to, and resolved against, in this run."""
        profile = self.resolved()
        return TableRoots(profile.storage_root, profile.celebahq_source.absolute())


class ModelHubResource(dg.ConfigurableResource):
    """Every model component the settings name, loaded once per process (docs/models.md). Where
    the models are and which CLIP file is trusted are settings (``models_dir``, ``clip_sha256``);
    the device is this resource's own."""

    device: str | None = None  # "cuda", "cpu", or unset for CUDA when available

    def hub(self, settings: IdglowSettings) -> ModelHub:
        return ModelHub.of_profile(settings.resolved(), device=self.device)
