"""Shared settings for the service tests: small limits, fast sampling, a good request.

Kept small so the whole suite runs in a few minutes on two CPU cores: k=2 and 16 new
tokens on a random-weight tiny model (whose judgments are invalid, which exercises the
"unscored" paths for real).
"""

from __future__ import annotations

from grm.types import SamplingOptions
from services.scheduler import SchedulerConfig
from services.server import ServerConfig
from services.validation import Limits

LIMITS = Limits(max_responses=4, max_k=8, max_new_tokens=64, max_batch_items=8, max_text_chars=50_000,
                max_messages=8, max_message_bytes=1 << 20)
DEFAULTS = SamplingOptions(k=2, max_new_tokens=16)
CONFIG = ServerConfig(limits=LIMITS, defaults=DEFAULTS, scheduler=SchedulerConfig(max_wait_ms=5),
                      max_concurrent_rpcs=256, grace_s=10, metrics_port=0)
FAST = dict(k=2, max_new_tokens=16, seed=0)  # client options for a cheap real scoring
QUERY = "Name a prime number."
RESPONSES = ["7", "9"]
