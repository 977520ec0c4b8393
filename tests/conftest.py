"""Shared by every test folder.

- The service test helpers (``service_helpers``, ``redis_fixtures``) are importable
  everywhere: the policy tests start real servers and a real Redis too.
- ``tiny_model_path``: a random-weight tiny Llama with its tokenizer and chat template,
  written with ``save_pretrained`` (``grm.testing``) once per session, so tests load it
  through ``from_pretrained`` as a real checkpoint is loaded. The service tests serve it
  as a judge; the adapter tests train it as a GRPO policy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from grm.testing import build_tiny_model

_SERVICES = str(Path(__file__).parent / "services")
if _SERVICES not in sys.path:
    sys.path.insert(0, _SERVICES)


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("grm-model") / "tiny-llama", arch="llama")
