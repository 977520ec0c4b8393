"""The one seed function: every derived random stream in the project starts here.

A request's seed, a sample's index, an item's index and a stage name are mixed by one
stable hash, so the same inputs draw the same stream wherever they are drawn: serving,
evaluation, rejective fine-tuning and RL rollouts all sample the judge through
``GenerativeRewardModel.sample``, which seeds each engine request with
``mix_seed(plan seed, first sample index)``, and the engine seeds sample ``i`` of a request
with ``mix_seed(request seed, i)``.

Example::

    mix_seed(7, 0)                          # a 63-bit int, the same on every machine and run
    mix_seed("grm-eval", 0, 12, "greedy")   # parts may be ints or strings
"""

from __future__ import annotations

import hashlib


def mix_seed(*parts: int | str) -> int:
    """A stable non-negative 63-bit seed from ``parts`` (blake2b of their ``:``-joined text).

    Python's ``hash`` is salted per process, and ``seed * 31 + i`` collides across
    requests (seed 1, sample 0 equals seed 0, sample 31); a hash of the parts does neither.
    """
    digest = hashlib.blake2b(":".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1
