"""The static decode step's CPU operations: linear layers on oneDNN-packed weights, with the
step's elementwise work fused into their products, and RMSNorm without a module call.

With few rows (one new token per sample) a linear layer's product is about twice as fast
on a weight reordered once into oneDNN's blocked layout. ``pack`` makes that layout for a
group of layers that read the same input (q, k and v become one product); ``project`` and
``linear`` run a group or a layer on it, ``linear`` with SiLU, a residual add or a gating
product fused in. Given ``packed=None`` they call the modules themselves (a GPU, or a
compiled step that lays out its own weights), with the same results.

Example::

    packed = {group: pack(group) for group in [(attn.q_proj, attn.k_proj, attn.v_proj), (attn.o_proj,)]}
    qkv = project(packed, (attn.q_proj, attn.k_proj, attn.v_proj), x)   # [N, (H + 2 Hkv) D]
    h = linear(packed, attn.o_proj, out, "add", h)                        # h + o_proj(out)
"""

from __future__ import annotations

from typing import Any

import torch


def pack(linears: tuple) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One oneDNN-packed weight for linear layers that read the same input, and their bias
    side by side (None when none has one)."""
    weight = torch.cat([m.weight.detach() for m in linears]) if len(linears) > 1 else linears[0].weight.detach()
    if all(m.bias is None for m in linears):
        return torch.ops.mkldnn._reorder_linear_weight(weight), None
    bias = torch.cat([m.bias.detach() if m.bias is not None else m.weight.new_zeros(m.out_features) for m in linears])
    return torch.ops.mkldnn._reorder_linear_weight(weight), bias


def project(packed: dict | None, modules: tuple, x: torch.Tensor) -> torch.Tensor:
    """The outputs of linear layers that read ``x``, side by side (one product when packed)."""
    if packed is None or (weights := packed.get(modules)) is None:
        return torch.cat([m(x) for m in modules], dim=-1) if len(modules) > 1 else modules[0](x)
    return torch.ops.mkldnn._linear_pointwise(x, weights[0], weights[1], "none", [], "")


def linear(packed: dict | None, module: Any, x: torch.Tensor, then: str = "none",
           other: torch.Tensor | None = None) -> torch.Tensor:
    """``module(x)``, then SiLU (then="swish"), ``+ other`` ("add") or ``* other`` ("mul"), fused
    into the product when packed (the add and the product give the same bits as apart;
    oneDNN's SiLU can differ from torch's in the last bit)."""
    if packed is None or (weights := packed.get((module,))) is None:
        y = module(x)
        return (torch.nn.functional.silu(y) if then == "swish" else y if then == "none"
                else y + other if then == "add" else y * other)
    if then in ("none", "swish"):
        return torch.ops.mkldnn._linear_pointwise(x, weights[0], weights[1], then, [], "")
    return torch.ops.mkldnn._linear_pointwise.binary(x, other, weights[0], weights[1], then)


def rms_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """A Llama/Qwen RMSNorm module's output (its float operations in its order), without the
    module call."""
    y = x.float()
    y = y * y.pow(2).mean(-1, keepdim=True).add_(norm.variance_epsilon).rsqrt_()
    return norm.weight * y.to(x.dtype)
