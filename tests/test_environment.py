"""The process environment is set by the entry points, never by importing a library module."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from idglow import environment


def _python(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter without HF_HUB_OFFLINE (and ``env`` added); its last
    output line is JSON."""
    clean = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_the_model_hub_leaves_the_environment_alone():
    """No module of ours writes to os.environ while ``idglow.models.hub`` is imported (each write is
    traced to the module that made it: the libraries it imports set variables of their own, such
    as open_clip's TOKENIZERS_PARALLELISM), and huggingface_hub stays as the environment says."""
    answer = _python(
        """
        import json, os, sys

        writes = []

        def traced(method):
            def write(self, key, *value):
                frame = sys._getframe(1)
                while frame.f_globals.get("__name__") in ("os", "_collections_abc"):
                    frame = frame.f_back
                writes.append([frame.f_globals.get("__name__"), key])
                return method(self, key, *value)
            return write

        os._Environ.__setitem__ = traced(os._Environ.__setitem__)
        os._Environ.__delitem__ = traced(os._Environ.__delitem__)
        os.environ.setdefault("IDGLOW_PROBE", "1")  # the tracing works
        import idglow.models.hub
        import huggingface_hub.constants
        ours = [w for w in writes if w[0].split(".")[0] in {"idglow", "assets", "pipelines", "training", "evaluation"}]
        print(json.dumps({"probe": writes[0], "ours": ours, "set": "HF_HUB_OFFLINE" in os.environ,
                          "offline": huggingface_hub.constants.HF_HUB_OFFLINE}))
        """
    )
    assert answer == {"probe": ["__main__", "IDGLOW_PROBE"], "ours": [], "set": False, "offline": False}


def test_the_cli_settles_the_environment_before_a_command_runs(tiny_models_dir):
    answer = _python(
        f"""
        import json, os, sys
        from idglow import cli
        imported_early = "huggingface_hub" in sys.modules
        cli.app(["models", "check", "--profile", "demo", "--models-dir", {str(tiny_models_dir)!r}],
                standalone_mode=False)
        import huggingface_hub.constants
        print(json.dumps({{"imported_early": imported_early, "env": os.environ.get("HF_HUB_OFFLINE"),
                          "offline": huggingface_hub.constants.HF_HUB_OFFLINE}}))
        """
    )
    assert answer == {"imported_early": False, "env": "1", "offline": True}


def test_the_code_location_settles_the_environment_before_it_loads_the_stages(tmp_path):
    answer = _python(
        """
        import json, os
        import pipelines.definitions
        import huggingface_hub.constants, diffusers.utils.hub_utils
        print(json.dumps({"env": os.environ.get("HF_HUB_OFFLINE"), "offline": huggingface_hub.constants.HF_HUB_OFFLINE,
                          "diffusers": diffusers.utils.hub_utils.HF_HUB_OFFLINE}))
        """,
        IDGLOW_PROFILE="demo",
        IDGLOW_STORAGE_ROOT=str(tmp_path / "storage"),
    )
    assert answer == {"env": "1", "offline": True, "diffusers": True}


@pytest.mark.parametrize("module", ["training.sft", "training.dpo", "training.prompt_dpo"])
def test_a_training_process_settles_its_environment_before_it_imports_a_model_library(module):
    """``python -m training.X`` run by hand, with nothing in its environment: it starts offline."""
    answer = _python(
        f"""
        import json, runpy, sys
        sys.argv = ["{module}", "--help"]
        try:
            runpy.run_module("{module}", run_name="__main__", alter_sys=True)
        except SystemExit:
            pass
        import huggingface_hub.constants
        print(json.dumps({{"offline": huggingface_hub.constants.HF_HUB_OFFLINE}}))
        """
    )
    assert answer == {"offline": True}


def test_settle_keeps_a_value_already_set(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    environment.settle()
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_settle_refuses_to_run_after_huggingface_hub_was_imported_online(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # imported online
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with pytest.raises(RuntimeError, match="before idglow.environment.settle"):
        environment.settle()
