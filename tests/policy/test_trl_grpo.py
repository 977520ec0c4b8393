"""TRL's own GRPOTrainer, two steps on CPU, rewarded by the GRM service through ``trl_reward``.

The policy is the tiny random-weight Llama (tests/conftest.py), so its completions are
noise; what is checked is the wiring: TRL calls our reward function with its real
arguments, the service answers one ScoreBatch per step, and training goes on.
"""

from __future__ import annotations

import pytest
from adapter_helpers import QUERY, SCORED, batch_calls
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from policy.adapters import trl_reward

pytestmark = pytest.mark.slow
NUM_GENERATIONS = 2


@pytest.mark.parametrize("asynchronous", [False, True])
def test_grpo_trainer_runs_two_steps_on_grm_rewards(grm_server, tiny_model_path, tmp_path, asynchronous):
    reward = trl_reward(grm_server.address, asynchronous=asynchronous, **{**SCORED, "k": 1})
    dataset = Dataset.from_dict({"prompt": [QUERY, "Name some vegetables. Write 3 items."] * 2})
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=2, use_cpu=True, per_device_train_batch_size=2,
                      num_generations=NUM_GENERATIONS, max_completion_length=8, learning_rate=1e-4,
                      logging_steps=1, report_to=[], save_strategy="no", seed=0)
    trainer = GRPOTrainer(model=str(tiny_model_path), reward_funcs=[reward], args=args, train_dataset=dataset)
    calls = batch_calls(grm_server)
    trainer.train()
    assert trainer.state.global_step == 2
    assert batch_calls(grm_server) - calls == 2  # one per step: the step's completions in one call
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logged) == 2 and all("grm/unscored_fraction" in entry for entry in logged)  # our log_metric
    assert all(1 <= entry["rewards/grm/mean"] <= 10 for entry in logged)  # real GRM scores reached TRL
