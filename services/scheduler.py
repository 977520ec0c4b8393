"""Micro-batching scheduler: work from concurrent requests shares one engine pass.

The asyncio side enqueues ``Plan``s (from ``GenerativeRewardModel.plan``) and awaits
futures. A dedicated worker thread (model work never runs on the event loop) takes a
batch, runs ``run_plans(batch)`` once, and resolves each future on its own loop through
``loop.call_soon_threadsafe``. An in-process engine has one worker (it owns the device);
remote servers batch calls themselves, so ``workers`` passes may run at once there and a
call that stalls on one server holds one worker, not the service.

Callers are served in turn: every input is queued under its caller (``current_caller``,
set by the servicer: a token's name or a peer) and a batch takes one input from each
waiting caller in round-robin order; a caller that had nothing waiting goes first. So one
caller's thousand queued inputs delay another's single input by the pass in progress,
not by a thousand inputs.

How a batch forms (docs/design.md, "Engines and batching": a short wait, capped by tokens). It rests
on one fact: a decoding step is bound by reading the weights, so a step over many
sequences costs about what a step over one does, and an input that joins a pass is
nearly free while one that waits for the next pass pays a whole pass. Hence:

- the worker takes what is queued at once, unless callers have *announced* work that is
  on its way (``expect(n)`` before they tokenize their prompts). Then it waits for it,
  as long as the next input keeps arriving within ``max_wait_ms`` of the previous one and
  for at most ``max_linger_ms`` in all. A lone request never waits; a burst of concurrent
  ones (whose prompts are tokenized one after another, a few ms each) shares a pass;
- a batch holds at most ``max_batch_sequences`` sampled sequences (k per input) and
  ``max_batch_tokens`` tokens (``Plan.cost``: per sequence its prompt + max_new_tokens, a
  bound on the KV cache the pass needs). An input larger than the caps runs alone;
- an input whose deadline passed, or whose caller went away, is dropped unrun; one that
  is gone by the end of its pass gets ``DeadlineExpired``, not its result (an engine may
  stop such an input midway, so what it returns is no score to keep). A ``Deadline`` may
  move later while its input waits (identical work shared by callers with different
  deadlines lives as long as the one with the most time);
- when a batch raises, its inputs run again one by one, so one bad input fails only its
  own future.

The queue is bounded: ``submit`` raises ``QueueFull`` past ``max_queue`` waiting inputs.
Every input the engine ran is counted (``grm_items_total{source="computed"}``,
``grm_samples_total``) when its pass ends, whether or not its caller still waits for it.

Example (inside a coroutine)::

    scheduler = Scheduler(grm.run_plans, SchedulerConfig(max_wait_ms=5)).start()
    with scheduler.expect(1) as ticket:
        plan = grm.plan(item, sampling, aggregation)
        result = await scheduler.submit(plan, Deadline.within(30), ticket)
"""

from __future__ import annotations

import asyncio
import contextvars
import dataclasses
import logging
import threading
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Callable, Sequence

from grm.engine import EngineFailure, pass_deadline
from grm.judge import Plan
from grm.types import ScoreResult

log = logging.getLogger(__name__)
# Who submits: the servicer sets it per call; inputs of the same caller queue in one line.
current_caller: contextvars.ContextVar[str] = contextvars.ContextVar("grm_caller", default="")


class QueueFull(Exception):
    """The scheduler's queue cannot take more inputs now (RESOURCE_EXHAUSTED)."""


class DeadlineExpired(Exception):
    """The caller's deadline passed before the engine ran its input (DEADLINE_EXCEEDED)."""


class SchedulerClosed(Exception):
    """The scheduler stopped before running the input (UNAVAILABLE)."""


