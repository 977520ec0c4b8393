"""The micro-batching scheduler on the real tiny judge: batching, isolation, deadlines, bounds."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time

import pytest

from grm.types import SamplingOptions, ScoreInput
from services.metrics import ServiceMetrics
from services.scheduler import (Deadline, DeadlineExpired, QueueFull, Scheduler, SchedulerClosed, SchedulerConfig,
                                current_caller)

SAMPLING = SamplingOptions(k=2, max_new_tokens=8)


def plans(judge, n: int):
    return [judge.plan(ScoreInput(f"Question {i}?", ["yes", "no"]), SAMPLING) for i in range(n)]


def passes(metrics: ServiceMetrics) -> tuple[float, float]:
    """(engine passes, inputs run)."""
    return metrics.value("grm_batch_size_count"), metrics.value("grm_batch_size_sum")


def test_a_failing_plan_fails_only_its_own_future(judge):
    good = plans(judge, 3)
    prompt = good[1].prompts[0]
    too_long = dataclasses.replace(prompt, ids=prompt.ids * 5)  # beyond the 4,096-token context
    bad = dataclasses.replace(good[1], prompts=(too_long,))
    metrics = ServiceMetrics()
    scheduler = Scheduler(judge.run_plans, SchedulerConfig(max_wait_ms=200), metrics).start()

    async def main():
        ticket = scheduler.expect(3)
        futures = [scheduler.submit(p, ticket=ticket) for p in (good[0], bad, good[2])]
        return await asyncio.gather(*futures, return_exceptions=True)

    try:
        outs = asyncio.run(main())
    finally:
        scheduler.close()
    assert isinstance(outs[1], ValueError) and "max_context" in str(outs[1])
    assert [len(outs[i].judgments) for i in (0, 2)] == [2, 2]
    assert passes(metrics) == (4, 6)  # one pass of 3 that raised, then each input alone


def test_announced_work_shares_a_pass_and_a_lone_request_does_not_wait(judge):
    first, second = plans(judge, 2)
    metrics = ServiceMetrics()
    scheduler = Scheduler(judge.run_plans, SchedulerConfig(max_wait_ms=500, max_linger_ms=2000), metrics).start()

    async def announced():
        ticket = scheduler.expect(2)
        a = scheduler.submit(first, ticket=ticket)
        await asyncio.sleep(0.1)  # the second input is still being prepared
        b = scheduler.submit(second, ticket=ticket)
        return await asyncio.gather(a, b)

    async def lone():
        start = time.monotonic()
        await scheduler.submit(first)
        return time.monotonic() - start

    try:
        asyncio.run(announced())
        assert passes(metrics) == (1, 2)
        assert asyncio.run(lone()) < 0.5  # nothing announced: no wait for company
    finally:
        scheduler.close()


def test_expired_inputs_are_dropped_unrun(judge):
    [plan] = plans(judge, 1)
    metrics = ServiceMetrics()
    scheduler = Scheduler(judge.run_plans, SchedulerConfig(), metrics).start()

    async def main():
        return await scheduler.submit(plan, Deadline(time.monotonic() - 1))

    try:
        with pytest.raises(DeadlineExpired):
            asyncio.run(main())
    finally:
        scheduler.close()
    assert passes(metrics) == (0, 0) and metrics.value("grm_dropped_total", reason="deadline") == 1


def test_a_deadline_moved_later_while_waiting_keeps_the_input(judge):
    [plan] = plans(judge, 1)
    metrics = ServiceMetrics()
    scheduler = Scheduler(judge.run_plans, SchedulerConfig(), metrics)  # started once the deadline moved

    async def main():
        deadline = Deadline(time.monotonic() - 1)  # already passed when queued
        future = scheduler.submit(plan, deadline)
        deadline.extend(Deadline.within(60))  # a caller with more time joined the work
        scheduler.start()
        return await future

    try:
        assert len(asyncio.run(main()).judgments) == 2
    finally:
        scheduler.close()
    assert metrics.value("grm_dropped_total", reason="deadline") == 0


def test_work_whose_caller_left_during_its_pass_is_still_counted(judge):
    """Samples and items are counted where the engine made them: a caller that leaves while
    its pass runs does not take them out of the counters (they must add up to the passes)."""
    [plan] = plans(judge, 1)
    started, gate = threading.Event(), threading.Event()

    def run_plans(batch):  # the real engine, held at the start of the pass until the caller left
        started.set()
        gate.wait(30)
        return judge.run_plans(batch)

    metrics = ServiceMetrics()
    scheduler = Scheduler(run_plans, SchedulerConfig(), metrics).start()

    async def main():
        future = scheduler.submit(plan)
        await asyncio.to_thread(started.wait, 30)
        future.cancel()  # the caller goes away mid-pass
        gate.set()

    try:
        asyncio.run(main())
    finally:
        scheduler.close()
    sequences = metrics.value("grm_batch_sequences_sum")
    assert sequences == SAMPLING.k
    assert metrics.value("grm_samples_total") == sequences
    assert metrics.value("grm_items_total", source="computed") == 1


def test_queue_is_bounded_and_closing_refuses_new_work(judge):
    [plan] = plans(judge, 1)
    scheduler = Scheduler(judge.run_plans, SchedulerConfig(max_queue=1))  # not started: nothing drains

    async def main():
        scheduler.submit(plan)
        with pytest.raises(QueueFull, match="1 inputs waiting"):
            scheduler.submit(plan)

    asyncio.run(main())
    scheduler.close()
    with pytest.raises(SchedulerClosed):
        asyncio.run(_submit(scheduler, plan))


def test_queued_work_is_bounded_in_tokens_not_calls(judge):
    small, = plans(judge, 1)
    big = judge.plan(ScoreInput("A long question? " * 120, ["yes " * 40, "no " * 40]), SamplingOptions(k=4, max_new_tokens=64))
    room = small.cost[0] * 3  # three small inputs fit, one big one does not
    assert big.cost[0] > room
    scheduler = Scheduler(judge.run_plans, SchedulerConfig(max_queue=100, max_queue_tokens=room))  # nothing drains

    async def main():
        for _ in range(3):
            scheduler.submit(small)
        with pytest.raises(QueueFull, match=f"max_queue_tokens \\({room} tokens; this input needs {small.cost[0]}\\)"):
            scheduler.submit(small)  # a fourth small one passes the bound by its own tokens

    asyncio.run(main())
    scheduler.close()
    lone = Scheduler(judge.run_plans, SchedulerConfig(max_queue=100, max_queue_tokens=room))

    async def alone():
        with pytest.raises(QueueFull, match="max_queue_tokens"):
            lone.submit(big)  # one call, but more tokens than the bound: refused although the queue is empty

    asyncio.run(alone())
    lone.close()


async def _submit(scheduler, plan):
    return scheduler.submit(plan)


def test_config_is_validated():
    with pytest.raises(ValueError, match="SchedulerConfig.max_queue must be >= 1, got 0"):
        SchedulerConfig(max_queue=0)
    with pytest.raises(ValueError, match="max_wait_ms must be in 0..10000"):
        SchedulerConfig(max_wait_ms=-1)


def test_callers_are_served_in_turn_not_first_come_first_served(judge):
    """One caller's queued inputs do not stand before another's: each pass takes inputs from
    every waiting caller in turn (was: the flooder's four inputs ran first)."""
    flood, polite = plans(judge, 5)[:4], plans(judge, 5)[4]
    batches = []

    def run_plans(batch):
        batches.append([p.prompts[0].ids for p in batch])
        return judge.run_plans(batch)

    scheduler = Scheduler(run_plans, SchedulerConfig(max_batch_sequences=2 * SAMPLING.k))  # two inputs a pass

    async def main():
        current_caller.set("flooder")
        futures = [scheduler.submit(p) for p in flood]
        current_caller.set("polite")
        futures.append(scheduler.submit(polite))
        scheduler.start()
        await asyncio.gather(*futures)

    try:
        asyncio.run(main())
    finally:
        scheduler.close()
    assert batches[0] == [polite.prompts[0].ids, flood[0].prompts[0].ids]  # it had nothing waiting: first
    assert [len(b) for b in batches] == [2, 2, 1]


def test_with_two_workers_a_stuck_pass_does_not_hold_the_next(judge):
    """A remote engine runs passes side by side: one that hangs holds one worker only."""
    stuck, quick = plans(judge, 2)
    release = threading.Event()

    def run_plans(batch):
        if batch[0].prompts[0].ids == stuck.prompts[0].ids:
            release.wait(30)
        return judge.run_plans(batch)

    scheduler = Scheduler(run_plans, SchedulerConfig(workers=2)).start()

    async def main():
        held = scheduler.submit(stuck)
        await asyncio.sleep(0.2)  # the stuck pass has begun
        result = await asyncio.wait_for(scheduler.submit(quick), 30)
        still_held = not held.done()
        release.set()
        await held
        return result, still_held

    try:
        result, still_held = asyncio.run(main())
    finally:
        release.set()
        scheduler.close()
    assert len(result.judgments) == SAMPLING.k and still_held


def test_an_input_whose_deadline_passed_during_its_pass_gets_no_result(judge):
    """An engine stops inputs nobody waits for and returns what they had: such a result must
    not reach the caller's flight, which would store it in the cache (was: returned)."""
    [plan] = plans(judge, 1)

    def run_plans(batch):  # the real engine, finishing after the input's deadline
        results = judge.run_plans(batch)
        time.sleep(0.5)
        return results

    scheduler = Scheduler(run_plans, SchedulerConfig()).start()

    async def main():
        return await scheduler.submit(plan, Deadline.within(0.3))

    try:
        with pytest.raises(DeadlineExpired, match="while the input ran"):
            asyncio.run(main())
    finally:
        scheduler.close()
