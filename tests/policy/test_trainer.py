"""The GRPO trainer on a tiny random policy, with plain-function rewards and a reward
service that is not there (the service itself is in test_grpo_service.py)."""

from __future__ import annotations

import copy
import json
import time

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from grm.testing import build_tiny_model
from grm.types import Completion
from policy.logprobs import Example, target_ids
from policy.rewards import FunctionReward, RewardUnavailable, ServiceReward
from policy.trainer import GRPOConfig, GRPOTrainer, Rollouts, policy_prompt_ids
from services.testing.redis_servers import free_port

PROMPTS = ["Name a color.", "Say hello.", "Count to three.", "Name an animal."]


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("policy") / "tiny", arch="llama", seed=3)


def load(path):
    return AutoModelForCausalLM.from_pretrained(path).eval(), AutoTokenizer.from_pretrained(path)


def vowel_share(prompt, completion: str) -> float:
    letters = [c for c in completion.lower() if c.isalpha()]
    return sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0


def small(**kw) -> GRPOConfig:
    base = dict(steps=2, prompts_per_step=2, group_size=4, lr=1e-2, max_new_tokens=8, micro_batch_size=3)
    return GRPOConfig(**{**base, **kw})


@pytest.mark.parametrize("kw, field", [
    (dict(group_size=1), "group_size"), (dict(steps=0), "steps"), (dict(micro_batch_size=0), "micro_batch_size"),
    (dict(temperature=0.0), "temperature"), (dict(eps_low=1.0), "eps_low"), (dict(beta=-1.0), "beta"),
])
def test_config_names_the_bad_field(kw, field):
    with pytest.raises(ValueError, match=field):
        GRPOConfig(**kw)
    with pytest.raises(ValueError):
        GRPOConfig(loss="mean")
    with pytest.raises(ValueError, match="advantage"):
        GRPOConfig(advantage="max")


