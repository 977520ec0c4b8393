"""A real GRM service for the adapter tests: the bundled GRM behind gRPC and HTTP on free ports.

The bundled GRM (``grm/models/grm-default``) writes parseable judgments for task-style
queries (``grm.tasks``), so rewards come back as real numbers; judgments cut at a
few tokens, or inputs over the service's limits, make the unscored paths happen for real.
Settings and inputs are in ``adapter_helpers.py``.
"""

from __future__ import annotations

import pytest
from adapter_helpers import GRM_CONFIG

from grm.default_model import PACKAGED
from grm.judge import GenerativeRewardModel
from services.cache import MemoryCache
from services.server import BackgroundServer


@pytest.fixture(scope="session")
def grm_server():
    if not (PACKAGED / "config.json").exists():
        pytest.fail("the shipped GRM is missing: grm/models/grm-default")
    bg = BackgroundServer(GenerativeRewardModel.load(str(PACKAGED)), "127.0.0.1:0", GRM_CONFIG,
                          cache_factory=MemoryCache).start()
    yield bg
    bg.stop()
