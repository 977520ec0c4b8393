"""services/singleflight.py: identical work runs once and lives as long as its longest-waiting caller.

Each test drives its coroutines with ``asyncio.run``; the work is a plain coroutine, so
what is checked is the flight itself (the service-level case is in test_shared_work.py).
"""

from __future__ import annotations

import asyncio

import pytest

from services.scheduler import Deadline
from services.singleflight import Singleflight


def test_singleflight_runs_identical_calls_once():
    calls = []

    async def work(tag):
        calls.append(tag)
        await asyncio.sleep(0.05)
        return object()

    async def main():
        flight = Singleflight()
        results = await asyncio.gather(*(flight.run("k", lambda _: work("k")) for _ in range(32)),
                                       flight.run("other", lambda _: work("other")))
        assert sorted(calls) == ["k", "other"]
        assert all(r is results[0] for r in results[:32]) and results[32] is not results[0]
        assert flight.stats() == {"coalesced": 31, "in_flight": 0}
        await flight.run("k", lambda _: work("k"))  # done calls are not remembered: a result is not a cache
        assert calls.count("k") == 2

    asyncio.run(main())


def test_singleflight_error_reaches_waiters_but_not_later_callers():
    calls = 0

    async def work(_deadline):
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.02)
        if calls == 1:
            raise ValueError("model fell over")
        return "ok"

    async def main():
        flight = Singleflight()
        results = await asyncio.gather(*(flight.run("k", work) for _ in range(8)), return_exceptions=True)
        assert calls == 1 and all(isinstance(r, ValueError) for r in results)
        assert await flight.run("k", work) == "ok" and calls == 2

    asyncio.run(main())


def test_singleflight_cancelled_waiter_leaves_the_work_to_the_others():
    finished = []

    async def work(_deadline):
        await asyncio.sleep(0.05)
        finished.append(True)
        return 42

    async def main():
        flight = Singleflight()
        leader = asyncio.create_task(flight.run("k", work))
        await asyncio.sleep(0)  # the leader has started the work
        others = [asyncio.create_task(flight.run("k", work)) for _ in range(4)]
        await asyncio.sleep(0.01)
        leader.cancel()
        assert await asyncio.gather(*others) == [42] * 4 and finished == [True]
        with pytest.raises(asyncio.CancelledError):
            await leader

    asyncio.run(main())


def test_singleflight_last_waiter_cancelled_stops_the_work():
    started, cancelled = [], []

    async def work(_deadline):
        started.append(True)
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return 1

    async def main():
        flight = Singleflight()
        waiters = [asyncio.create_task(flight.run("k", work)) for _ in range(3)]
        await asyncio.sleep(0.01)
        for w in waiters:
            w.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await asyncio.sleep(0)
        assert cancelled == [True] and flight.stats()["in_flight"] == 0

        async def quick(_deadline):
            return 2
        assert await flight.run("k", quick) == 2  # a fresh call, not the cancelled one

    asyncio.run(main())


def test_the_shared_deadline_is_the_latest_of_the_callers():
    seen: list[Deadline] = []

    async def main():
        gate = asyncio.Event()

        async def work(deadline):
            seen.append(deadline)
            await gate.wait()
            return deadline.at

        flight = Singleflight()
        short = Deadline(100.0)
        leader = asyncio.create_task(flight.run("k", work, short))
        await asyncio.sleep(0.01)  # the callers have reached the flight
        assert seen[0].at == 100.0 and seen[0] is not short  # the leader's own object is not shared
        longer = asyncio.create_task(flight.run("k", work, Deadline(300.0)))
        earlier = asyncio.create_task(flight.run("k", work, Deadline(50.0)))
        await asyncio.sleep(0.01)
        assert seen[0].at == 300.0 and short.at == 100.0  # moved later, never earlier
        unbounded = asyncio.create_task(flight.run("k", work, Deadline(None)))
        await asyncio.sleep(0.01)
        assert seen[0].at is None  # a caller without a deadline keeps the work wanted
        gate.set()
        assert await asyncio.gather(leader, longer, earlier, unbounded) == [None] * 4
        assert len(seen) == 1

    asyncio.run(main())
