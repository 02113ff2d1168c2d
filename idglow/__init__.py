"""IdGlow core: framework-free code shared by the Dagster assets, training and evaluation.

Nothing in this package imports Dagster, so a torchrun worker, a notebook or a test can use it.
"""

__version__ = "0.1.0"


def code_version() -> str:
    """The package version and, in a git checkout, the commit (with ``+dirty`` for local changes):
    recorded with every benchmark result."""
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return __version__
    return f"{__version__}+{commit}{'.dirty' if dirty else ''}"
