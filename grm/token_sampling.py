"""Per-row token sampling for the in-process engine: temperature, top-p and a seeded stream.

Both of the engine's decode loops (the eager one and the static one in
``grm.static_decode``) draw tokens here, so a request gets the same samples whichever loop
runs it. Sampling is by inverse CDF: row r at decode step t draws one uniform ``u`` and
takes the first token whose cumulative probability exceeds ``u`` (after the top-p cut).

The uniforms come from a counter-based hash of ``(row key, step)`` rather than from a
``torch.Generator`` per row: a row's stream then depends only on its key
(``mix_seed(request.seed, i)``) and the step, never on its batch mates, and a whole call's
uniforms are one ``[rows, steps]`` tensor computed up front, so a decode step needs no
per-row generator calls and can be captured in a CUDA graph. The hash is Wellons'
"lowbias32" (xor-shift-multiply, 32 bits), written with products below 2**63 so int64
tensor arithmetic never overflows.

Example::

    keys = torch.tensor([mix_seed(7, 0), mix_seed(7, 1)])
    u = row_uniforms(keys, steps=16)                    # [2, 16] float64 in (0, 1)
    tokens = sample(logits, temperature, top_p, u[:, 0])  # [2] token ids
"""

from __future__ import annotations

import torch

_M32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``x * c mod 2**32`` for x in [0, 2**32), in two 16-bit halves of c (no int64 overflow)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & _M32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons, "Hash function prospector"): a bijection of [0, 2**32) that mixes well."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def row_uniforms(keys: torch.Tensor, steps: int) -> torch.Tensor:
    """Uniforms in (0, 1) for every row and step: ``[R]`` int64 keys (63-bit) -> ``[R, steps]`` float64.

    Entry ``[r, t]`` depends only on ``keys[r]`` and ``t``.
    """
    keys = keys.to(torch.int64)
    row = _mix32(((keys >> 32) & _M32) ^ _mix32(keys & _M32))  # [R]
    step = _mix32(torch.arange(steps, device=keys.device, dtype=torch.int64) + 0x9E3779B9 & _M32)  # [T]
    h = _mix32(row[:, None] ^ step[None, :])
    return (h.to(torch.float64) + 0.5) / 2.0**32


def sample(logits: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor | None,
           u: torch.Tensor) -> torch.Tensor:
    """One token per row: ``[R, V]`` float logits, ``[R]`` temperature (0 = greedy), ``[R]`` top_p
    (None when every row keeps all tokens), ``[R]`` uniforms -> ``[R]`` token ids.

    Top-p keeps, per row, the most likely tokens whose mass first reaches ``top_p``. A row
    that keeps everything draws along the vocabulary's order, cut rows along the sorted
    one; so a row's token never depends on whether a batch mate cuts.
    """
    greedy = logits.argmax(dim=-1)
    sampled = temperature > 0
    scaled = logits / torch.where(sampled, temperature, torch.ones_like(temperature))[:, None]
    probs = scaled.softmax(dim=-1).to(torch.float64)
    drawn = _draw(probs, u)
    if top_p is not None:
        ranked, order = probs.sort(dim=-1, descending=True)
        mass_before = ranked.cumsum(dim=-1) - ranked  # mass of the tokens ranked above each one
        cut = order.gather(-1, _draw(ranked * (mass_before < top_p[:, None]), u)[:, None]).squeeze(-1)
        drawn = torch.where(top_p < 1, cut, drawn)
    return torch.where(sampled, drawn, greedy)


def _draw(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse CDF: per row the first index whose cumulative (unnormalised) mass exceeds u x total."""
    cdf = probs.cumsum(dim=-1)
    target = (u.to(cdf.dtype) * cdf[:, -1])[:, None]
    return torch.searchsorted(cdf, target, right=True).clamp(max=probs.shape[-1] - 1).squeeze(-1)
