"""``grm grpo``: GRPO on a Hugging Face causal LM, rewarded by the service, a GRM or a function.

    grm grpo --model path/to/policy --prompts prompts.jsonl --target 127.0.0.1:50051 \\
        --steps 200 --group-size 8 --judge-k 4 --output-dir runs/grpo
    grm grpo --model path/to/policy --prompts prompts.txt --grm default --per-response
    grm grpo --model path/to/policy --prompts prompts.jsonl --reward-function my_rewards:exact_match

Every ``GRPOConfig`` field is a flag (``--beta``, ``--eps-high``, ``--loss sequence``,
``--advantage none``, ``--filter-groups``, ...; ``grm grpo --help`` lists them). Metrics go
to ``OUTPUT_DIR/metrics.jsonl`` and checkpoints to ``OUTPUT_DIR/step-N`` and ``final``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
from pathlib import Path

from policy.args import add_grpo_arguments
from policy.config import GRPOConfig
from policy.rewards import Conversation, FunctionReward, LocalGRMReward, RewardBackend, ServiceReward


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="grm grpo", description=__doc__.split("\n\n")[0])
    add_grpo_arguments(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    return run(parse_args(argv))


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from grm.transformers_engine import default_device_dtype
    from policy.trainer import GRPOTrainer

    cfg = GRPOConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GRPOConfig)})
    prompts = load_prompts(args.prompts)
    reward = reward_backend(args)
    device, _ = default_device_dtype(args.device, None)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model).to(device).eval()
    print(f"policy {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters on {device}; "
          f"{len(prompts)} prompts; reward {reward.name}")
    history = GRPOTrainer(model, tokenizer, reward, prompts, cfg).train()
    scored = [h["reward"] for h in history if h["reward"] is not None]
    if scored:
        print(f"mean reward: first step {scored[0]:.3f}, last step {scored[-1]:.3f}")
    return 0


def load_prompts(path: str | Path) -> list[Conversation]:
    """Prompts from JSONL (``prompt``, ``query``, ``conversation`` or ``messages`` per line) or
    plain text (one per non-empty line)."""
    path = Path(path)
    lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
    if path.suffix != ".jsonl":
        return [line.strip() for _, line in lines]
    prompts: list[Conversation] = []
    for n, line in lines:
        record = json.loads(line)
        prompt = next((record[k] for k in ("prompt", "query", "conversation", "messages") if record.get(k)), None)
        if prompt is None:
            raise ValueError(f"{path}:{n}: needs 'prompt', 'query', 'conversation' or 'messages'")
        prompts.append(prompt)
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def reward_backend(args: argparse.Namespace) -> RewardBackend:
    from grm.types import SamplingOptions

    if args.target:
        return ServiceReward(args.target, per_response=args.per_response, max_wait_s=args.max_wait, k=args.judge_k,
                             temperature=args.judge_temperature, max_new_tokens=args.judge_max_new_tokens)
    if args.grm:
        from grm.default_model import default_model_path
        from grm.judge import GenerativeRewardModel

        path = default_model_path() if args.grm == "default" else args.grm
        sampling = SamplingOptions(k=args.judge_k, temperature=args.judge_temperature,
                                   max_new_tokens=args.judge_max_new_tokens)
        return LocalGRMReward(GenerativeRewardModel.load(str(path), device=args.device), sampling,
                              per_response=args.per_response)
    module, _, name = args.reward_function.partition(":")
    if not module or not name:
        raise SystemExit(f"--reward-function must look like MODULE:NAME, got {args.reward_function!r}")
    return FunctionReward(getattr(importlib.import_module(module), name), name=args.reward_function)


if __name__ == "__main__":
    raise SystemExit(main())
