"""Throttled editing of job replies: the newest frame wins, rate limits hold, the final lands.

Discord allows about five message edits per five seconds per channel. A job produces a preview
frame every few steps, much faster than that, so each job has one ``JobReporter`` with a
one-item slot: a new frame replaces the unsent one (never a backlog), and a single pump task
sends whatever is newest once both limits allow it:

- per message: at most one edit every ``interval`` seconds (``MessageThrottle``);
- per channel: at most ``limit`` edits in any ``window`` seconds across all messages of the
  channel (``EditWindow`` inside a ``ChannelGate``, shared by the channel's reporters).

The final edit (image and buttons, an error, "cancelled") supersedes any pending frame, jumps
ahead of progress edits at the channel gate, and is retried until it lands or fails for good.
Queue-position edits of waiting jobs (``ReplyManager.update_position``) go last: they take only
the slots that no final or progress edit wants, and never overwrite a job that has started.

This module does not talk to Discord itself: a ``ReplySink`` sends one edit (``bot.replies``
has the real one) and reports failures as ``TransientSendError`` (try again later) or
``PermanentSendError`` (give up). Clock and sleep are injectable so the throttling is tested
with a fake clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable
from typing import Protocol

from bot.render import Rendered
from db import Job

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TransientSendError(Exception):
    """The edit failed for a reason that may pass (5xx, a 429 storm, a dropped connection)."""


class PermanentSendError(Exception):
    """The edit can never succeed (no access to the channel, message and token both gone)."""


class ReplySink(Protocol):
    """Sends one edit of one job's message."""

    async def send(self, rendered: Rendered, *, final: bool) -> None: ...


