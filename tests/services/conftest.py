"""Session fixtures for the service tests: one tiny model, one in-process server on port 0.

The model is ``tiny_model_path`` (tests/conftest.py): a random-weight tiny Llama read back
with ``from_pretrained``. The server is a real grpc.aio server on 127.0.0.1:0 with an
in-memory cache, run on its own event loop.
"""

from __future__ import annotations

import pytest

from grm.judge import GenerativeRewardModel
from grm_cli.common import set_threads
from service_helpers import CONFIG
from services.cache import MemoryCache
from services.client import RetryPolicy, RewardClient
from services.server import BackgroundServer


@pytest.fixture(scope="session")
def judge(tiny_model_path) -> GenerativeRewardModel:
    """The server's judge. Torch gets CPUs - 1 threads, as under ``grm serve`` (see set_threads)."""
    set_threads(0)
    return GenerativeRewardModel.load(str(tiny_model_path))


@pytest.fixture(scope="session")
def local_judge(tiny_model_path) -> GenerativeRewardModel:
    """A second, in-process judge on the same weights, to compare the service against."""
    return GenerativeRewardModel.load(str(tiny_model_path))


@pytest.fixture(scope="session")
def server(judge):
    bg = BackgroundServer(judge, "127.0.0.1:0", CONFIG, cache_factory=MemoryCache).start()
    yield bg
    bg.stop()


@pytest.fixture
def client(server):
    """No retries, so a test sees exactly the status the server answered."""
    with RewardClient(server.address, timeout_s=60, retry=RetryPolicy(max_attempts=1)) as c:
        yield c
