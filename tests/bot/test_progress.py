"""Progress throttling, on a virtual clock: the newest frame wins, the limits hold, the final
edit lands last and is retried."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable

import pytest

from bot.progress import (
    EditWindow,
    JobReporter,
    MessageThrottle,
    PermanentSendError,
    ReplyManager,
    TransientSendError,
)
from bot.render import Rendered
from tests.bot.jobrows import make_job


class VirtualClock:
    """Time that moves only when every task is waiting on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(seconds, 0.0), next(self._seq), future))
        await future

    async def settle(self) -> None:
        # The code under test does no real I/O, so a few passes of the loop run everything
        # that is ready.
        for _ in range(30):
            await asyncio.sleep(0)

    async def run_until(self, done: Callable[[], bool], *, limit: float = 10_000.0) -> None:
        await self.settle()
        while not done():
            if not self._timers:
                raise AssertionError("nothing left to wait for, but the condition is not met")
            at, _, future = heapq.heappop(self._timers)
            if at > limit:
                raise AssertionError(f"condition not met by t={limit}")
            self.now = max(self.now, at)
            if not future.done():
                future.set_result(None)
            await self.settle()

    async def advance(self, seconds: float) -> None:
        end = self.now + seconds
        await self.settle()
        while self._timers and self._timers[0][0] <= end:
            at, _, future = heapq.heappop(self._timers)
            self.now = max(self.now, at)
            if not future.done():
                future.set_result(None)
            await self.settle()
        self.now = end
        await self.settle()


class RecordingSink:
    """Records (completion time, job, label, final) for every edit, and (start, end) spans;
    can fail on demand. Latency varies (deterministically) to mimic a real network."""

    def __init__(
        self, clock: VirtualClock, job_id: int, log: list[tuple[float, int, str, bool]]
    ) -> None:
        self.clock = clock
        self.job_id = job_id
        self.log = log
        self.spans: list[tuple[float, float]] = []
        self.failures: list[Exception] = []
        self.latency: float | None = None
        self.attempts = 0

    async def send(self, rendered: Rendered, *, final: bool) -> None:
        self.attempts += 1
        start = self.clock.now
        latency = (
            self.latency if self.latency is not None else 0.02 + (self.attempts * 37 % 11) / 20
        )
        await self.clock.sleep(latency)
        if self.failures:
            raise self.failures.pop(0)
        self.spans.append((start, self.clock.now))
        self.log.append((self.clock.now, self.job_id, rendered.content, final))


def frame(label: str, job_id: int = 1) -> Rendered:
    return Rendered(content=label, job_id=job_id)


def manager_for(
    clock: VirtualClock,
    log: list[tuple[float, int, str, bool]],
    *,
    interval: float = 3.0,
    limit: int = 4,
    window: float = 5.0,
) -> tuple[ReplyManager, dict[int, RecordingSink]]:
    sinks: dict[int, RecordingSink] = {}

    def sink_for(job):  # noqa: ANN001, ANN202
        sinks[job.id] = RecordingSink(clock, job.id, log)
        return sinks[job.id]

    manager = ReplyManager(
        sink_for,
        interval=interval,
        channel_limit=limit,
        channel_window=window,
        clock=clock,
        sleep=clock.sleep,
        started_at=10**12,  # every test job counts as acknowledged by an earlier run
    )
    return manager, sinks


def test_edit_window_counts_a_sliding_window() -> None:
    window = EditWindow(limit=2, period=5.0)
    assert window.wait_time(0.0) == 0.0
    window.record(0.0)
    window.record(1.0)
    assert window.wait_time(2.0) == pytest.approx(3.0)  # until the edit at 0.0 leaves
    assert window.wait_time(5.0) == 0.0
    window.record(5.0)
    assert window.wait_time(5.5) == pytest.approx(0.5)


def test_edit_window_counts_edits_in_flight() -> None:
    window = EditWindow(limit=3, period=5.0)
    window.record(0.0)
    assert window.wait_time(1.0, pending=1) == 0.0
    assert window.wait_time(1.0, pending=2) == pytest.approx(4.0)  # the one at 0.0 must leave
    assert window.wait_time(1.0, pending=3) == math.inf  # only a finished edit makes room


def test_message_throttle() -> None:
    throttle = MessageThrottle(3.0)
    assert throttle.wait_time(0.0) == 0.0
    throttle.record(1.0)
    assert throttle.wait_time(2.0) == pytest.approx(2.0)
    assert throttle.wait_time(4.5) == 0.0