class EditWindow:
    """A sliding window: at most ``limit`` events in any ``period`` seconds.

    An edit is recorded when its request has completed: Discord may have counted it at any
    moment between sending and answering, and the completion time is the latest of those, so
    spacing by it keeps the limit however long a request took. Edits still in flight are
    passed as ``pending`` and count as being inside the window."""

    def __init__(self, limit: int, period: float) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("an edit window needs limit >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self._times: deque[float] = deque()

    def _prune(self, now: float) -> None:
        while self._times and self._times[0] <= now - self.period:
            self._times.popleft()

    def wait_time(self, now: float, pending: int = 0) -> float:
        """Seconds until one more event fits (0 when it fits now; ``math.inf`` when only an
        edit in flight finishing can make room)."""
        self._prune(now)
        # How many recorded events must leave the window before one more fits.
        must_leave = len(self._times) + pending - self.limit + 1
        if must_leave <= 0:
            return 0.0
        if must_leave > len(self._times):
            return math.inf
        return self._times[must_leave - 1] + self.period - now

    def record(self, now: float) -> None:
        self._prune(now)
        self._times.append(now)

    def empty(self, now: float) -> bool:
        """No event inside the window any more (a fresh window would know the same)."""
        self._prune(now)
        return not self._times


class MessageThrottle:
    """At most one edit of one message every ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: float | None = None

    def wait_time(self, now: float) -> float:
        if self._last is None:
            return 0.0
        return max(0.0, self._last + self.interval - now)

    def record(self, now: float) -> None:
        self._last = now


# Edit priorities at a channel gate (higher goes first).
RANK_POSITION = -1  # a waiting job's new place in the queue
RANK_PROGRESS = 0
RANK_FINAL = 1


class ChannelGate:
    """Hands out edit slots for one channel. Final edits go first: while one waits, progress
    edits hold back, and queue-position edits hold back for both. A waiter's priority
    (``rank``: a bool "is final", or one of the RANK_ values) is asked anew each time it looks,
    so a reporter whose final arrives while it waits moves up at once."""

    # How long a held-back progress edit waits before it looks again.
    RECHECK = 0.25

    def __init__(self, limit: int, window: float, *, clock: Clock, sleep: Sleep) -> None:
        self.window = EditWindow(limit, window)
        self._clock = clock
        self._sleep = sleep
        self._waiters: dict[object, Callable[[], bool]] = {}
        self._inflight = 0

    def _outranked(self, rank: int) -> bool:
        return any(int(other()) > rank for other in self._waiters.values())

    async def acquire(self, is_final: Callable[[], bool | int]) -> None:
        """Wait for a slot; call ``release`` when the edit's request has completed."""
        token = object()
        self._waiters[token] = is_final
        try:
            while True:
                wait = self.window.wait_time(self._clock(), self._inflight)
                if wait <= 0 and not self._outranked(int(is_final())):
                    self._inflight += 1
                    return
                await self._sleep(wait if 0 < wait < math.inf else self.RECHECK)
        finally:
            del self._waiters[token]

    def release(self) -> None:
        self._inflight -= 1
        self.window.record(self._clock())

    def idle(self) -> bool:
        """Nobody waits, nothing is in flight and the window has emptied: dropping the gate
        loses nothing (a new one for the channel starts in the same state)."""
        return not self._waiters and self._inflight == 0 and self.window.empty(self._clock())


class AckGate:
    """Progress edits of a new job must not overtake its acknowledgement (an edit of an
    interaction reply that does not exist yet fails). The command handler calls ``acked``
    once it has answered; the reporter waits for that, with a timeout so nothing hangs on it."""

    def __init__(self, *, ttl: float = 600.0) -> None:
        self._events: dict[int, tuple[asyncio.Event, float]] = {}
        self._ttl = ttl

    def _event(self, job_id: int) -> asyncio.Event:
        entry = self._events.get(job_id)
        if entry is None:
            entry = (asyncio.Event(), time.monotonic())
            self._events[job_id] = entry
        return entry[0]

    def acked(self, job_id: int) -> None:
        self._event(job_id).set()
        self._prune()

    async def wait(self, job_id: int, limit: float) -> bool:
        """True once the job was acknowledged; False after ``limit`` seconds without."""
        event = self._event(job_id)
        try:
            await asyncio.wait_for(event.wait(), limit)
            return True
        except TimeoutError:
            return False

    def forget(self, job_id: int) -> None:
        self._events.pop(job_id, None)

    def _prune(self) -> None:
        # Entries for jobs that never got a reporter (cancelled while queued) expire.
        cutoff = time.monotonic() - self._ttl
        stale = [job_id for job_id, (_, born) in self._events.items() if born < cutoff]
        for job_id in stale:
            del self._events[job_id]


class JobReporter:
    """Edits one job's message: a one-item slot for progress, a final that always goes last."""

    def __init__(
        self,
        job_id: int,
        sink: ReplySink,
        gate: ChannelGate,
        *,
        interval: float,
        clock: Clock,
        sleep: Sleep,
        final_attempts: int = 8,
        send_timeout: float = 120.0,
        ready: Callable[[], Awaitable[object]] | None = None,
        on_sent: Callable[[Rendered, bool], None] | None = None,
    ) -> None:
        self.job_id = job_id
        self._sink = sink
        self._gate = gate
        self._throttle = MessageThrottle(interval)
        self._clock = clock
        self._sleep = sleep
        self._final_attempts = final_attempts
        self._send_timeout = send_timeout
        self._ready = ready
        self._on_sent = on_sent
        self._pending: Rendered | None = None
        self._final: Rendered | None = None
        self._final_tries = 0
        self._wake = asyncio.Event()
        self._landed: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.sent = 0  # edits sent (successfully or not), for tests and the benchmark
        self.replaced = 0  # frames that were superseded before they were sent
        self._task = asyncio.create_task(self._pump(), name=f"reply-job-{job_id}")

    def update(self, rendered: Rendered) -> None:
        """Show this next (unless something newer comes first). Never blocks."""
        if self._final is not None or self._landed.done():
            return
        if self._pending is not None:
            self.replaced += 1
        self._pending = rendered
        self._wake.set()

    async def finish(self, rendered: Rendered) -> bool:
        """Send the final state; returns True once it landed, False if it could not."""
        if not self._landed.done():
            if self._pending is not None:
                self.replaced += 1
                self._pending = None
            self._final = rendered
            self._wake.set()
        return await asyncio.shield(self._landed)

    @property
    def finished(self) -> bool:
        return self._landed.done()

    async def close(self) -> None:
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        if not self._landed.done():
            self._landed.set_result(False)

    async def _pump(self) -> None:
        if self._ready is not None:
            await self._ready()
        while True:
            if self._final is None and self._pending is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._throttle.wait_time(self._clock())
            if wait > 0:
                await self._sleep(wait)
                continue
            await self._gate.acquire(self._rank)
            try:
                if self._final is not None:
                    outcome = await self._send_final(self._final)
                else:
                    rendered, self._pending = self._pending, None
                    assert rendered is not None
                    await self._send_progress(rendered)
                    outcome = None
            finally:
                # Spacing counts from the moment the request completed (see EditWindow).
                self._gate.release()
                self._throttle.record(self._clock())
            if outcome == "done":
                return
            if outcome is not None:  # a retry delay after a transient failure of the final
                await self._sleep(float(outcome))

    def _rank(self) -> int:
        if self._final is not None:
            return RANK_FINAL
        if self._pending is not None and self._pending.waiting:
            return RANK_POSITION
        return RANK_PROGRESS

    async def _send(self, rendered: Rendered, final: bool) -> None:
        self.sent += 1
        try:
            await asyncio.wait_for(self._sink.send(rendered, final=final), self._send_timeout)
        except TimeoutError:
            raise TransientSendError("the edit timed out") from None
        if self._on_sent is not None:
            self._on_sent(rendered, final)

    async def _send_progress(self, rendered: Rendered) -> None:
        try:
            await self._send(rendered, final=False)
        except (TransientSendError, PermanentSendError) as error:
            # A dropped progress frame does no harm: a newer one or the final follows.
            log.warning("progress edit of job %s failed: %s", self.job_id, error)
        except Exception:
            log.exception("progress edit of job %s failed", self.job_id)

    async def _send_final(self, rendered: Rendered) -> str | float:
        """One attempt at the final edit: "done" (landed or given up) or seconds to wait
        before the next attempt."""
        self._final_tries += 1
        try:
            await self._send(rendered, final=True)
        except TransientSendError as error:
            if self._final_tries >= self._final_attempts:
                log.error(
                    "final edit of job %s failed %d times, giving up: %s",
                    self.job_id,
                    self._final_tries,
                    error,
                )
                self._landed.set_result(False)
                return "done"
            backoff = min(2.0 ** (self._final_tries - 1), 30.0)
            log.warning(
                "final edit of job %s failed (%s); retrying in %.0f s", self.job_id, error, backoff
            )
            return backoff
        except PermanentSendError as error:
            log.error("final edit of job %s cannot be sent: %s", self.job_id, error)
            self._landed.set_result(False)
            return "done"
        except Exception:
            log.exception("final edit of job %s failed unexpectedly", self.job_id)
            self._landed.set_result(False)
            return "done"
        self._landed.set_result(True)
        return "done"


class ReplyManager:
    """One reporter per job with a message, one gate per channel."""

    def __init__(
        self,
        sink_for: Callable[[Job], ReplySink],
        *,
        interval: float,
        channel_limit: int,
        channel_window: float,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        final_attempts: int = 8,
        ack_timeout: float = 60.0,
        started_at: float | None = None,
    ) -> None:
        self._sink_for = sink_for
        self._interval = interval
        self._channel_limit = channel_limit
        self._channel_window = channel_window
        self._clock = clock
        self._sleep = sleep
        self._final_attempts = final_attempts
        self._ack_timeout = ack_timeout
        # Jobs created before this wall time were acknowledged by an earlier run of the bot.
        self.started_at = time.time() if started_at is None else started_at
        self.acks = AckGate()
        # One gate per channel with edits in the last window; idle ones are dropped
        # (``_drop_idle_gates``), or a bot in many channels would keep them all for ever.
        self._gates: dict[int | None, ChannelGate] = {}
        self._gates_checked_at = clock()
        self._reporters: dict[int, JobReporter] = {}
        # Jobs whose final edit was sent: a late progress frame must not reopen their message.
        self._finished: OrderedDict[int, None] = OrderedDict()
        # Jobs that have started painting: a queue position read before they started must
        # not replace their progress.
        self._started: set[int] = set()
        self._on_sent: list[Callable[[int, Rendered, bool], None]] = []

    def add_listener(self, listener: Callable[[int, Rendered, bool], None]) -> None:
        """Call ``listener(job_id, rendered, final)`` after each edit that went through."""
        self._on_sent.append(listener)

    def gate(self, channel_id: int | None) -> ChannelGate:
        gate = self._gates.get(channel_id)
        if gate is None:
            self._drop_idle_gates()
            gate = ChannelGate(
                self._channel_limit, self._channel_window, clock=self._clock, sleep=self._sleep
            )
            self._gates[channel_id] = gate
        return gate

    def reporter(self, job: Job) -> JobReporter:
        reporter = self._reporters.get(job.id)
        if reporter is None or reporter.finished:
            job_id = job.id
            needs_ack = job.created_at >= self.started_at

            async def ready() -> None:
                if needs_ack:
                    await self.acks.wait(job_id, self._ack_timeout)

            def sent(rendered: Rendered, final: bool) -> None:
                for listener in self._on_sent:
                    listener(job_id, rendered, final)

            reporter = JobReporter(
                job.id,
                self._sink_for(job),
                self.gate(job.channel_id),
                interval=self._interval,
                clock=self._clock,
                sleep=self._sleep,
                final_attempts=self._final_attempts,
                ready=ready,
                on_sent=sent,
            )
            self._reporters[job.id] = reporter
        return reporter

    def update(self, job: Job, rendered: Rendered) -> None:
        """Show ``rendered`` on the job's message when the limits allow (newest wins)."""
        if job.id in self._finished:
            return
        if rendered.waiting:
            self._started.discard(job.id)  # back in the queue (a restart, a lost worker)
        else:
            self._started.add(job.id)
        self.reporter(job).update(rendered)

    def update_position(self, job: Job, rendered: Rendered) -> bool:
        """Show a waiting job's new place in the queue, unless it has started or finished
        meanwhile. Sent at the lowest priority of the channel. True if it was taken."""
        if job.id in self._finished or job.id in self._started:
            return False
        self.reporter(job).update(rendered)
        return True

    async def finish(self, job: Job, rendered: Rendered) -> bool:
        """The job's last edit; waits until it landed (True) or could not be sent (False)."""
        reporter = self.reporter(job)
        try:
            return await reporter.finish(rendered)
        finally:
            if self._reporters.get(job.id) is reporter:
                del self._reporters[job.id]
            self.acks.forget(job.id)
            self._started.discard(job.id)
            self._finished[job.id] = None
            while len(self._finished) > 10_000:
                self._finished.popitem(last=False)
            self._drop_idle_gates()

    def _drop_idle_gates(self) -> None:
        """Forget the gates of channels without a live reporter whose window has emptied; at
        most once per window (it walks every gate and reporter)."""
        now = self._clock()
        if now - self._gates_checked_at < self._channel_window:
            return
        self._gates_checked_at = now
        # A live reporter keeps its gate: a second gate for its channel would double the limit.
        used = {id(reporter._gate) for reporter in self._reporters.values()}
        for channel_id, gate in list(self._gates.items()):
            if id(gate) not in used and gate.idle():
                del self._gates[channel_id]

    @property
    def gate_count(self) -> int:
        return len(self._gates)

    def active(self) -> int:
        return len(self._reporters)

    async def close(self) -> None:
        reporters = list(self._reporters.values())
        self._reporters.clear()
        for reporter in reporters:
            await reporter.close()
