"""The library's defaults, each written once: how many judgments, how hot, how long.

``SamplingOptions``, ``GenerativeRewardModel.score``, ``GenerationRequest`` and the
``grm score`` / ``grm serve`` / ``grm grpo`` flags (their help text included) take these
names, so changing a default here changes it everywhere.

Example::

    SamplingOptions()     # k=K, temperature=TEMPERATURE, max_new_tokens=MAX_NEW_TOKENS
    default_k_meta(8)     # 4: meta voting keeps the better-rated half
"""

from __future__ import annotations

K = 8  # judgments sampled per input
TEMPERATURE = 0.5  # the paper's temperature for inference-time scaling (DeepSeek-GRM)
TOP_P = 1.0  # nucleus sampling mass: 1 keeps the whole distribution
MAX_NEW_TOKENS = 512  # tokens per judgment


def default_k_meta(k: int) -> int:
    """Samples meta voting keeps when ``k_meta`` is not given: half of ``k``, at least one."""
    return max(1, k // 2)