async def test_newest_frame_wins_and_final_comes_last() -> None:
    clock = VirtualClock()
    log: list[tuple[float, int, str, bool]] = []
    manager, _ = manager_for(clock, log)
    job = make_job(id=1, channel_id=10)
    for step in range(1, 11):  # ten frames before the first edit can go out
        manager.update(job, frame(f"step {step}"))
    await clock.run_until(lambda: len(log) == 1)
    assert log[0][2] == "step 10"
    for step in range(11, 21):  # arrive while the message waits out its interval
        manager.update(job, frame(f"step {step}"))
        await clock.advance(0.1)
    await clock.run_until(lambda: len(log) == 2)
    assert log[1][2] == "step 20"
    manager.update(job, frame("step 21"))  # superseded by the final before it could be sent
    landed = asyncio.ensure_future(manager.finish(job, frame("final")))
    await clock.run_until(landed.done)
    assert landed.result() is True
    assert [entry[2] for entry in log] == ["step 10", "step 20", "final"]
    assert log[-1][3] is True
    # Updates after the final change nothing.
    manager.update(job, frame("late"))
    await clock.advance(30)
    assert log[-1][2] == "final"


async def test_limits_hold_for_many_messages_in_one_channel() -> None:
    clock = VirtualClock()
    log: list[tuple[float, int, str, bool]] = []
    interval, limit, window = 3.0, 4, 5.0
    manager, sinks = manager_for(clock, log, interval=interval, limit=limit, window=window)
    jobs = [make_job(id=i, channel_id=10) for i in range(1, 7)]
    finals = []
    for tick in range(600):  # 60 virtual seconds, a frame for every job every 0.1 s
        for job in jobs:
            manager.update(job, frame(f"{job.id}:{tick}", job.id))
        if tick == 300:
            finals.append(asyncio.ensure_future(manager.finish(jobs[0], frame("final 1", 1))))
        await clock.advance(0.1)
    finals += [
        asyncio.ensure_future(manager.finish(job, frame(f"final {job.id}", job.id)))
        for job in jobs[1:]
    ]
    await clock.run_until(lambda: all(f.done() for f in finals))
    assert all(f.result() for f in finals)

    # Discord counts an edit at some moment between the request leaving and its answer. Channel:
    # whatever those moments were, no window of `window` seconds holds more than `limit`
    # edits. (Edits that could share a window with edit E, E being the latest to start among
    # them, started no later than E and finished after E's start minus the window.)
    spans = sorted(span for sink in sinks.values() for span in sink.spans)
    for start, _ in spans:
        could_share = [s for s in spans if s[0] <= start and s[1] > start - window + 1e-9]
        assert len(could_share) <= limit, f"{len(could_share)} edits may share a window at {start}"
    # Message: each edit starts at least `interval` after the previous one was answered.
    for job in jobs:
        mine = sorted(sinks[job.id].spans)
        gaps = [b[0] - a[1] for a, b in itertools.pairwise(mine)]
        assert all(gap >= interval - 1e-9 for gap in gaps), gaps
        last = [entry for entry in log if entry[1] == job.id][-1]
        assert last[2] == f"final {job.id}" and last[3] is True
    # The channel was kept busy: close to the limit, not far below it.
    assert len(log) >= 0.8 * limit * 60 / window


async def test_final_jumps_ahead_of_progress_at_the_channel_gate() -> None:
    clock = VirtualClock()
    log: list[tuple[float, int, str, bool]] = []
    manager, _ = manager_for(clock, log, interval=0.5, limit=1, window=5.0)
    jobs = [make_job(id=i, channel_id=10) for i in range(1, 4)]
    for job in jobs:
        manager.update(job, frame(f"progress {job.id}", job.id))
    await clock.run_until(lambda: len(log) == 1)  # one progress edit took the only slot
    final = asyncio.ensure_future(manager.finish(jobs[2], frame("final 3", 3)))
    await clock.run_until(final.done)
    assert [entry[2] for entry in log][:2] == [log[0][2], "final 3"]


