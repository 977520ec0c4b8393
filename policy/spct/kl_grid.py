"""Choose the online-RL KL coefficient by a small grid (SPCT paper grid: 0, 0.01, 0.02, 0.08).

Each beta runs the RL stage from the same RFT checkpoint with the same rollouts' seeds,
then judges the validation split greedily; the report lists accuracy and parse rate per
beta, so the choice (and how flat it is) is visible.

    python -m policy.spct.kl_grid --rft runs/spct/rft --steps 30 --items 300 --out kl_grid.json
"""

from __future__ import annotations

import argparse
import json

import torch

from policy.spct.data import items_from_tasks
from policy.spct.rl import RLConfig, train_rl
from policy.spct.stage_eval import greedy_eval
from policy.spct.tasks import generate_tasks


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m policy.spct.kl_grid", description=__doc__.split("\n\n")[0])
    p.add_argument("--rft", required=True, help="the RFT checkpoint RL starts from")
    p.add_argument("--betas", default="0,0.01,0.02,0.08")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--prompts", type=int, default=8, help="prompts per RL step (x4 samples)")
    p.add_argument("--items", type=int, default=300, help="validation items judged per beta")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None)
    p.add_argument("--out", default="kl_grid.json")
    args = p.parse_args(argv)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(args.rft)
    train = items_from_tasks(generate_tasks(5000, args.seed + 1, "train"))
    validation = items_from_tasks(generate_tasks(args.items, 0, "validation"))
    base = AutoModelForCausalLM.from_pretrained(args.rft, dtype=torch.float32).to(device)
    rows = [{"beta": None, "validation_greedy": greedy_eval(base, tokenizer, validation)}]
    print(rows[-1], flush=True)
    for beta in [float(b) for b in args.betas.split(",")]:
        model = AutoModelForCausalLM.from_pretrained(args.rft, dtype=torch.float32).to(device)
        stats = train_rl(model, tokenizer, train, RLConfig(steps=args.steps, prompts_per_step=args.prompts,
                                                           beta=beta, seed=args.seed), desc=f"RL beta={beta}")
        rows.append({"beta": beta, "rl": stats, "validation_greedy": greedy_eval(model, tokenizer, validation)})
        print(rows[-1], flush=True)
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
