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

from grm.default_model import default_model_path
from grm.judge import GenerativeRewardModel
from grm.pretrained import resolve_model
from grm.types import SamplingOptions
from grm_cli.common import add_sampling_args
from policy.config import ADVANTAGES, LOSSES, GRPOConfig
from policy.rewards import FunctionReward, LocalGRMReward, RewardBackend, ServiceReward

NAME = "grpo"
HELP = "train a policy with GRPO against the reward service"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The trainer's config (one flag per ``GRPOConfig`` field) plus the policy, prompts and reward."""
    choices = {"advantage": ADVANTAGES, "loss": LOSSES}
    p.add_argument("--model", required=True, help="the policy: a Hugging Face causal LM (local path or hub id)")
    p.add_argument("--prompts", required=True,
                   help="a .jsonl file ({'prompt': str} or {'conversation'|'messages': [...]} per line) "
                        "or a text file with one prompt per line")
    reward = p.add_mutually_exclusive_group(required=True)
    reward.add_argument("--target", help="the reward service at HOST:PORT")
    reward.add_argument("--grm", help="a GRM checkpoint to run in this process ('default' = the bundled one)")
    reward.add_argument("--reward-function", metavar="MODULE:NAME",
                        help="a Python function (prompt, completion) -> float | None")
    p.add_argument("--per-response", action="store_true",
                   help="judge each completion alone (N = 1) instead of a prompt's whole group as one input")
    add_sampling_args(p, "judge-", ", for the GRM reward", k=4)
    p.add_argument("--max-wait", type=float, default=600.0,
                   help="seconds to wait out an unreachable reward service before stopping (default 600)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    group = p.add_argument_group("GRPO (policy.config.GRPOConfig)")
    for f in dataclasses.fields(GRPOConfig):
        flag = "--" + f.name.replace("_", "-")
        if isinstance(f.default, bool):
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default)
        else:
            kind = type(f.default) if f.default is not None else str
            group.add_argument(flag, type=kind, default=f.default, choices=choices.get(f.name),
                               help=f"(default: {f.default})")


def run(args: argparse.Namespace) -> int:
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: only when training

    from grm.transformers_engine import default_device_dtype
    from policy.trainer import GRPOTrainer, load_prompts

    cfg = GRPOConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GRPOConfig)})
    prompts = load_prompts(args.prompts)
    reward = reward_backend(args)
    device, _ = default_device_dtype(args.device, None)
    source = resolve_model(args.model)  # a base name or a .gguf file: its converted folder
    tokenizer = AutoTokenizer.from_pretrained(source)
    model = AutoModelForCausalLM.from_pretrained(source).to(device).eval()
    print(f"policy {args.model}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters on {device}; "
          f"{len(prompts)} prompts; reward {reward.name}")
    history = GRPOTrainer(model, tokenizer, reward, prompts, cfg).train()
    scored = [h["reward"] for h in history if h["reward"] is not None]
    if scored:
        print(f"mean reward: first step {scored[0]:.3f}, last step {scored[-1]:.3f}")
    return 0


def reward_backend(args: argparse.Namespace) -> RewardBackend:
    """The reward the flags name: the service, a GRM in this process, or a Python function."""
    if args.target:
        return ServiceReward(args.target, per_response=args.per_response, max_wait_s=args.max_wait, k=args.judge_k,
                             temperature=args.judge_temperature, max_new_tokens=args.judge_max_new_tokens)
    if args.grm:
        path = default_model_path() if args.grm == "default" else args.grm
        sampling = SamplingOptions(k=args.judge_k, temperature=args.judge_temperature,
                                   max_new_tokens=args.judge_max_new_tokens)
        return LocalGRMReward(GenerativeRewardModel.load(str(path), device=args.device), sampling,
                              per_response=args.per_response)
    module, _, name = args.reward_function.partition(":")
    if not module or not name:
        raise SystemExit(f"--reward-function must look like MODULE:NAME, got {args.reward_function!r}")
    return FunctionReward(getattr(importlib.import_module(module), name), name=args.reward_function)
