"""Compare online-RL settings from one RFT checkpoint, each judged greedily afterwards.

Every setting starts from the same RFT weights and draws the same prompts and rollout
seeds; the report gives greedy accuracy and parse rate on the validation split (used to
choose) and, with ``--test-items``, on the test split (reported, never used to choose).
``--betas`` is the paper's KL grid (0, 0.01, 0.02, 0.08); ``--configs`` takes any
``RLConfig`` fields, one setting per ``;``. ``--control`` adds, for each setting with a
teacher term, the same number of teacher-only SFT steps at the same learning rate, so the
RL term's own effect is visible.

    python scripts/rl_grid.py --rft runs/spct/rft --betas 0,0.01,0.02,0.08 --steps 13
    python scripts/rl_grid.py --rft runs/spct/rft --test-items 500 --control \\
        --configs "lr=2e-5,prompts_per_step=32;lr=5e-5,prompts_per_step=32,teacher_coef=1"
"""

from __future__ import annotations

import dataclasses
import json

import torch

from spct.data import SPCT_TEMPLATE, items_from_tasks, teacher_batches
from spct.rl import RLConfig, train_rl
from policy.sft import SFTConfig, train_sft
from spct.stage_eval import greedy_eval
from grm.tasks import generate_tasks


def parse_settings(betas: str | None, configs: str | None, base: RLConfig) -> list[RLConfig]:
    """``"0,0.08"`` and ``"lr=2e-5,steps=40;beta=0"`` into RLConfigs (fields checked by name and type)."""
    fields = {f.name: f for f in dataclasses.fields(RLConfig)}
    out = [dataclasses.replace(base, beta=float(b)) for b in betas.split(",")] if betas else []
    for setting in filter(None, (configs or "").split(";")):
        changes = {}
        for pair in setting.split(","):
            name, _, value = pair.partition("=")
            name = name.strip()
            if name not in fields:
                raise ValueError(f"unknown RLConfig field {name!r}; known: {', '.join(fields)}")
            default = getattr(base, name)
            kind = float if default is None else type(default)  # the optional fields are numbers (time_limit_s)
            changes[name] = kind(value.strip())
        out.append(dataclasses.replace(base, **changes))
    return out or [base]


def run_grid(rft: str, settings: list[RLConfig], *, items: int = 300, test_items: int = 0, control: bool = False,
             seed: int = 0, device: str | None = None, out: str = "rl_grid.json") -> list[dict]:
    """Train each setting from the ``rft`` checkpoint and judge it greedily on ``items``
    validation items (and ``test_items`` test items); with ``control``, a teacher-only SFT
    beside each setting with a teacher term. The rows are rewritten to ``out`` after each."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(rft)
    train = items_from_tasks(generate_tasks(5000, seed + 1, "train"))
    splits = {"validation": items_from_tasks(generate_tasks(items, 0, "validation"))}
    if test_items:
        splits["test"] = items_from_tasks(generate_tasks(test_items, 0, "test"))

    def load():
        return AutoModelForCausalLM.from_pretrained(rft, dtype=torch.float32).to(device)

    def judged(model) -> dict:
        return {f"{name}_greedy": greedy_eval(model, tokenizer, items) for name, items in splits.items()}

    rows = [{"setting": "rft", **judged(load())}]
    print(rows[-1], flush=True)
    for cfg in settings:
        model = load()
        stats = train_rl(model, tokenizer, train, cfg, desc=f"RL {cfg}")
        rows.append({"setting": "rl", "rl": stats, **judged(model)})
        print(rows[-1], flush=True)
        if control and cfg.teacher_coef:
            model = load()
            sft = SFTConfig(steps=cfg.steps, lr=cfg.lr, warmup=1, min_lr_ratio=1.0, weight_decay=0.0)
            train_sft(model, teacher_batches(tokenizer, SPCT_TEMPLATE, train, cfg.teacher_batch, cfg.seed + 2), sft,
                      desc="teacher-only control")
            rows.append({"setting": "teacher_sft_control", "steps": cfg.steps, "lr": cfg.lr, **judged(model)})
            print(rows[-1], flush=True)
        with open(out, "w") as f:
            json.dump(rows, f, indent=2)
    return rows

