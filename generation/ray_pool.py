"""Several GPUs: a pool of Ray actors, one per GPU, behind the same ``Workers`` seam as the local
``GpuWorker``. Imported only when ``IMAGINE_WORKERS=ray`` (Ray is an optional extra).

Each actor (``Painter``) runs a ``GpuWorker`` inside its own process: it loads the models once,
paints up to ``batch_size`` jobs together in one step (continuous batching, as the local worker
does: generation/worker_batch.py) and serves short calls (embeddings, CLIP scores, /rank) between steps,
exactly as the local worker does. The actor is asynchronous, so a ``cancel`` call reaches it
while a job runs (a call to a single-threaded actor would wait for the job to end); the job
sees the cancel flag at its next step.

The bot keeps the fair order: its scheduler takes the next job from SQLite only when a worker is
free and hands it to ``submit``; the pool gives it to the actor with the fewest jobs that has
room. The members of a ``submit_group`` go to one actor together, which batches them. ``run`` is a streaming
generator: progress frames come back as the job paints, then the finished PNG and its metadata.

When an actor dies (kill -9, a lost node, a crash) Ray restarts it (``max_restarts=-1``, the
models load again) and its job fails here with ``WorkerLost``: the scheduler puts that job back
on the queue and it runs again on whichever worker is free first. A job that runs past the time
limit is asked to stop; if it does not stop within ``hang_grace`` seconds its actor is killed and
restarted, which is the same as a death.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError

from generation.errors import GenerationCancelled, GenerationError
from generation.request import GenerationRequest
from generation.worker import CUDA_BATCH_SIZE, GpuWorker
from generation.workers import (
    FinishedImage,
    GroupMember,
    JobTimedOut,
    ProgressFrame,
    WorkerBusy,
    WorkerLost,
    WorkersStatus,
    timeout_message,
)

log = logging.getLogger(__name__)

# The short calls an actor serves; the bot names them, the actor runs the GpuWorker method.
SHORT_CALLS = ("embed_texts", "clip_score", "rank_captions")


def _outcome(error: BaseException) -> tuple[str, Any]:
    """Errors travel as values: a GenerationError keeps its type and message; anything else
    becomes a short GenerationError (its traceback stays in the actor's log)."""
    if isinstance(error, GenerationError):
        return ("error", error)
    log.error("painter failed", exc_info=error)
    return ("error", GenerationError(f"internal error ({type(error).__name__}); the job failed"))


class Painter:
    """One per GPU. Lives in a Ray worker process; wrapped by ``ray.remote`` in ``RayPool``."""

    def __init__(self, models_spec: str | None, device: str | None, options: dict[str, Any]):
        self._models_spec = models_spec
        self._device = device
        self._options = options
        self._worker: GpuWorker | None = None
        self._starting: asyncio.Lock | None = None
        self._handles: dict[int, Any] = {}
        # Groups whose members are still arriving (one run call each): id -> (member, future).
        self._groups: dict[int, list[tuple[GroupMember, asyncio.Future[Any]]]] = {}
        self._cancelled_early: set[int] = set()  # cancelled while their group was incomplete

    async def _started(self) -> GpuWorker:
        if self._starting is None:
            self._starting = asyncio.Lock()
        async with self._starting:
            if self._worker is None:
                worker = GpuWorker(self._models_spec, device=self._device, **self._options)
                await worker.start()
                self._worker = worker
        return self._worker

    async def ready(self) -> tuple[str, Any]:
        """Load the models (once per process) and say who this is."""
        try:
            worker = await self._started()
        except BaseException as error:  # noqa: BLE001 - travels back to the pool
            return _outcome(error)
        facts = worker.describe()
        return ("ok", {"pid": os.getpid(), "facts": facts, "generators": worker.generator_names()})

    async def run(
        self, key: int, request: GenerationRequest, group: tuple[int, int] | None = None
    ) -> AsyncIterator[tuple[str, Any]]:
        """Stream ("progress", ProgressFrame)..., then ("done", FinishedImage) or ("error", e).

        ``group`` (id, size): the job is one of ``size`` calls that paint together; the last
        to arrive submits them all at once (``GpuWorker.submit_group``)."""
        worker = await self._started()
        frames: asyncio.Queue[ProgressFrame] = asyncio.Queue()
        if group is None:
            handle = worker.submit(request, frames.put_nowait, job_id=key)
        else:
            member = GroupMember(request, frames.put_nowait, job_id=key)
            handle = await self._join_group(worker, group, member)
        self._handles[key] = handle
        if key in self._cancelled_early:
            self._cancelled_early.discard(key)
            handle.cancel()
        finished = asyncio.ensure_future(handle.wait())
        try:
            while not finished.done():
                next_frame = asyncio.ensure_future(frames.get())
                await asyncio.wait({next_frame, finished}, return_when=asyncio.FIRST_COMPLETED)
                if next_frame.done():
                    yield ("progress", next_frame.result())
                else:
                    next_frame.cancel()
            while not frames.empty():
                yield ("progress", frames.get_nowait())
            error = finished.exception()
            yield ("done", finished.result()) if error is None else _outcome(error)
        finally:
            handle.cancel()  # a no-op when it finished; stops it when the caller went away
            self._handles.pop(key, None)

    async def _join_group(
        self, worker: GpuWorker, group: tuple[int, int], member: GroupMember
    ) -> Any:
        group_id, size = group
        waiting = self._groups.setdefault(group_id, [])
        arrived: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        waiting.append((member, arrived))
        if len(waiting) == size:
            del self._groups[group_id]
            handles = worker.submit_group([m for m, _ in waiting])
            for (_, future), handle in zip(waiting, handles, strict=True):
                future.set_result(handle)
        return await arrived

    async def cancel(self, key: int) -> bool:
        handle = self._handles.get(key)
        if handle is None:
            if any(m.job_id == key for group in self._groups.values() for m, _ in group):
                self._cancelled_early.add(key)
                return True
            return False
        handle.cancel()
        return True

    async def call(self, name: str, args: tuple[Any, ...]) -> tuple[str, Any]:
        if name not in SHORT_CALLS:
            return ("error", GenerationError(f"unknown call {name!r}"))
        try:
            worker = await self._started()
            return ("ok", await getattr(worker, name)(*args))
        except BaseException as error:  # noqa: BLE001 - travels back to the pool
            return _outcome(error)


class RayHandle:
    """A job submitted to the pool (the ``Handle`` of generation.workers)."""

    def __init__(self, job_id: object, future: asyncio.Future[FinishedImage]) -> None:
        self.job_id = job_id
        self._future = future
        self.cancel_requested = False
        self._on_cancel: Callable[[], None] | None = None

    def cancel(self) -> None:
        self.cancel_requested = True
        if self._on_cancel is not None:
            self._on_cancel()

    def done(self) -> bool:
        return self._future.done()

    async def wait(self) -> FinishedImage:
        return await asyncio.shield(self._future)


@dataclass
class _PoolJob:
    handle: RayHandle
    request: GenerationRequest
    on_progress: Callable[[ProgressFrame], None] | None
    timed_out: bool = False
    group: object = None  # members of one submit_group share it


@dataclass
class _Slot:
    index: int
    actor: Any
    up: bool = False
    pid: int | None = None
    jobs: list[_PoolJob] = field(default_factory=list)  # painting there now
    facts: dict[str, str] = field(default_factory=dict)
    calls: int = 0  # short calls in flight


class RayPool:
    """``workers`` actors, each asking Ray for ``gpus`` GPUs (0: a CPU worker) and the extra
    ``resources``. ``address``: a running cluster to join ("auto" or "ray://..."); None starts a
    local one (shut down again by ``close``). ``batch_size``: jobs each actor paints in one step
    (None: 4 on GPU painters, 1 on CPU painters)."""

    REVIVE_PAUSE = 1.0

    def __init__(
        self,
        models_spec: str | None,
        *,
        workers: int = 1,
        gpus: float = 1.0,
        address: str | None = None,
        device: str | None = None,
        resources: dict[str, float] | None = None,
        job_timeout: float | None = None,
        hang_grace: float = 30.0,
        batch_size: int | None = None,
        worker_options: dict[str, Any] | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError(f"the pool needs 1 worker or more, not {workers}")
        if gpus < 0:
            raise ValueError(f"gpus per worker must be 0 or more, not {gpus}")
        self._models_spec = models_spec
        self._workers = workers
        self._gpus = gpus
        self._address = address
        # A CPU worker must be told so: "cuda" would be picked on a machine that has one.
        self._device = device if device is not None else ("cpu" if gpus == 0 else None)
        self._resources = dict(resources or {})
        self.job_timeout = job_timeout
        self._hang_grace = hang_grace
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be 1 or more or None, not {batch_size}")
        on_cpu = self._device == "cpu" or gpus == 0
        self.batch_size = batch_size or (1 if on_cpu else CUDA_BATCH_SIZE)
        self._worker_options = {"batch_size": self.batch_size, **(worker_options or {})}
        self._slots: list[_Slot] = []
        self._pending: deque[_PoolJob] = deque()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._keys = itertools.count(1)
        self._next_id = 0
        self._started_ray = False
        self._closing = False
        self._generators: tuple[str, ...] = ()
        self.jobs_lost = 0
        self._changed = asyncio.Event()

    # ---- life cycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Join or start the cluster, start the actors and wait until every one has loaded
        its models; raises what loading raised."""
        await asyncio.to_thread(self._init_ray)
        painter = ray.remote(Painter)
        for index in range(self._workers):
            actor = painter.options(
                name=None,
                num_gpus=self._gpus,
                num_cpus=1,
                resources=self._resources or None,
                max_restarts=-1,  # a dead painter comes back (its job is requeued by the bot)
                max_task_retries=0,  # ... but a job is never replayed by Ray behind our back
            ).remote(self._models_spec, self._device, self._worker_options)
            self._slots.append(_Slot(index, actor))
        try:
            await asyncio.gather(*(self._bring_up(slot) for slot in self._slots))
        except BaseException:
            await self.close()
            raise

    def _init_ray(self) -> None:
        if ray.is_initialized():
            return
        if self._address:
            ray.init(address=self._address, logging_level=logging.WARNING)
        else:
            ray.init(include_dashboard=False, logging_level=logging.WARNING)
            self._started_ray = True

    async def _bring_up(self, slot: _Slot) -> None:
        kind, value = await slot.actor.ready.remote()
        if kind != "ok":
            raise value
        self._mark_up(slot, value)

    def _mark_up(self, slot: _Slot, info: dict[str, Any]) -> None:
        slot.up = True
        slot.pid = info["pid"]
        slot.facts = info["facts"]
        self._generators = tuple(info["generators"])
        log.info("painter %d is up (pid %s)", slot.index, slot.pid)
        self._changed.set()
        self._dispatch()

    async def wait_all_up(self) -> None:
        """Return once every painter is up (after a restart: once its models are loaded)."""
        while self.status().up < self._workers:
            self._changed.clear()
            await self._changed.wait()

    async def close(self) -> None:
        """Stop every job (they fail with WorkerLost and stay in the bot's queue), stop the
        actors, and shut down the cluster this pool started."""
        self._closing = True
        error = WorkerLost("the workers were shut down; the job was not finished")
        while self._pending:
            job = self._pending.popleft()
            if not job.handle._future.done():
                job.handle._future.set_exception(error)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for slot in self._slots:
            try:
                ray.kill(slot.actor, no_restart=True)
            except Exception:  # noqa: BLE001 - already gone
                log.debug("painter %d was already gone", slot.index)
        self._slots = []
        if self._started_ray:
            await asyncio.to_thread(ray.shutdown)
            self._started_ray = False

    # ---- jobs -------------------------------------------------------------------------------

    @property
    def capacity(self) -> int:
        """Jobs that paint at once: every painter's batch."""
        return self._workers * self.batch_size

    def submit(
        self,
        request: GenerationRequest,
        on_progress: Callable[[ProgressFrame], None] | None = None,
        *,
        job_id: object = None,
    ) -> RayHandle:
        if not self._slots or self._closing:
            raise RuntimeError("the pool is not running: await start() first")
        if job_id is None:
            self._next_id += 1
            job_id = self._next_id
        handle = self._queue(request, on_progress, job_id, None)
        self._dispatch()
        return handle

    def submit_group(self, members: Sequence[GroupMember]) -> list[RayHandle]:
        """Jobs that paint together: they go to one painter (in chunks of its batch size),
        which admits them into one batch step."""
        if not self._slots or self._closing:
            raise RuntimeError("the pool is not running: await start() first")
        group = object()
        handles = [self._queue(m.request, m.on_progress, m.job_id, group) for m in members]
        self._dispatch()
        return handles

    def _queue(
        self,
        request: GenerationRequest,
        on_progress: Callable[[ProgressFrame], None] | None,
        job_id: object,
        group: object,
    ) -> RayHandle:
        if job_id is None:
            self._next_id += 1
            job_id = self._next_id
        handle = RayHandle(job_id, asyncio.get_running_loop().create_future())
        job = _PoolJob(handle, request, on_progress, group=group)
        handle._on_cancel = lambda: self._cancel_waiting(job)
        self._pending.append(job)
        return handle

    def _cancel_waiting(self, job: _PoolJob) -> None:
        if job in self._pending:
            self._pending.remove(job)
            if not job.handle._future.done():
                job.handle._future.set_exception(GenerationCancelled(0))

    def _dispatch(self) -> None:
        """Give waiting jobs, in order, to painters that are up and have room: each to the one
        with the fewest jobs; a group's chunk all to one painter with room for all of it."""
        while self._pending and not self._closing:
            head = self._pending[0]
            chunk = [head]
            if head.group is not None:
                chunk = []
                for job in self._pending:
                    if job.group is not head.group or len(chunk) == self.batch_size:
                        break
                    chunk.append(job)
            room = [s for s in self._slots if s.up and self.batch_size - len(s.jobs) >= len(chunk)]
            if not room:
                return  # it waits for room, and so does everyone behind it
            slot = min(room, key=lambda s: (len(s.jobs), s.index))
            group = (next(self._keys), len(chunk)) if len(chunk) > 1 else None
            for job in chunk:
                self._pending.popleft()
                slot.jobs.append(job)
                self._spawn(self._drive(slot, job, group))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _drive(self, slot: _Slot, job: _PoolJob, group: tuple[int, int] | None) -> None:
        """Run one job on one painter: relay progress, deliver the outcome, notice a death."""
        handle = job.handle
        future = handle._future
        key = next(self._keys)
        actor = slot.actor
        handle._on_cancel = lambda: self._spawn(_quietly(actor.cancel.remote(key)))
        watchdog = None
        if self.job_timeout is not None:
            watchdog = asyncio.get_running_loop().call_later(
                self.job_timeout, lambda: self._spawn(self._time_out(slot, job, key))
            )
        # The outcome is settled after the slot is free again, so that whoever awaits the job
        # (the scheduler taking the next one) sees the painter idle.
        result: FinishedImage | None = None
        error: BaseException | None = None
        try:
            if handle.cancel_requested:
                raise GenerationCancelled(0)
            async for ref in actor.run.remote(key, job.request, group):
                kind, value = await ref
                if kind == "progress":
                    if job.on_progress is not None and not future.done():
                        job.on_progress(value)
                elif kind == "done":
                    result = value
                else:
                    if job.timed_out and isinstance(value, GenerationCancelled):
                        value = JobTimedOut(timeout_message(self.job_timeout or 0))
                    error = value
        except GenerationCancelled as cancelled:
            error = cancelled
        except RayActorError as lost:
            self.jobs_lost += 1
            log.warning("painter %d was lost during job %s: %s", slot.index, handle.job_id, lost)
            reason = "hung past the time limit" if job.timed_out else "stopped unexpectedly"
            error = WorkerLost(f"the worker painting this picture {reason}")
            # "Unavailable" may be a network blip with the job still going there: stop it.
            self._spawn(_quietly(actor.cancel.remote(key)))
            if slot.up:
                slot.up = False
                if not self._closing:
                    self._spawn(self._revive(slot))
        except RayError as failure:
            log.error("job %s failed on painter %d: %s", handle.job_id, slot.index, failure)
            error = GenerationError("internal error on a worker; the job failed")
        finally:
            if watchdog is not None:
                watchdog.cancel()
            slot.jobs = [j for j in slot.jobs if j is not job]
            if result is None and error is None:
                error = WorkerLost("the worker ended the job without a result")
            _settle(future, result=result, error=error)
            self._dispatch()

    async def _time_out(self, slot: _Slot, job: _PoolJob, key: int) -> None:
        """Ask the job to stop; if it is still there ``hang_grace`` seconds later, the painter
        is hung: kill its process (Ray restarts it) and the job goes back on the queue."""
        job.timed_out = True
        log.warning(
            "job %s ran past the %s s time limit; stopping it", job.handle.job_id, self.job_timeout
        )
        await _quietly(slot.actor.cancel.remote(key))
        try:
            await asyncio.wait_for(asyncio.shield(job.handle._future), self._hang_grace)
        except TimeoutError:
            log.error("painter %d is hung; killing its process", slot.index)
            ray.kill(slot.actor, no_restart=False)
        except BaseException:  # noqa: BLE001 - the job ended (with an error): nothing to do
            pass

    async def _revive(self, slot: _Slot) -> None:
        """Wait for Ray to restart a dead painter (its models load again), then use it."""
        while not self._closing:
            try:
                kind, value = await slot.actor.ready.remote()
            except RayActorError:
                await asyncio.sleep(self.REVIVE_PAUSE)
                continue
            if kind == "ok":
                self._mark_up(slot, value)
            else:
                log.error("painter %d could not load its models again: %s", slot.index, value)
            return

    # ---- short calls --------------------------------------------------------------------------

    async def _call(self, name: str, *args: Any) -> Any:
        """Run a short call on a painter that is up: an idle one if any, else the one with the
        fewest calls in flight; once more on another painter if that one dies meanwhile."""
        for _attempt in range(2):
            up = [slot for slot in self._slots if slot.up]
            if not up:
                raise WorkerBusy("no painter is up right now (one is restarting); try again soon")
            slot = min(up, key=lambda s: (bool(s.jobs), s.calls, s.index))
            slot.calls += 1
            try:
                kind, value = await slot.actor.call.remote(name, args)
            except RayActorError:
                continue
            finally:
                slot.calls -= 1
            if kind != "ok":
                raise value
            return value
        raise WorkerBusy("the painters are restarting; try again soon")

    async def embed_texts(self, texts: list[str]) -> list[list[float]]:
        return await self._call("embed_texts", list(texts))

    async def clip_score(self, png: bytes, prompt: str) -> float:
        return await self._call("clip_score", png, prompt)

    async def rank_captions(self, image: bytes, captions: list[str]) -> list[tuple[str, float]]:
        return await self._call("rank_captions", image, list(captions))

    # ---- facts --------------------------------------------------------------------------------

    def generator_names(self) -> tuple[str, ...]:
        return self._generators

    def status(self) -> WorkersStatus:
        up = sum(slot.up for slot in self._slots)
        busy = sum(bool(slot.jobs) for slot in self._slots)
        return WorkersStatus(kind="ray", total=self._workers, up=up, busy=busy)

    def describe(self) -> dict[str, str]:
        facts: dict[str, str] = {"generators": ", ".join(self._generators)}
        first = next((slot for slot in self._slots if slot.up), None)
        if first is None:
            return facts | {"device": "no worker up"}
        facts.update(first.facts)
        return facts

    def worker_pids(self) -> list[int | None]:
        """The process id of each painter (tests and operators: which process to look at)."""
        return [slot.pid for slot in self._slots]

    def pid_running(self, job_id: object) -> int | None:
        """The process id of the painter running ``job_id`` now, if any."""
        for slot in self._slots:
            if any(job.handle.job_id == job_id for job in slot.jobs):
                return slot.pid
        return None


def _settle(
    future: asyncio.Future[Any], *, result: Any = None, error: BaseException | None = None
) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def _quietly(ref: Any) -> None:
    """Await a fire-and-forget actor call; its painter may be gone, which is no news here."""
    try:
        await ref
    except RayError:
        pass
