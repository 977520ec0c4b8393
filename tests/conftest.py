"""Make the service test helpers (``service_helpers``, ``redis_fixtures``) importable from
every test folder: the policy tests start real servers and a real Redis too."""

from __future__ import annotations

import sys
from pathlib import Path

_SERVICES = str(Path(__file__).parent / "services")
if _SERVICES not in sys.path:
    sys.path.insert(0, _SERVICES)
