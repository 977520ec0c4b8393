"""Identical work in flight at once runs once, for as long as any of its callers waits.

The servicer runs every cacheable input through ``Singleflight.run(key, fn, deadline)``:
the first caller of a key (the leader) starts ``fn(shared_deadline)`` in a task of its
own; a caller that arrives while that task runs joins it instead of starting another,
and every caller gets the one result (or the one error).

The shared work belongs to all its callers alike, never to the leader alone:

- its ``Deadline`` is the latest of its callers' (a caller with 300 s that joins one with
  0.5 s keeps the work wanted for 300 s); the scheduler reads it when it takes a batch;
- a caller that goes away (cancelled: its client left or its deadline passed) leaves the
  work running for the others; when the last caller is gone the task is cancelled.

An error reaches the callers waiting at that moment and is not kept: the key is forgotten
as the task ends, so the next call runs ``fn`` afresh (a result is not a cache).

Example (inside a coroutine)::

    flight = Singleflight()
    result = await flight.run(key, lambda deadline: scheduler.submit(plan, deadline), Deadline.within(30))
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Awaitable, Callable, TypeVar

from services.scheduler import Deadline

T = TypeVar("T")


@dataclasses.dataclass
class _Call:
    deadline: Deadline
    task: asyncio.Task | None = None
    waiters: int = 0


class Singleflight:
    """See the module docstring."""

    def __init__(self) -> None:
        self._calls: dict[str, _Call] = {}
        self.coalesced = 0  # calls that joined one already in flight

    async def run(self, key: str, fn: Callable[[Deadline], Awaitable[T]], deadline: Deadline = Deadline()) -> T:
        """``await fn(shared)`` once per key in flight; ``shared`` is the latest deadline of the callers."""
        call = self._calls.get(key)
        if call is None:
            # A copy: joiners extend the shared deadline, never the caller's own object.
            call = self._calls[key] = _Call(Deadline(deadline.at))
            call.task = asyncio.ensure_future(self._lead(key, call, fn))
        else:
            self.coalesced += 1
            call.deadline.extend(deadline)
        call.waiters += 1
        try:
            return await asyncio.shield(call.task)
        finally:
            call.waiters -= 1
            if call.waiters == 0 and not call.task.done():  # every caller was cancelled
                self._forget(key, call)
                call.task.cancel()

    def stats(self) -> dict[str, int]:
        return {"coalesced": self.coalesced, "in_flight": len(self._calls)}

    async def _lead(self, key: str, call: _Call, fn: Callable[[Deadline], Awaitable[T]]) -> T:
        try:
            return await fn(call.deadline)
        finally:  # forget before the task completes, so no later caller can join a finished call
            self._forget(key, call)

    def _forget(self, key: str, call: _Call) -> None:
        if self._calls.get(key) is call:
            del self._calls[key]