async def test_final_is_retried_on_transient_errors_until_it_lands() -> None:
    clock = VirtualClock()
    log: list[tuple[float, int, str, bool]] = []
    manager, sinks = manager_for(clock, log, interval=1.0)
    job = make_job(id=1, channel_id=10)
    manager.update(job, frame("progress"))
    await clock.run_until(lambda: len(log) == 1)
    sinks[1].failures = [TransientSendError("502"), TransientSendError("429 storm")] * 2
    landed = asyncio.ensure_future(manager.finish(job, frame("final")))
    await clock.run_until(landed.done)
    assert landed.result() is True
    assert sinks[1].attempts == 1 + 5
    assert log[-1][2] == "final"


async def test_final_gives_up_on_a_permanent_error() -> None:
    clock = VirtualClock()
    log: list[tuple[float, int, str, bool]] = []
    manager, sinks = manager_for(clock, log)
    job = make_job(id=1, channel_id=10)
    manager.update(job, frame("progress"))
    await clock.run_until(lambda: len(log) == 1)
    sinks[1].failures = [PermanentSendError("no access")]
    landed = asyncio.ensure_future(manager.finish(job, frame("final")))
    await clock.run_until(landed.done)
    assert landed.result() is False
    assert sinks[1].attempts == 2  # no retry


async def test_failed_progress_edit_is_dropped_and_the_next_goes_out() -> None:
    clock = VirtualClock()
    log: list[tuple[float, int, str, bool]] = []
    manager, sinks = manager_for(clock, log, interval=1.0)
    job = make_job(id=1, channel_id=10)
    manager.update(job, frame("first"))
    await clock.settle()
    sinks[1].failures = [TransientSendError("502")]
    await clock.advance(0.5)
    manager.update(job, frame("second"))
    await clock.run_until(lambda: len(log) == 1)
    assert log[0][2] == "second"


async def test_final_waits_for_the_edit_in_flight() -> None:
    clock = VirtualClock()
    log: list[tuple[float, int, str, bool]] = []
    manager, sinks = manager_for(clock, log, interval=1.0)
    job = make_job(id=1, channel_id=10)
    manager.reporter(job)
    sinks[1].latency = 10.0  # the progress edit in flight is slow to answer
    manager.update(job, frame("progress"))
    await clock.settle()
    assert sinks[1].attempts == 1 and log == []
    landed = asyncio.ensure_future(manager.finish(job, frame("final")))
    await clock.run_until(landed.done)
    assert [entry[2] for entry in log] == ["progress", "final"]


async def test_progress_of_a_new_job_waits_for_its_acknowledgement() -> None:
    clock = VirtualClock()
    log: list[tuple[float, int, str, bool]] = []
    manager, _ = manager_for(clock, log)
    manager.started_at = 0.0  # the job below was created by this run
    job = make_job(id=1, channel_id=10, created_at=5.0)
    manager.update(job, frame("progress"))
    await clock.advance(1.0)
    assert log == []
    manager.acks.acked(1)
    await clock.run_until(lambda: len(log) == 1)
    assert log[0][2] == "progress"


async def test_reporter_close_resolves_finish() -> None:
    clock = VirtualClock()
    log: list[tuple[float, int, str, bool]] = []
    manager, _ = manager_for(clock, log)
    job = make_job(id=1, channel_id=10)
    reporter = manager.reporter(job)
    assert isinstance(reporter, JobReporter)
    await manager.close()
    assert reporter.finished


async def test_idle_channel_gates_are_dropped_and_live_ones_kept() -> None:
    """A bot in many channels must not keep a gate per channel for ever; a gate goes only when
    no reporter uses it and its window has emptied (so a new one knows the same)."""
    clock = VirtualClock()
    log: list[tuple[float, int, str, bool]] = []
    manager, _ = manager_for(clock, log)
    finals = [
        asyncio.ensure_future(manager.finish(make_job(id=n, channel_id=100 + n), frame("final", n)))
        for n in range(1, 51)
    ]
    await clock.run_until(lambda: all(f.done() for f in finals))
    live = make_job(id=999, channel_id=7)
    manager.update(live, frame("painting", 999))
    await clock.run_until(lambda: any(entry[1] == 999 for entry in log))
    live_gate = manager.gate(7)
    await clock.advance(10)  # every window has emptied
    last = asyncio.ensure_future(manager.finish(make_job(id=1000, channel_id=8), frame("end")))
    await clock.run_until(last.done)
    assert manager.gate_count == 2  # channel 7 (a live reporter) and channel 8 (just used)
    assert manager.gate(7) is live_gate
