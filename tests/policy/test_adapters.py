"""TRL and verl reward adapters against a real GRM service (bundled GRM, real gRPC).

Each adapter's rewards are checked against the same input scored directly through the
client, so grouping, format handling and the mapping back to rows are what is tested.
verl is not installed here (it needs ray, tensordict and an older transformers), so its
functions are called exactly as verl's naive and batch reward managers call them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import pickle

import pytest
from adapter_helpers import BAD, BAD2, CUT, GOOD, GOOD2, QUERY, QUERY2, SCORED, TOO_LONG, batch_calls
from trl.trainer.utils import get_callable_name, is_async_callable

from policy.adapters import UnscoredError, trl_reward, verl_compute_score, verl_compute_score_batch
from services.client import RetryPolicy, RewardClient

VERL_KEYS = {"score", "scored", "spread", "num_valid", "vote_sum", "group_size"}


@pytest.fixture(scope="module")
def client(grm_server):
    with RewardClient(grm_server.address, timeout_s=120, retry=RetryPolicy(max_attempts=1)) as c:
        yield c


def direct(client, conversation, responses, **options) -> tuple:
    return client.score(conversation, responses, **{**SCORED, **options}).result.rewards


# ---------------------------------------------------------------- TRL

def test_trl_groups_each_prompt_into_one_input_and_the_call_into_one_batch(grm_server, client):
    reward = trl_reward(grm_server.address, **SCORED)
    calls = batch_calls(grm_server)
    rewards = reward(prompts=[QUERY, QUERY, QUERY2, QUERY2], completions=[GOOD, BAD, GOOD2, BAD2],
                     completion_ids=[[1], [2], [3], [4]], trainer_state=None, task=["a"] * 4)
    assert batch_calls(grm_server) - calls == 1
    assert tuple(rewards[:2]) == direct(client, QUERY, [GOOD, BAD])
    assert tuple(rewards[2:]) == direct(client, QUERY2, [GOOD2, BAD2])
    assert all(isinstance(r, float) and 1 <= r <= 10 for r in rewards)
    assert rewards[0] > rewards[1]  # the bundled GRM prefers the uppercase question


def test_trl_groups_by_prompt_even_when_rows_interleave(grm_server, client):
    rewards = trl_reward(grm_server.address, **SCORED)(prompts=[QUERY, QUERY2, QUERY, QUERY2],
                                                       completions=[GOOD, GOOD2, BAD, BAD2])
    assert (rewards[0], rewards[2]) == direct(client, QUERY, [GOOD, BAD])
    assert (rewards[1], rewards[3]) == direct(client, QUERY2, [GOOD2, BAD2])


def test_trl_per_response_scores_each_completion_alone(grm_server, client):
    reward = trl_reward(grm_server.address, per_response=True, **SCORED)
    rewards = reward(prompts=[QUERY, QUERY], completions=[GOOD, BAD])
    assert rewards == [direct(client, QUERY, [GOOD])[0], direct(client, QUERY, [BAD])[0]]


def test_trl_conversational_format(grm_server, client):
    prompt = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": QUERY}]
    completions = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": BAD}]]
    rewards = trl_reward(grm_server.address, **SCORED)(prompts=[prompt, prompt], completions=completions)
    assert tuple(rewards) == direct(client, prompt, [GOOD, BAD])


def test_trl_async_matches_sync_and_follows_the_event_loop(grm_server):
    sync = trl_reward(grm_server.address, **SCORED)
    areward = trl_reward(grm_server.address, asynchronous=True, **SCORED)
    assert is_async_callable(areward) and not is_async_callable(sync)  # how TRL tells them apart
    kwargs = dict(prompts=[QUERY, QUERY], completions=[GOOD, BAD])
    first = asyncio.run(areward(**kwargs))
    second = asyncio.run(areward(**kwargs))  # a new loop: the adapter opens a new channel on it
    assert first == second == sync(**kwargs)


@pytest.mark.parametrize("asynchronous", [False, True])
def test_trl_reward_pickles_with_its_name_and_settings(grm_server, asynchronous):
    reward = trl_reward(grm_server.address, asynchronous=asynchronous, name="grm_judge", **SCORED)
    kwargs = dict(prompts=[QUERY, QUERY], completions=[GOOD, BAD])
    before = asyncio.run(reward(**kwargs)) if asynchronous else reward(**kwargs)  # opens the channel
    copy = pickle.loads(pickle.dumps(reward))
    assert get_callable_name(copy) == "grm_judge" and copy.options == SCORED and copy._client is None
    after = asyncio.run(copy(**kwargs)) if asynchronous else copy(**kwargs)
    assert after == before


def test_trl_unparseable_judgments_give_none(grm_server):
    metrics = []
    rewards = trl_reward(grm_server.address, **CUT)(prompts=[QUERY, QUERY], completions=[GOOD, BAD],
                                                     log_metric=lambda name, v: metrics.append((name, v)))
    assert rewards == [None, None]
    assert ("grm/unscored_fraction", 1.0) in metrics


def test_trl_rejected_input_gives_none_for_its_completions_only(grm_server, client, caplog):
    reward = trl_reward(grm_server.address, per_response=True, **SCORED)
    with caplog.at_level(logging.WARNING, logger="policy.adapters.trl_reward"):
        rewards = reward(prompts=[QUERY, QUERY], completions=[GOOD, TOO_LONG])
    assert rewards == [direct(client, QUERY, [GOOD])[0], None]
    assert "1 of 2 completions unscored" in caplog.text and "INVALID_ARGUMENT" in caplog.text
    assert "must be at most 50000 characters" in caplog.text  # the service's message, naming the limit


def test_trl_bad_arguments_fail_early(grm_server):
    with pytest.raises(TypeError, match="kk"):
        trl_reward(grm_server.address, kk=2)
    reward = trl_reward(grm_server.address, **SCORED)
    with pytest.raises(ValueError, match="same length"):
        reward(prompts=[QUERY], completions=[GOOD, BAD])
    with pytest.raises(ValueError, match="completions"):
        reward(prompts=[QUERY], completions=[[]])


# ---------------------------------------------------------------- verl

def test_verl_single_form_as_the_naive_manager_calls_it(grm_server, client):
    extra_info = {"question": QUERY, "index": 3, "num_turns": None, "rollout_reward_scores": {}}
    out = verl_compute_score(data_source="tasks", solution_str=GOOD, ground_truth=None, extra_info=extra_info,
                             target=grm_server.address, **SCORED)
    assert set(out) == VERL_KEYS
    assert out["score"] == direct(client, QUERY, [GOOD])[0] and out["scored"] is True
    assert out["num_valid"] == SCORED["k"] and out["group_size"] == 1 and out["spread"] >= 0


def test_verl_target_from_the_environment_and_prompt_key(grm_server, client, monkeypatch):
    monkeypatch.setenv("GRM_TARGET", grm_server.address)
    messages = [{"role": "user", "content": QUERY}]
    out = verl_compute_score("tasks", GOOD, "", {"prompt": messages, "question": "ignored"}, **SCORED)
    assert out["score"] == direct(client, messages, [GOOD])[0]


def test_verl_ground_truth_is_the_reference(grm_server, client):
    extra = {"question": QUERY}
    with_ref = verl_compute_score("tasks", BAD, GOOD, extra, target=grm_server.address, **SCORED)
    assert with_ref["score"] == direct(client, QUERY, [BAD], reference=GOOD)[0]
    without = verl_compute_score("tasks", BAD, GOOD, extra, target=grm_server.address, use_reference=False,
                                 **SCORED)
    assert without["score"] == direct(client, QUERY, [BAD])[0]


def test_verl_batch_form_as_the_batch_manager_calls_it(grm_server, client):
    reward_kwargs = {"target": grm_server.address, **SCORED}  # verl merges these into every call
    calls = batch_calls(grm_server)
    outs = verl_compute_score_batch(
        data_sources=["tasks"] * 4, solution_strs=[GOOD, GOOD2, BAD, BAD2], ground_truths=[None] * 4,
        extra_infos=[{"question": q, "rollout_reward_scores": {}} for q in (QUERY, QUERY2, QUERY, QUERY2)],
        **reward_kwargs)
    assert batch_calls(grm_server) - calls == 1
    assert all(set(o) == VERL_KEYS and o["group_size"] == 2 for o in outs)
    assert (outs[0]["score"], outs[2]["score"]) == direct(client, QUERY, [GOOD, BAD])
    assert (outs[1]["score"], outs[3]["score"]) == direct(client, QUERY2, [GOOD2, BAD2])


def test_verl_unscored_raises_by_default(grm_server):
    with pytest.raises(UnscoredError, match="response 0 .*'tasks'.*no valid judgment"):
        verl_compute_score("tasks", GOOD, None, {"question": QUERY}, target=grm_server.address, **CUT)
    with pytest.raises(UnscoredError, match="INVALID_ARGUMENT"):
        verl_compute_score("tasks", TOO_LONG, None, {"question": QUERY}, target=grm_server.address, **SCORED)


def test_verl_unscored_with_an_explicit_stand_in(grm_server):
    out = verl_compute_score("tasks", GOOD, None, {"question": QUERY}, target=grm_server.address,
                             on_unscored=-1.0, **CUT)
    assert set(out) == VERL_KEYS and out["score"] == -1.0 and out["scored"] is False
    assert math.isnan(out["spread"]) and math.isnan(out["vote_sum"]) and out["num_valid"] == 0


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(on_unscored=0), None, None),
    (dict(on_unscored="zero"), ValueError, "on_unscored"),
    (dict(on_unscored=float("nan")), ValueError, "on_unscored"),
    (dict(target=None), ValueError, "GRM_TARGET"),
])
def test_verl_settings_are_checked(grm_server, monkeypatch, kwargs, error, match):
    monkeypatch.delenv("GRM_TARGET", raising=False)
    call = {"target": grm_server.address, **SCORED, **kwargs}
    if error is None:
        assert verl_compute_score("tasks", GOOD, None, {"question": QUERY}, **call)["scored"]
    else:
        with pytest.raises(error, match=match):
            verl_compute_score("tasks", GOOD, None, {"question": QUERY}, **call)


def test_verl_missing_prompt_names_the_keys(grm_server):
    with pytest.raises(KeyError, match='"prompt" or "question"'):
        verl_compute_score("tasks", GOOD, None, {"index": 1}, target=grm_server.address)
