"""The engine's static-shape decode loop: preallocated buffers, one step function, shared prompt keys.

``TransformersEngine`` prefills each distinct prompt once. The eager loop then copies the
prompt's keys and values to each of its n samples and calls the Hugging Face forward once
per token, which on a GPU is bound by Python and kernel launches and on a CPU reads the
prompt's keys n times per step. This loop instead:

- lays the call's rows out in ``R x S`` slots (R prompts, S = the largest n; slot (j, i) is
  sample i of prompt j, empty when i >= n_j) and preallocates everything a step touches:
  the prompts' keys and values once per prompt ``[R, Hkv, P, D]``, the samples' own
  keys and values ``[R*S, Hkv, T, D]`` for the call's largest budget T, the tokens,
  positions, step counter and every row's uniforms (``grm.token_sampling``);
- runs one step function over them that writes in place: each layer attends to its
  prompt's keys (all S samples of a prompt in one matrix product, so the prompt is read
  once per step, not S times) and to its own keys, with one softmax over both;
- samples inside the step, and looks at the tokens on the host only every
  ``check_every`` steps (EOS, budgets, and the requests' ``wanted``).

On CUDA the step's forward is compiled with ``torch.compile`` (Inductor fuses the norms,
RoPE and softmax: a small model's step is otherwise hundreds of tiny kernel launches;
sampling after it runs eagerly), then the whole step is captured once per shape bucket in
a CUDA graph and replayed (rows, prompt width and budget are rounded up to buckets so
calls share graphs). Compiling takes tens of seconds per bucket, once per process; a step
that fails to compile or to capture runs eagerly instead (``compile_error`` /
``capture_error`` say why). On a CPU it runs eagerly: the linear weights are kept a second
time in oneDNN's packed layout (``grm.cpu_ops``: q, k and v as one weight; the residual adds
and the MLP's gating fused into their products), repacked whenever the weights change in
place, and each step reads only the own slots written so far, not all T. ``supports(model)``
says whether a model's decoder layers are ones this step walks (Llama, Qwen2, Qwen3 full
attention); otherwise the engine uses its eager loop.

Example::

    decoder = StaticDecoder(model)
    rows = decoder.decode(requests, budgets, prefix, prefix_mask, eos_ids, stats)
    rows[(j, i)]          # (token ids, the EOS id that ended it or None)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

from grm.cpu_ops import linear, pack, project, rms_norm
from grm.engine import GenerationRequest
from grm.seeds import mix_seed
from grm.token_sampling import row_uniforms, sample

ARCHITECTURES = ("llama", "qwen2", "qwen3")  # decoder layers of this shape: norm, attention, norm, MLP
_GRAPHS_KEPT = 4  # bucket shapes whose buffers (and CUDA graphs) are kept; least recently used dropped


def supports(model: Any) -> str | None:
    """Why ``model`` cannot use the static step, or None when it can."""
    config = model.config
    if config.model_type not in ARCHITECTURES:
        return f"model_type {config.model_type!r} is not one of {ARCHITECTURES}"
    if getattr(config, "use_sliding_window", False) and getattr(config, "sliding_window", None):
        return "a sliding attention window"
    if any(t != "full_attention" for t in getattr(config, "layer_types", None) or ()):
        return "layers other than full attention"
    if model.training:
        return "the model is in training mode"
    return None


def dense_enough(requests: Sequence[GenerationRequest]) -> bool:
    """Whether the ``R x S`` layout wastes at most half its slots (S = the largest n): one dense group."""
    return len(dense_groups(requests)) == 1


def dense_groups(requests: Sequence[GenerationRequest]) -> list[list[int]]:
    """Request indices in groups that each fill at least half of their own layout (by n,
    largest first, a group taking requests while it stays dense): an evaluation's greedy
    n=1 rows beside its samples decode as a second layout, not as empty slots."""
    groups: list[list[int]] = []
    width = total = 0  # the open group's S (its first, largest n) and its sum of n
    for j in sorted(range(len(requests)), key=lambda j: -requests[j].n):
        if groups and (len(groups[-1]) + 1) * width <= 2 * (total + (n := requests[j].n)):  # dense with j
            groups[-1].append(j)
            total += n
        else:
            groups.append([j])
            width = total = requests[j].n
    return [sorted(group) for group in groups]  # each in call order: one group is the call as it came


def _bucket(n: int, floor: int) -> int:
    """The next power of two >= n (at least ``floor``)."""
    return max(floor, 1 << (n - 1).bit_length())


@dataclass
class _Buffers:
    """Everything one step reads and writes; fixed addresses, so a CUDA graph can replay it."""

    prefix: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [R, Hkv, P, D]
    prefix_bias: torch.Tensor  # [R, 1, 1, P] 0 at real prompt slots, -inf at padding
    own: list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values) [N, Hkv, T, D], N = R*S
    tokens: torch.Tensor  # [N] the token each row feeds next
    positions: torch.Tensor  # [N] its position
    step: torch.Tensor  # [1] tokens generated so far (all rows move together)
    temperature: torch.Tensor  # [N] 0 = greedy
    top_p: torch.Tensor | None  # [N]; None when no row cuts
    uniforms: torch.Tensor  # [N, T] float64
    out: torch.Tensor  # [N, T] the sampled tokens


class StaticDecoder:
    """Decodes one engine call with static shapes (see the module docstring)."""

    def __init__(self, model: Any, check_every: int = 4, graphs: bool | None = None,
                 compile_step: bool | None = None):
        self.model = model
        self.check_every = check_every
        self.device = torch.device(model.device)
        self.graphs = self.device.type == "cuda" if graphs is None else graphs
        # the compiled step: on CUDA by default (measured faster there); None until first used
        self.compile_step = self.device.type == "cuda" if compile_step is None else compile_step
        self.compile_error: str | None = None
        self._compiled: Any = None
        # Round shapes up to buckets and keep their buffers between calls (graphs need both;
        # on a CPU only tests turn it on, to run the padded layout the graphs replay).
        self.buckets = self.graphs
        self.capture_error: str | None = None  # why capturing failed, after which steps run eagerly
        inner = model.model
        self.layers, self.embed, self.norm, self.rotary = inner.layers, inner.embed_tokens, inner.norm, inner.rotary_emb
        self.head_dim, self.kv_heads = self.layers[0].self_attn.head_dim, model.config.num_key_value_heads
        self.silu = getattr(model.config, "hidden_act", None) == "silu"  # the MLP's gate: fused on a CPU
        self._captured: dict[tuple, tuple[_Buffers, torch.cuda.CUDAGraph]] = {}
        # packed weights for the eager CPU step (a compiled step lays out its own)
        self.can_pack = self.device.type == "cpu" and torch.backends.mkldnn.is_available()
        self.pack = self.can_pack and not self.compile_step
        self._packed: dict[tuple, tuple] = {}  # linear modules -> (their weights packed as one, bias)
        self._packed_version: tuple[int, ...] = ()

    # -- one call ------------------------------------------------------------------------

    def decode(self, requests: Sequence[GenerationRequest], budgets: Sequence[int],
               prefix: Sequence[tuple[torch.Tensor, torch.Tensor]], prefix_mask: torch.Tensor,
               eos_ids: set[int], stats: dict[str, int]) -> dict[tuple[int, int], tuple[list[int], int | None]]:
        """Sample every request's n continuations.

        ``prefix``: per layer the prompts' keys and values ``[R, Hkv, P, D]`` (each prompt but
        its last token, left-padded), ``prefix_mask`` ``[R, P]`` its real slots. Adds to
        ``stats["generated_tokens"]`` as it goes and to ``stats["abandoned_rows"]``.
        """
        if prefix_mask.shape[1] == 0:  # every prompt is one token: one masked slot stands in
            prefix_mask = prefix_mask.new_zeros(len(requests), 1)
            empty = torch.zeros(len(requests), self.kv_heads, 1, self.head_dim,
                                dtype=self.embed.weight.dtype, device=self.device)
            prefix = [(empty, empty)] * len(self.layers)
        if self.pack:
            self._repack()
        cuts = any(r.top_p < 1 for r in requests)
        shape = self._shape(len(requests), max(r.n for r in requests), prefix_mask.shape[1], max(budgets), cuts)
        buffers, graph = self._buffers(shape)
        self._fill(buffers, requests, prefix, prefix_mask)
        tracker = _Tracker(requests, shape[1], budgets, eos_ids, stats)
        tracker.update([[] for _ in range(buffers.out.shape[0])], 0)  # callers gone already (a later group's)
        done = 0
        while not tracker.finished:
            if graph is not None:
                graph.replay()
            else:
                self._step(buffers, live=done + 1)
            done += 1
            if done % self.check_every == 0 or done == max(budgets):
                tracker.update(buffers.out[:, tracker.seen:done].tolist(), done)
        return tracker.result()

    def _shape(self, prompts: int, width: int, prefix: int, budget: int, cuts: bool) -> tuple:
        """(R, S, P, T, top-p used) of the buffers: exact, or rounded up to buckets."""
        if not self.buckets:
            return prompts, width, prefix, budget, cuts
        return _bucket(prompts, 1), _bucket(width, 1), -(-prefix // 256) * 256, _bucket(budget, 32), cuts

    def _buffers(self, shape: tuple) -> tuple[_Buffers, Any]:
        """The buffers for ``shape`` and its captured graph (None when the step runs eagerly)."""
        if not self.buckets:
            return self._allocate(*shape), None
        if shape not in self._captured:
            while len(self._captured) >= _GRAPHS_KEPT:
                self._captured.pop(next(iter(self._captured)))
            buffers = self._allocate(*shape)
            self._captured[shape] = (buffers, self._capture(buffers) if self.graphs else None)
            if self.capture_error is not None:
                self._captured.clear()  # drop graphs captured before: every step runs eagerly now
                self._captured[shape] = (buffers, None)
        self._captured[shape] = self._captured.pop(shape)  # most recently used last
        return self._captured[shape]

    def _allocate(self, prompts: int, width: int, prefix: int, budget: int, cuts: bool) -> _Buffers:
        """Zeroed buffers; the prompts' keys get their own only when bucketed (else the prefill's are used)."""
        rows, dtype, device = prompts * width, self.embed.weight.dtype, self.device
        kv = lambda n, length: torch.zeros(n, self.kv_heads, length, self.head_dim, dtype=dtype, device=device)
        return _Buffers(
            prefix=[(kv(prompts, prefix), kv(prompts, prefix)) for _ in self.layers] if self.buckets else [],
            prefix_bias=torch.zeros(prompts, 1, 1, prefix, dtype=dtype, device=device),
            own=[(kv(rows, budget), kv(rows, budget)) for _ in self.layers],
            tokens=torch.zeros(rows, dtype=torch.long, device=device),
            positions=torch.zeros(rows, dtype=torch.long, device=device),
            step=torch.zeros(1, dtype=torch.long, device=device),
            temperature=torch.zeros(rows, device=device),
            top_p=torch.ones(rows, device=device) if cuts else None,
            uniforms=torch.full((rows, budget), 0.5, dtype=torch.float64, device=device),
            out=torch.zeros(rows, budget, dtype=torch.long, device=device))

    def _fill(self, b: _Buffers, requests: Sequence[GenerationRequest],
              prefix: Sequence[tuple[torch.Tensor, torch.Tensor]], prefix_mask: torch.Tensor) -> None:
        """Write one call's prompts, rows and options into the buffers (in place: graphs keep them).

        Slots past a prompt's width keep stale keys; their bias is -inf, so they weigh 0."""
        prompts, p = len(requests), prefix_mask.shape[1]
        stride = b.out.shape[0] // b.prefix_bias.shape[0]  # S of the buffers (>= the call's when bucketed)
        if self.buckets:
            for (keys, values), (k, v) in zip(b.prefix, prefix):
                keys[:prompts, :, :p], values[:prompts, :, :p] = k, v
        else:
            b.prefix = list(prefix)
        b.prefix_bias.fill_(float("-inf"))
        b.prefix_bias[:prompts, 0, 0, :p].masked_fill_(prefix_mask.bool(), 0.0)
        slots = [j * stride + i for j, r in enumerate(requests) for i in range(r.n)]
        index = torch.tensor(slots, device=self.device)
        owners = [r for r in requests for _ in range(r.n)]
        b.tokens.zero_().index_copy_(0, index, torch.tensor([r.prompt_ids[-1] for r in owners], device=self.device))
        b.positions.zero_().index_copy_(0, index, torch.tensor([len(r.prompt_ids) - 1 for r in owners],
                                                               device=self.device))
        b.step.zero_()
        b.temperature.zero_().index_copy_(0, index, torch.tensor([float(r.temperature) for r in owners],
                                                                 device=self.device))
        if b.top_p is not None:
            b.top_p.fill_(1.0).index_copy_(0, index, torch.tensor([float(r.top_p) for r in owners],
                                                                  device=self.device))
        keys = torch.tensor([mix_seed(r.seed, i) for r in requests for i in range(r.n)], device=self.device)
        b.uniforms.fill_(0.5).index_copy_(0, index, row_uniforms(keys, b.out.shape[1]))

    # -- the step ------------------------------------------------------------------------

    def _repack(self) -> None:
        """Pack every linear weight the step uses, unless packed since the last in-place change.
        Projections that read the same input (q, k, v) share one packed weight."""
        version = tuple(p._version for p in self.model.parameters())  # bumped by in-place writes
        if version == self._packed_version:
            return
        groups = [(self.model.lm_head,)]
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            groups += [(attn.q_proj, attn.k_proj, attn.v_proj), (attn.o_proj,), (mlp.gate_proj,), (mlp.up_proj,),
                       (mlp.down_proj,)]
        self._packed = {group: pack(group) for group in groups}
        self._packed_version = version

    def _on(self) -> dict | None:
        return self._packed if self.pack else None

    def _capture(self, b: _Buffers) -> torch.cuda.CUDAGraph | None:
        """Record one step; two eager steps first on a side stream warm up the kernels.

        A step that cannot be captured (an op that syncs with the host) turns graphs off for
        good: the same step then runs eagerly, slower but the same tokens."""
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                self._step(b)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step(b)
        except RuntimeError as error:
            self.graphs, self.capture_error = False, str(error)
            return None
        return graph

    def _step(self, b: _Buffers, live: int | None = None) -> None:
        """Feed ``b.tokens``, sample the next ones into ``b.out[:, step]``, advance in place.
        ``live``: the own slots written so far, this step's included (read only those; the
        compiled step and a captured graph read all T, masked)."""
        logits = None
        if self.compile_step:
            if self._compiled is None:
                self._compiled = torch.compile(self._logits, dynamic=False)
            try:
                with torch.no_grad():
                    logits = self._compiled(b)
            except Exception as error:  # noqa: BLE001 - any compiler failure: the eager step is the same step
                self.compile_step, self.compile_error = False, f"{type(error).__name__}: {error}"[:500]
                self.pack = self.can_pack  # from the next call on
        with torch.inference_mode():
            if logits is None:
                logits = self._logits(b, live)
            self._advance(b, logits)

    def _logits(self, b: _Buffers, live: int | None = None) -> torch.Tensor:
        """The forward of one step: ``[N, V]`` float32 logits of the next token, every layer's
        keys and values written in place. This is the part that is compiled; sampling stays
        eager (its float64 cumulative sums over a large vocabulary are what Inductor failed on)."""
        h = self.embed(b.tokens[:, None])[:, 0]  # [N, hidden] (fed as [N, 1], as a forward feeds it)
        cos, sin = self.rotary(h, b.positions[:, None])  # [N, 1, D]
        half = cos.shape[-1] // 2  # rotate_half(x) * sin == cat(x2, x1) * (sin with its first half negated)
        sin = torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)
        t = b.out.shape[1] if live is None else live
        own_bias = torch.where(torch.arange(t, device=self.device) <= b.step, 0.0, float("-inf"))
        own_bias = own_bias.to(h.dtype)  # [t]: the own slots written so far, this step's included
        prefix_bias = b.prefix_bias.expand(-1, self.kv_heads, -1, -1).flatten(0, 1)  # [R*Hkv, 1, P]
        for layer, prefix, (keys, values) in zip(self.layers, b.prefix, b.own):
            x = self._attend(layer.self_attn, rms_norm(layer.input_layernorm, h), cos, sin, prefix, prefix_bias,
                             (keys[:, :, :t], values[:, :, :t]), own_bias, b.step)
            h = linear(self._on(), layer.self_attn.o_proj, x, "add", h)
            x, mlp = rms_norm(layer.post_attention_layernorm, h), layer.mlp
            gate = linear(self._on(), mlp.gate_proj, x, "swish") if self.silu else mlp.act_fn(linear(self._on(), mlp.gate_proj, x))
            h = linear(self._on(), mlp.down_proj, linear(self._on(), mlp.up_proj, x, "mul", gate), "add", h)
        return linear(self._on(), self.model.lm_head, rms_norm(self.norm, h)).float()

    def _advance(self, b: _Buffers, logits: torch.Tensor) -> None:
        """Sample each row's token from ``logits`` and move every row one step on, in place."""
        token = sample(logits, b.temperature, b.top_p, b.uniforms.index_select(1, b.step).squeeze(1))
        b.out.index_copy_(1, b.step, token[:, None])
        b.tokens.copy_(token)
        b.positions.add_(1)
        b.step.add_(1)

    def _attend(self, attn: Any, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                prefix: tuple[torch.Tensor, torch.Tensor], prefix_bias: torch.Tensor,
                own: tuple[torch.Tensor, torch.Tensor], own_bias: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """One attention layer for one new token per row: ``[N, hidden]`` -> ``[N, H*D]``, before o_proj.

        Scores against the prompt's keys (in the prompt's layout: its S*G query rows per key
        head) and against the row's own keys share one softmax, which is exactly attention
        over their concatenation.
        """
        n, d, kv, prompts = x.shape[0], self.head_dim, self.kv_heads, prefix[0].shape[0]
        width = n // prompts  # S
        qkv = project(self._on(), (attn.q_proj, attn.k_proj, attn.v_proj), x)
        heads = qkv.shape[-1] // d - 2 * kv
        qk = qkv[:, :(heads + kv) * d].view(n, heads + kv, d)
        if hasattr(attn, "q_norm"):  # Qwen3 normalises each head before RoPE
            qk = torch.cat([rms_norm(attn.q_norm, qk[:, :heads]), rms_norm(attn.k_norm, qk[:, heads:])], dim=1)
        half = d // 2  # RoPE, the models' own formula: x * cos + rotate_half(x) * sin
        qk = qk * cos + torch.cat([qk[..., half:], qk[..., :half]], dim=-1) * sin  # [N, H+Hkv, D]
        own[0].index_copy_(2, step, qk[:, heads:, None])
        own[1].index_copy_(2, step, qkv[:, (heads + kv) * d:].view(n, kv, 1, d))
        groups, t = heads // kv, own[0].shape[2]  # G: query heads per key head (head h reads key head h // G)
        q = qk[:, :heads].reshape(prompts, width, kv, groups, d)
        shared = q.transpose(1, 2).reshape(prompts * kv, width * groups, d)
        keys, values = prefix[0].flatten(0, 1), prefix[1].flatten(0, 1)  # [R*Hkv, P, D]
        s_prefix = torch.baddbmm(prefix_bias, shared, keys.transpose(1, 2), alpha=attn.scaling)  # [R*Hkv, S*G, P]
        s_own = torch.baddbmm(own_bias, q.reshape(n * kv, groups, d), own[0].flatten(0, 1).transpose(1, 2),
                              alpha=attn.scaling)  # [N*Hkv, G, T]
        s_own = s_own.view(prompts, width, kv, groups, t).transpose(1, 2).reshape(prompts * kv, width * groups, t)
        weights = torch.cat([s_prefix, s_own], dim=-1).float().softmax(dim=-1).to(qk.dtype)
        out = torch.bmm(weights[..., :keys.shape[1]], values).view(prompts, kv, width, groups, d)
        w_own = weights[..., keys.shape[1]:].view(prompts, kv, width, groups, t).transpose(1, 2)
        own_out = torch.bmm(w_own.reshape(n * kv, groups, t), own[1].flatten(0, 1))  # [N*Hkv, G, D]
        return own_out.view(prompts, width, kv, groups, d).add_(out.transpose(1, 2)).view(n, heads * d)


class _Tracker:
    """The host's view of a call: which rows ended where, read from the sampled tokens in chunks."""

    def __init__(self, requests: Sequence[GenerationRequest], stride: int, budgets: Sequence[int],
                 eos_ids: set[int], stats: dict[str, int]):
        self.requests, self.eos_ids, self.stats = requests, eos_ids, stats
        # slot in the [R*S] layout -> (request index, sample index, budget)
        self.rows = {j * stride + i: (j, i, budgets[j]) for j, r in enumerate(requests) for i in range(r.n)}
        self.tokens: dict[int, list[int]] = {slot: [] for slot in self.rows}
        self.ended: dict[int, int | None] = {}  # slot -> its EOS id (None: budget or abandoned)
        self.seen = 0  # steps read so far

    @property
    def finished(self) -> bool:
        return len(self.ended) == len(self.rows)

    def update(self, out: list[list[int]], steps: int) -> None:
        """Read steps ``seen..steps`` (``out``: per buffer row, those tokens), then ask ``wanted``."""
        for slot, (j, i, budget) in self.rows.items():
            if slot in self.ended:
                continue
            for token in out[slot]:
                self.stats["generated_tokens"] += 1
                if token in self.eos_ids:
                    self.ended[slot] = token
                    break
                self.tokens[slot].append(token)
                if len(self.tokens[slot]) >= budget:
                    self.ended[slot] = None
                    break
        self.seen = steps
        unwanted = {j for j, r in enumerate(self.requests) if r.wanted is not None and not r.wanted()}
        for slot, (j, _, _) in self.rows.items():
            if j in unwanted and slot not in self.ended:  # its callers left: keep what it wrote, unfinished
                self.ended[slot] = None
                self.stats["abandoned_rows"] += 1

    def result(self) -> dict[tuple[int, int], tuple[list[int], int | None]]:
        return {(j, i): (self.tokens[slot], self.ended[slot]) for slot, (j, i, _) in self.rows.items()}
