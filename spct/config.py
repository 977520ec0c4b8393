"""The settings of an SPCT run: what the user chose (``SPCTOptions``) and how much work each
stage does (``Budget``: ``FULL`` fits about an hour on 2 CPU cores, ``QUICK`` two minutes).

Example::

    options = SPCTOptions(out="runs/spct", quick=True)
    budget = options.budget          # QUICK
"""

from __future__ import annotations

import dataclasses

from policy.model import ModelSize

STAGES = ("tokenizer", "cold_start", "rft", "rl", "meta_rm")
BETA_GRID = (0.0, 0.01, 0.02, 0.08)  # the paper's grid for the KL coefficient


@dataclasses.dataclass(frozen=True)
class Budget:
    """How much work each stage does; FULL fits 60 minutes on 2 CPU cores, QUICK 2 minutes."""

    size: ModelSize
    train_tasks: int  # two-response training tasks (plus 15% three- and 7% one-response ones)
    cold_steps: int
    cold_batch: int
    cold_time_s: float  # the cold start's cosine runs over whichever ends first: steps or time
    rft_prompts: int
    rft_steps: int
    rl_steps: int
    rl_prompts: int  # prompts per RL step; each gets a group of 4
    meta_prompts: int  # prompts whose GRM samples (x4) join the RFT samples for the meta RM
    meta_steps: int
    eval_items: int  # held-out test items for the per-stage greedy check
    max_new_tokens: int = 256
    meta_time_s: float | None = None  # like cold_time_s, for the meta RM's training
    rl_time_s: float | None = None  # RL stops after this many seconds even if steps remain
    meta_sample_time_s: float | None = None  # the meta RM's fresh sampling stops after this long
    meta_batch: int = 16


FULL = Budget(ModelSize(), train_tasks=20000, cold_steps=1800, cold_batch=32, cold_time_s=1800,
              rft_prompts=480, rft_steps=80, rl_steps=40, rl_prompts=32, rl_time_s=420, meta_prompts=2000,
              meta_steps=1200, meta_time_s=360, meta_sample_time_s=150, eval_items=500)
QUICK = Budget(ModelSize(hidden=64, layers=2, heads=2, intermediate=128), train_tasks=200,
               cold_steps=6, cold_batch=4, cold_time_s=10, rft_prompts=8, rft_steps=2, rl_steps=2,
               rl_prompts=3, meta_prompts=2, meta_steps=2, eval_items=4, max_new_tokens=192, meta_batch=4)


@dataclasses.dataclass(frozen=True)
class SPCTOptions:
    """One SPCT run, as ``grm spct`` takes it (a flag per field)."""

    out: str  # output folder: one checkpoint per stage, report.json
    quick: bool = False  # a tiny model and tiny budgets (for tests)
    base_model: str | None = None  # start from this causal LM instead of nothing
    data: str | None = None  # JSONL preference data instead of the synthetic tasks
    seed: int = 0
    device: str | None = None  # cpu or cuda (default: cuda when available)
    beta: float = 0.08  # KL coefficient of the online RL stage (the paper's)
    beta_grid: bool = False  # pick beta from BETA_GRID by short RL runs judged on validation
    hinted: bool = False  # RFT: one extra hinted sample per prompt
    resume: bool = False  # reuse stage checkpoints already in ``out``
    stop_after: str | None = None  # one of STAGES

    def __post_init__(self) -> None:
        if self.stop_after is not None and self.stop_after not in STAGES:
            raise ValueError(f"SPCTOptions.stop_after must be one of {STAGES}, got {self.stop_after!r}")
        if self.beta < 0:
            raise ValueError(f"SPCTOptions.beta must be >= 0, got {self.beta}")

    @property
    def budget(self) -> Budget:
        return QUICK if self.quick else FULL
