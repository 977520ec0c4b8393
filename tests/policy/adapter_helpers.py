"""Settings and inputs shared by the adapter tests (the server fixture is in conftest.py).

The limits are the service tests' (``tests/services/service_helpers.py``), with room for
whole judgments, and the server's default sampling equals ``SCORED`` so that the HTTP
endpoint (which takes no per-request options) scores like the gRPC calls.
"""

from __future__ import annotations

from dataclasses import replace

from service_helpers import CONFIG

SCORED = dict(k=4, max_new_tokens=240, seed=0)  # whole judgments: real rewards, enough samples to rank
GRM_CONFIG = replace(CONFIG, limits=replace(CONFIG.limits, max_new_tokens=256),
                     defaults=replace(CONFIG.defaults, **SCORED), http_port=0)
CUT = dict(k=2, max_new_tokens=2, seed=0)  # judgments cut short: unparseable, so unscored
QUERY = "Write one sentence in uppercase that ends with a question mark."
GOOD, BAD = "IS IT BLUE?", "it is blue"  # the bundled GRM scores GOOD above BAD
QUERY2 = "Name some vegetables. Write 3 items, separated by commas."
GOOD2, BAD2 = "carrot, pea, leek", "carrot"
TOO_LONG = "x" * 60_000  # over the service's max_text_chars (50,000): the item is rejected


def batch_calls(server) -> float:
    """ScoreBatch RPCs the server has answered OK so far."""
    return server.metrics.value("grm_requests_total", method="ScoreBatch", code="OK")
