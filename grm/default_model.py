"""Where the default GRM comes from when no ``--model`` is given.

The package ships a trained checkpoint under ``grm/models/grm-default`` (with its meta RM
under ``grm/models/meta-rm-default``) once one has been trained; until then, and for a
checkout without it, a small untrained model is built once into ``$GRM_HOME``
(default ``~/.cache/grm``) so that every command still runs end to end. An untrained
model writes unparseable judgments, so its results come back unscored, never as 0.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from grm.testing import build_tiny_model

PACKAGED = Path(__file__).parent / "models" / "grm-default"
PACKAGED_META = Path(__file__).parent / "models" / "meta-rm-default"


def grm_home() -> Path:
    return Path(os.environ.get("GRM_HOME", Path.home() / ".cache" / "grm"))


def default_model_path() -> Path:
    """The packaged trained GRM, else a built-once untrained model."""
    if (PACKAGED / "config.json").exists():
        return PACKAGED
    path = grm_home() / "untrained-default"
    if not (path / "config.json").exists():
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        build_tiny_model(tmp, arch="llama", seed=0)
        if path.exists():  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.replace(path)
    return path


def default_meta_rm_path() -> Path | None:
    return PACKAGED_META if (PACKAGED_META / "config.json").exists() else None
