"""``GRPOConfig``: the policy trainer's settings (a dataclass, no torch at import; see
``policy.trainer`` for what each does)."""

from __future__ import annotations

from dataclasses import dataclass

ADVANTAGES = ("std", "none")  # policy.grpo.AdvantageScale
LOSSES = ("token", "sequence", "constant")  # policy.grpo.LossMode


@dataclass(frozen=True)
class GRPOConfig:
    steps: int = 50
    prompts_per_step: int = 8
    group_size: int = 4  # completions per prompt (G)
    lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # max gradient norm; 0 = off
    beta: float = 0.04  # KL coefficient; 0 drops the reference model
    eps_low: float = 0.2  # ratio clipped below at 1 - eps_low
    eps_high: float = 0.28  # and above at 1 + eps_high (DAPO's clip-higher; 0.2 is plain PPO)
    advantage: str = "std"  # "std" (GRPO) | "none" (Dr. GRPO: no division by the group's std)
    loss: str = "token"  # "token" (DAPO) | "sequence" (GRPO) | "constant" (Dr. GRPO)
    num_iterations: int = 1  # optimizer steps per batch of rollouts (GRPO's mu)
    micro_batch_size: int = 16  # completions per forward/backward; gradients are accumulated
    filter_groups: bool = False  # leave groups with all-equal rewards out of the loss (DAPO)
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int = 0
    output_dir: str | None = None  # metrics.jsonl and checkpoints; None = no files
    checkpoint_every: int = 0  # steps between checkpoints (0: only the final one)

    def __post_init__(self) -> None:
        for name in ("steps", "prompts_per_step", "num_iterations", "micro_batch_size", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"GRPOConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.group_size < 2:
            raise ValueError(f"GRPOConfig.group_size must be >= 2 (advantages are relative to the group), "
                             f"got {self.group_size}")
        if not self.lr > 0 or self.beta < 0 or self.grad_clip < 0 or self.checkpoint_every < 0:
            raise ValueError(f"GRPOConfig needs lr > 0, beta >= 0, grad_clip >= 0, checkpoint_every >= 0; got "
                             f"{self.lr}, {self.beta}, {self.grad_clip}, {self.checkpoint_every}")
        if not (0 < self.eps_low < 1 and self.eps_high > 0):
            raise ValueError(f"GRPOConfig needs 0 < eps_low < 1 and eps_high > 0, got {self.eps_low}, {self.eps_high}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"GRPOConfig needs temperature > 0 (GRPO samples) and top_p in (0, 1], got "
                             f"{self.temperature}, {self.top_p}")
        if self.advantage not in ADVANTAGES:
            raise ValueError(f"GRPOConfig.advantage must be one of {ADVANTAGES}, got {self.advantage!r}")
        if self.loss not in LOSSES:
            raise ValueError(f"GRPOConfig.loss must be one of {LOSSES}, got {self.loss!r}")