@dataclass(frozen=True)
class SchedulerConfig:
    max_wait_ms: float = 20.0  # longest gap between announced arrivals the worker waits out
    max_linger_ms: float = 200.0  # longest total wait for announced work before a pass starts
    max_batch_tokens: int = 1 << 20  # sum over sequences of (prompt + max_new_tokens) tokens
    max_batch_sequences: int = 512  # sampled sequences (k per input) per engine pass
    max_queue: int = 1024  # inputs waiting; past this submit raises QueueFull
    # Work waiting, in tokens (each sequence's prompt plus its generation budget, as
    # ``Plan.cost`` counts them): inputs differ a thousandfold in cost, so a bound in calls
    # alone lets a few huge inputs queue hours of work. 0 = no bound.
    max_queue_tokens: int = 0
    workers: int = 1  # engine passes at once: 1 for an in-process engine; more for remote servers

    def __post_init__(self) -> None:
        for name in ("max_wait_ms", "max_linger_ms"):
            if not 0 <= getattr(self, name) <= 10_000:
                raise ValueError(f"SchedulerConfig.{name} must be in 0..10000, got {getattr(self, name)}")
        for name in ("max_batch_tokens", "max_batch_sequences", "max_queue", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"SchedulerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.max_queue_tokens < 0:
            raise ValueError(f"SchedulerConfig.max_queue_tokens must be >= 0 (0 = no bound), got {self.max_queue_tokens}")


class Deadline:
    """The ``time.monotonic()`` second after which an input is not worth running (None: never).

    It only ever moves later (``extend``): work shared by several callers must stay wanted
    while any of them still waits. The event loop writes ``at`` and the worker thread reads
    it; one attribute store is atomic, and a read a moment stale errs on running the input.
    """

    __slots__ = ("at",)

    def __init__(self, at: float | None = None):
        self.at = at

    @classmethod
    def within(cls, seconds: float | None) -> "Deadline":
        """``seconds`` from now; None (no limit) gives a deadline that never passes."""
        return cls(None if seconds is None else time.monotonic() + seconds)

    def extend(self, other: "Deadline") -> None:
        """Move to ``other`` when that is later (no deadline is the latest of all)."""
        if self.at is not None and (other.at is None or other.at > self.at):
            self.at = other.at

    def passed(self, now: float) -> bool:
        return self.at is not None and now >= self.at

    def __repr__(self) -> str:
        return f"Deadline(at={self.at!r})"


@dataclass
class _Work:
    plan: Plan
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    deadline: Deadline
    tokens: int
    sequences: int
    caller: str

    def gone(self, now: float) -> str | None:
        if self.future.cancelled():  # read across threads: a flag that only ever turns on
            return "cancelled"
        if self.deadline.passed(now):
            return "deadline"
        return None


class Ticket:
    """Work a caller announced; the worker waits briefly while any ticket is open."""

    def __init__(self, scheduler: "Scheduler", n: int):
        self._scheduler, self.left = scheduler, n

    def consume(self, n: int = 1) -> None:
        n = min(n, self.left)
        self.left -= n
        self._scheduler._announce(-n)

    def release(self) -> None:
        self.consume(self.left)

    def __enter__(self) -> "Ticket":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Scheduler:
    """See the module docstring. ``run_plans`` is ``GenerativeRewardModel.run_plans``."""

    def __init__(self, run_plans: Callable[[Sequence[Plan]], list[ScoreResult]],
                 config: SchedulerConfig = SchedulerConfig(), metrics=None):
        self.run_plans = run_plans
        self.config = config
        self.metrics = metrics  # a services.metrics.ServiceMetrics, or None
        # One line per caller with inputs waiting; the first caller is the next to be served.
        self._lines: OrderedDict[str, deque[_Work]] = OrderedDict()
        self._depth = self._queued_tokens = self._queued_sequences = 0
        self._cond = threading.Condition()
        self._incoming = 0  # announced inputs not yet submitted
        self._last_arrival = 0.0  # time.monotonic() of the latest submit
        self._closed = False
        self._threads = [threading.Thread(target=self._loop, name=f"grm-scheduler-{i}", daemon=True)
                         for i in range(config.workers)]

    def start(self) -> "Scheduler":
        for thread in self._threads:
            thread.start()
        return self

    @property
    def depth(self) -> int:
        return self._depth

    def free_slots(self) -> int:
        return self.config.max_queue - self._depth

    def expect(self, n: int) -> Ticket:
        """Announce ``n`` inputs about to be submitted (release the ticket when done)."""
        self._announce(n)
        return Ticket(self, n)

    def _announce(self, n: int) -> None:
        if n:
            with self._cond:
                self._incoming += n
                self._cond.notify_all()

    def submit(self, plan: Plan, deadline: Deadline = Deadline(), ticket: Ticket | None = None) -> asyncio.Future:
        """Queue one plan; the returned future (of this loop) resolves to its ScoreResult.
        ``deadline`` is read, never written, so the default that never passes can be shared."""
        loop = asyncio.get_running_loop()
        tokens, sequences = plan.cost
        work = _Work(plan, loop.create_future(), loop, deadline, tokens, sequences, current_caller.get())
        with self._cond:
            if self._closed:
                raise SchedulerClosed("the server is shutting down")
            if self._depth >= self.config.max_queue:
                raise QueueFull(f"the scheduler queue is full ({self.config.max_queue} inputs waiting)")
            bound = self.config.max_queue_tokens
            if bound and tokens + self._queued_tokens > bound:
                raise QueueFull(f"the queued work would pass max_queue_tokens ({bound} tokens; this input "
                                f"needs {tokens})")
            if work.caller not in self._lines:  # a caller that had nothing waiting is next in turn
                self._lines[work.caller] = deque()
                self._lines.move_to_end(work.caller, last=False)
            self._lines[work.caller].append(work)
            self._count_queued(work, +1)
            self._last_arrival = time.monotonic()
            self._set_depth()
            self._cond.notify_all()
        if ticket is not None:
            ticket.consume()
        return work.future

    def close(self, timeout: float | None = None) -> None:
        """Run what is queued, then stop the workers; later submits raise SchedulerClosed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        end = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(None if end is None else max(0.0, end - time.monotonic()))

    # ------------------------------------------------------------------ worker thread

    def _loop(self) -> None:
        while (batch := self._take()) is not None:
            if batch:
                self._run(batch)

    def _take(self) -> list[_Work] | None:
        """The next batch ([] when everything taken was dropped); None once closed and empty."""
        cfg = self.config
        with self._cond:
            while not self._depth and not self._closed:
                self._cond.wait()
            if not self._depth:
                return None
            start = time.monotonic()
            while self._incoming > 0 and not self._closed and not self._queue_full_batch():
                gap_end = max(self._last_arrival, start) + cfg.max_wait_ms / 1000
                left = min(gap_end, start + cfg.max_linger_ms / 1000) - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            batch, dropped = self._pop_batch()
            self._set_depth()
        for work, reason in dropped:
            self._settle(work, None, DeadlineExpired("the deadline passed before the input ran"))
            if self.metrics is not None:
                self.metrics.dropped.labels(reason).inc()
        return batch

    def _queue_full_batch(self) -> bool:
        return (self._queued_tokens >= self.config.max_batch_tokens
                or self._queued_sequences >= self.config.max_batch_sequences)

    def _pop_batch(self) -> tuple[list[_Work], list[tuple[_Work, str]]]:
        """Inputs in turn, one from each caller's line, until the next one would pass a cap."""
        now = time.monotonic()
        batch, dropped, tokens, sequences = [], [], 0, 0
        while self._lines:
            caller, line = next(iter(self._lines.items()))
            work = line[0]
            if (reason := work.gone(now)) is None and batch and (
                    tokens + work.tokens > self.config.max_batch_tokens
                    or sequences + work.sequences > self.config.max_batch_sequences):
                break
            line.popleft()
            self._count_queued(work, -1)
            if line:  # its turn is over: to the back of the round
                self._lines.move_to_end(caller)
            else:
                del self._lines[caller]
            if reason is not None:
                dropped.append((work, reason))
                continue
            batch.append(work)
            tokens, sequences = tokens + work.tokens, sequences + work.sequences
        return batch, dropped

    def _count_queued(self, work: _Work, sign: int) -> None:
        self._depth += sign
        self._queued_tokens += sign * work.tokens
        self._queued_sequences += sign * work.sequences

    def _run(self, batch: list[_Work]) -> None:
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(batch))
            self.metrics.batch_sequences.observe(sum(w.sequences for w in batch))
        try:
            # The engine asks each input's ``wanted`` between steps, so an input whose callers
            # all left (cancelled, or past their deadlines) stops costing engine time mid-pass.
            plans = [dataclasses.replace(w.plan, wanted=lambda w=w: w.gone(time.monotonic()) is None) for w in batch]
            with pass_deadline(lambda: _latest(batch)):  # a remote engine stops waiting past it
                results = self.run_plans(plans)
        except Exception as exc:
            if len(batch) == 1 or isinstance(exc, EngineFailure):  # engine-wide: every input gets it
                log.warning("engine pass failed: %s", exc, exc_info=not isinstance(exc, EngineFailure))
                for work in batch:
                    self._settle(work, None, exc)
                return
            # Find the input that broke the pass: the others must still get their results.
            log.warning("a batch of %d inputs failed (%r); running them one by one", len(batch), exc)
            for work in batch:
                if work.gone(time.monotonic()) is None:
                    self._run([work])
                else:
                    self._settle(work, None, DeadlineExpired("the deadline passed before the input ran"))
            return
        self._count(results, batch)
        now = time.monotonic()
        for work, result in zip(batch, results):
            if work.gone(now) is not None:  # the engine may have cut it short: never a result to keep
                self._settle(work, None, DeadlineExpired("the deadline passed while the input ran"))
            else:
                self._settle(work, result, None)

    def _count(self, results: list[ScoreResult], batch: list[_Work]) -> None:
        """Count what the engine did here, not where callers read it: a result whose caller
        left meanwhile was still generated, and the counters must add up to the passes."""
        if self.metrics is None:
            return
        now = time.monotonic()
        for work, result in zip(batch, results):  # tokens written for callers still there, or gone
            gone = work.gone(now) is not None
            self.metrics.generated_tokens.labels("gone" if gone else "waiting").inc(result.completion_tokens)
        self.metrics.items.labels("computed").inc(len(results))
        self.metrics.samples.inc(sum(len(r.judgments) for r in results))
        for result in results:
            for reason, count in result.invalid_reasons.items():
                self.metrics.invalid_samples.labels(str(reason)).inc(count)

    def _settle(self, work: _Work, result: ScoreResult | None, exc: BaseException | None) -> None:
        def resolve() -> None:
            if work.future.done():  # the caller was cancelled meanwhile
                return
            if exc is not None:
                work.future.set_exception(exc)
            else:
                work.future.set_result(result)

        try:
            work.loop.call_soon_threadsafe(resolve)
        except RuntimeError:  # that event loop is closed: nobody is waiting any more
            pass

    def _set_depth(self) -> None:
        if self.metrics is not None:
            self.metrics.queue_depth.set(self._depth)


def _latest(batch: list[_Work]) -> float | None:
    """The latest deadline in a pass (None: one of them has none): the pass runs for all of them."""
    ats = [w.deadline.at for w in batch]
    return None if any(at is None for at in ats) else max(ats)
