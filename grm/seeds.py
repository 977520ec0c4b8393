"""The one seed function: every derived random stream in the project starts here.

A stream is named by its parts: a stage name first, then the seeds and indices that pick
it out (``"grm-permutation", seed, j``). The parts are joined with ``:`` and the text
names the stream, so the same parts draw the same stream wherever they are drawn, on
every machine and Python process. ``mix_seed(*parts)`` turns that name into an integer
seed (for torch, numpy or an engine); ``rng(*parts)`` is a ``random.Random`` seeded by
the name itself. No module builds a ``random.Random`` of its own.

Serving, evaluation, rejective fine-tuning and RL rollouts all sample the judge through
``GenerativeRewardModel.sample``, which seeds each engine request with
``mix_seed(plan seed, first sample index)``, and the engine seeds sample ``i`` of a request
with ``mix_seed(request seed, i)``. The judge's own streams are
``rng("grm-permutation", seed, j)`` (the order sample j shows the responses in) and
``rng("grm-best", seed)`` (the tie-break between equal vote sums). A stream named before
this module with another separator passes its whole name as one part and so keeps its
draws: the synthetic tasks are ``rng(f"spct-tasks/{split}/{seed}/{num_responses}/{difficulty}")``.

Example::

    mix_seed(7, 0)                          # a 63-bit int, the same on every machine and run
    mix_seed("grm-eval", 0, 12, "greedy")   # parts may be ints or strings
    rng("grm-permutation", 7, 0).shuffle(order)
"""

from __future__ import annotations

import hashlib
import random


def _name(*parts: int | str) -> str:
    """The text that names the stream of ``parts``: their ``:``-joined text."""
    return ":".join(str(p) for p in parts)


def mix_seed(*parts: int | str) -> int:
    """A stable non-negative 63-bit seed from ``parts`` (blake2b of their stream name).

    Python's ``hash`` is salted per process, and ``seed * 31 + i`` collides across
    requests (seed 1, sample 0 equals seed 0, sample 31); a hash of the parts does neither.
    """
    digest = hashlib.blake2b(_name(*parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def rng(*parts: int | str) -> random.Random:
    """A ``random.Random`` for the stream named by ``parts``.

    Seeded with the stream name as a string, which ``random.seed`` hashes with SHA-512:
    stable across runs and processes (unlike ``hash``), and the same stream as
    ``random.Random("a:b")`` written out by hand before this helper existed.
    """
    return random.Random(_name(*parts))