def test_two_steps_change_the_policy_and_write_metrics_and_checkpoints(policy_path, tmp_path):
    model, tok = load(policy_path)
    before = copy.deepcopy(model.state_dict())
    seen = []

    def metrics(rollouts: Rollouts) -> dict:
        seen.append(rollouts)
        return {"vowels": sum(rollouts.rewards) / len(rollouts.rewards)}

    cfg = small(output_dir=str(tmp_path / "run"), checkpoint_every=1)
    history = GRPOTrainer(model, tok, FunctionReward(vowel_share), PROMPTS, cfg, metrics_fn=metrics).train()

    assert [h["step"] for h in history] == [1, 2]
    assert all(h["completions"] == 8 and h["unscored"] == 0 and h["trained"] == 8 for h in history)
    assert [h["vowels"] for h in history] == [h["reward"] for h in history]
    assert all(len(r.completions) == 8 and len(r.prompt_ids) == 2 for r in seen)
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "no parameter moved"
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["group_size"] == 4
    assert (tmp_path / "run" / "step-1" / "config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in reloaded.state_dict().items())


def test_unscorable_completions_get_no_advantage_and_constant_groups_are_filtered(policy_path):
    model, tok = load(policy_path)
    calls = {"n": 0}

    def odd_unscored(prompt, completion):  # every other completion has no reward
        calls["n"] += 1
        return None if calls["n"] % 2 else float(len(completion))

    trainer = GRPOTrainer(model, tok, FunctionReward(odd_unscored), PROMPTS, small(filter_groups=True))
    record = trainer.step(0)
    assert record["unscored"] == 4 and record["completions"] == 8

    def constant(prompt, completion):
        return 1.0

    before = copy.deepcopy(model.state_dict())
    trainer = GRPOTrainer(model, tok, FunctionReward(constant), PROMPTS, small(filter_groups=True, beta=0.0))
    record = trainer.step(0)
    assert record["trained"] == 0  # every group is all-equal: nothing to learn, no optimizer step
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_reward_that_is_not_finite_is_an_error(policy_path):
    model, tok = load(policy_path)
    trainer = GRPOTrainer(model, tok, FunctionReward(lambda p, c: float("nan")), PROMPTS, small())
    with pytest.raises(ValueError, match="None for an unscorable"):
        trainer.step(0)


@pytest.mark.parametrize("loss", ["token", "sequence", "constant"])
def test_micro_batches_give_the_whole_batch_gradient(policy_path, loss):
    """Accumulating over micro-batches of 3 equals one pass over all 8 completions."""
    model, tok = load(policy_path)
    torch.manual_seed(0)
    prompts = [policy_prompt_ids(tok, p) for p in PROMPTS[:2]]
    examples = [Example(prompts[i % 2], tuple(torch.randint(5, 400, (3 + i,)).tolist())) for i in range(8)]
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 0.0, 2.0, -2.0, 0.0])
    grads = []
    for micro in (8, 3):
        trainer = GRPOTrainer(copy.deepcopy(model), tok, FunctionReward(vowel_share), PROMPTS,
                              small(loss=loss, micro_batch_size=micro, beta=0.1))
        trainer.model.train()
        ref = trainer._logprobs(trainer.reference, examples)
        trainer.accumulate(examples, advantages, ref=ref)
        grads.append(torch.cat([p.grad.flatten() for p in trainer.model.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_target_ids_keep_the_eos_that_ended_the_completion():
    assert target_ids(Completion((5, 6), "x", True, 9), eos_token_id=2) == (5, 6, 9)
    assert target_ids(Completion((5, 6), "x", True), eos_token_id=2) == (5, 6, 2)
    assert target_ids(Completion((5, 6), "x", False), eos_token_id=2) == (5, 6)


def test_service_reward_waits_then_stops_with_a_clear_error():
    port = free_port()  # nothing listens there
    backend = ServiceReward(f"127.0.0.1:{port}", max_wait_s=1.5, timeout_s=0.5, initial_backoff_s=0.2,
                            max_backoff_s=0.5)
    start = time.monotonic()
    with pytest.raises(RewardUnavailable, match=f"127.0.0.1:{port}.*max_wait_s=1.5"):
        backend.score_groups(["q"], [["a", "b"]])
    assert 1.5 <= time.monotonic() - start < 10
    assert backend.stats["waits"] >= 2 and backend.stats["calls"] == 0


def test_grpo_command_with_a_function_reward(policy_path, tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(
        "def vowels(prompt, completion):\n"
        "    letters = [c for c in completion.lower() if c.isalpha()]\n"
        "    return sum(c in 'aeiou' for c in letters) / len(letters) if letters else None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "prompts.jsonl").write_text("\n".join(json.dumps(r) for r in [
        {"prompt": "Say hello."}, {"messages": [{"role": "user", "content": "Name a color."}]}]) + "\n")
    out = tmp_path / "run"
    from grm_cli.main import main

    assert main(["grpo", "--model", str(policy_path), "--prompts", str(tmp_path / "prompts.jsonl"),
                 "--reward-function", "my_rewards:vowels", "--steps", "2", "--group-size", "3",
                 "--max-new-tokens", "6", "--loss", "sequence", "--no-filter-groups",
                 "--output-dir", str(out)]) == 0
    records = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["completions"] for r in records] == [6, 6]
    assert json.loads((out / "config.json").read_text())["loss"] == "sequence"
    assert (out / "final" / "model.safetensors").exists()


def test_grpo_command_with_an_in_process_grm(policy_path, tmp_path):
    """The tiny random GRM writes no valid judgment: every completion is unscored, none gets 0."""
    (tmp_path / "prompts.txt").write_text("Say hello.\n\nName a color.\n")
    out = tmp_path / "run"
    from grm_cli.main import main

    assert main(["grpo", "--model", str(policy_path), "--prompts", str(tmp_path / "prompts.txt"), "--grm",
                 str(policy_path), "--judge-k", "2", "--judge-max-new-tokens", "8", "--steps", "1",
                 "--group-size", "2", "--max-new-tokens", "4", "--output-dir", str(out)]) == 0
    record = json.loads((out / "metrics.jsonl").read_text())
    assert record["completions"] == 4 and record["unscored"] == 4 and record["reward"] is None
    assert record["grad_norm"] == 0.0


def test_prompts_file_errors_name_the_line(tmp_path):
    from policy.trainer import load_prompts

    (tmp_path / "bad.jsonl").write_text('{"prompt": "ok"}\n{"text": "no"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_prompts(tmp_path / "bad.jsonl")
