"""The single GPU worker: one thread owns the device; the asyncio side submits and awaits.

Everything that touches torch or encodes a PNG runs on the worker's thread. Results, errors and
progress frames come back to the event loop through ``loop.call_soon_threadsafe`` (the same
bridge aiosqlite uses for sqlite3), so a coroutine never waits on torch and the loop never stalls.

Jobs run one at a time in submission order. Short calls (text embeddings for moderation, CLIP
scores) must not wait minutes behind a running job, so the running generator services them
between two of its steps through ``RunControl.between_steps``: at most ``calls_per_step`` of
them between two steps (a flood of /rank must not stall the picture), and at most
``max_waiting_calls`` waiting (beyond that a call fails at once with WorkerBusy).

Per-job time limit (``job_timeout``): when a job runs past it, its handle fails at once with
JobTimedOut and the job is asked to stop. A job that still has not stopped ``hang_grace``
seconds later is stuck inside a step (a download that never ends, a kernel that never returns).
A Python thread cannot be killed, so the stuck thread is abandoned: it is left to finish or
hang on its own (it no longer takes jobs or short calls), and a fresh device thread takes over
with the same loaded models, so the next job runs at once. A stuck CUDA kernel would block the
new thread too; for that, run the workers on Ray, where a hung actor's process is killed and
restarted.

Abandoned threads keep what they hold on the device, so they are counted
(``generation/abandoned.py``): the log and /info name them, and when one more would be past
``max_stuck_threads`` the worker gives up instead. It fails its waiting work with WorkerFailed,
refuses new work with a message that says why, and ``wait_failed()`` returns, so that the bot
stops with a non-zero exit status and its supervisor starts a fresh process (the only way to get
the memory back). ``close()`` waits for the device thread at most ``close_timeout`` seconds.
"""

from __future__ import annotations

import asyncio
import collections
import io
import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from generation.abandoned import AbandonedThreads
from generation.errors import GenerationCancelled, GenerationError
from generation.request import GenerationRequest, Progress, RunControl
from generation.worker_batch import batchable, finished_image, lose_stuck_batch, run_batch
from generation.workers import (
    CallGate,
    FinishedImage,
    GroupMember,
    JobTimedOut,
    ProgressFrame,
    WorkerFailed,
    WorkersStatus,
    timeout_message,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Jobs painting in one step when IMAGINE_BATCH_SIZE is not set, on a CUDA device (on a CPU a
# batch only makes each job slower: 1).
CUDA_BATCH_SIZE = 4

# Preview frames are shown in a Discord embed a few hundred pixels wide; a smaller frame keeps
# uploads quick and edits cheap.
PREVIEW_MAX_SIDE = 384


class JobHandle:
    """The asyncio side's view of one submitted job."""

    def __init__(self, job_id: object, future: asyncio.Future[FinishedImage]) -> None:
        self.job_id = job_id
        self._future = future
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop; the generator raises GenerationCancelled within one step."""
        self._cancel.set()

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def done(self) -> bool:
        return self._future.done()

    async def wait(self) -> FinishedImage:
        # shield: a caller that stops waiting must not cancel the future the thread resolves.
        return await asyncio.shield(self._future)


@dataclass
class _Job:
    handle: JobHandle
    request: GenerationRequest
    on_progress: Callable[[ProgressFrame], None] | None
    timer: asyncio.TimerHandle | None = None
    # Members of one submit_group share a group (an object of their own) and its size.
    group: object = None
    group_size: int = 1


@dataclass
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]


def _preview_png(image: Any) -> bytes:
    preview = image.copy()
    preview.thumbnail((PREVIEW_MAX_SIDE, PREVIEW_MAX_SIDE))
    buf = io.BytesIO()
    # compress_level 1: previews are thrown away; speed matters more than bytes.
    preview.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def _default_store_factory(models_spec: str | None, device: str | None) -> Any:
    from generation.models import ModelsConfig, ModelStore

    return ModelStore(ModelsConfig.load(models_spec), device=device)


class GpuWorker:
    """Owns the device thread. Create, ``await start()``, submit jobs, ``await close()``."""

    def __init__(
        self,
        models_spec: str | None,
        *,
        device: str | None = None,
        store_factory: Callable[[str | None, str | None], Any] | None = None,
        generate: Callable[..., Any] | None = None,
        job_timeout: float | None = None,
        hang_grace: float = 10.0,
        max_waiting_calls: int = 32,
        calls_per_step: int = 4,
        max_stuck_threads: int = 2,
        close_timeout: float = 30.0,
        start_timeout: float | None = None,
        batch_size: int | None = None,
    ) -> None:
        """``start_timeout``: how long loading the models at start may take (None: no limit;
        first downloads of real weights can take many minutes)."""
        if job_timeout is not None and job_timeout <= 0:
            raise ValueError(f"job_timeout must be above 0 or None, not {job_timeout}")
        if calls_per_step < 1:
            raise ValueError(f"calls_per_step must be 1 or more, not {calls_per_step}")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size must be 1 or more or None, not {batch_size}")
        self._models_spec = models_spec
        self._device = device
        self._store_factory = store_factory or _default_store_factory
        self._generate = generate
        # Continuous batching (generation/worker_batch.py): up to batch_size step-form jobs
        # paint in one step. None: 4 on CUDA, 1 on a CPU (decided once the device is known).
        self._batch_setting = batch_size
        self.batch_size = batch_size or 1
        self._batches_allowed = generate is None  # a stand-in generate runs jobs alone
        self._waiting: collections.deque[_Job] = collections.deque()  # device thread only
        self._batch_jobs: list[_Job] = []  # the jobs painting in the running batch
        self.job_timeout = job_timeout
        self._hang_grace = hang_grace
        self._gate = CallGate(max_waiting_calls)
        self._calls_per_step = calls_per_step
        self.store: Any = None
        self._jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        # True while the first thread loads the models (downloads included).
        self._loading = False
        # Bumped when a stuck thread is abandoned; a thread whose number is stale stops.
        self._generation = 0
        self.threads_replaced = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._current: _Job | None = None
        self._next_id = 0
        self._abandoned = AbandonedThreads(max_stuck_threads)
        self._close_timeout = close_timeout
        self._start_timeout = start_timeout
        # Why the worker gave up (set once, on the event loop), and the event that tells the bot.
        self.failure: str | None = None
        self._failed = asyncio.Event()

    # ---- asyncio side -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the device thread and load the models there; raises what loading raised."""
        if self._thread is not None:
            raise RuntimeError("the worker is already started")
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._loading = True
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready, self._generation), name="gpu-worker", daemon=True
        )
        self._thread.start()
        try:
            await asyncio.wait_for(asyncio.shield(ready), self._start_timeout)
        except TimeoutError:
            await self.close()
            assert self._start_timeout is not None
            raise GenerationError(
                f"loading the models took longer than {self._start_timeout:g} s (a download "
                f"or a device that hangs?); check the network and the GPU, then start again"
            ) from None
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Cancel the running job and stop the thread (waits for it off the event loop)."""
        self._stopping.set()
        current = self._current
        if current is not None:
            current.handle.cancel()
        for member in list(self._batch_jobs):
            member.handle.cancel()
        self._wake.set()
        if self._thread is not None and self._loading:
            # A download or a load cannot be interrupted, and a stop must not wait for one
            # (a first download can take many minutes): the thread is a daemon, it ends with
            # the process, and a half-downloaded file is never used (weights.py).
            log.info("stopping while the models load; not waiting for the load to finish")
        elif self._thread is not None and self.failure is not None:
            log.info("stopping a worker that gave up; not waiting for its stuck thread")
        elif self._thread is not None:
            # Bounded: a thread stuck inside a step never returns, and a stop must not hang.
            thread = self._thread
            await asyncio.to_thread(thread.join, self._close_timeout)
            if thread.is_alive():
                log.error(
                    "the device thread did not stop within %g s (stuck inside a step?); "
                    "leaving it: it ends with the process",
                    self._close_timeout,
                )
        self._fail_pending(GenerationError("the worker was shut down; the job was not finished"))

    def submit(
        self,
        request: GenerationRequest,
        on_progress: Callable[[ProgressFrame], None] | None = None,
        *,
        job_id: object = None,
    ) -> JobHandle:
        """Queue a job. ``on_progress`` is called on the event loop with each ProgressFrame."""
        loop = self._require_started()
        if job_id is None:
            self._next_id += 1
            job_id = self._next_id
        handle = JobHandle(job_id, loop.create_future())
        if self.failure is not None:
            handle._future.set_exception(WorkerFailed(self.failure))
            return handle
        self._jobs.put(_Job(handle, request, on_progress))
        self._wake.set()
        return handle

    def submit_group(self, members: Sequence[GroupMember]) -> list[JobHandle]:
        """Queue jobs that paint together (one /imagine with count > 1): consecutive in the
        queue and admitted into one batch step together (in chunks of the batch size when
        there are more). Each has its own handle, progress, cancel and outcome."""
        loop = self._require_started()
        group, handles, jobs = object(), [], []
        for member in members:
            job_id = member.job_id
            if job_id is None:
                self._next_id += 1
                job_id = self._next_id
            handle = JobHandle(job_id, loop.create_future())
            handles.append(handle)
            if self.failure is not None:
                handle._future.set_exception(WorkerFailed(self.failure))
                continue
            jobs.append(_Job(handle, member.request, member.on_progress, group=group))
        for job in jobs:
            job.group_size = len(jobs)
            self._jobs.put(job)
        self._wake.set()
        return handles

    def call(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Run ``fn(store, *args)`` on the device thread, between steps of a running job.

        The call is queued at once (not when the returned future is first awaited), so calls
        run in the order they were made. With ``max_waiting_calls`` already waiting, the future
        fails at once with WorkerBusy.
        """
        loop = self._require_started()
        future: asyncio.Future[T] = loop.create_future()
        if self.failure is not None:
            future.set_exception(WorkerFailed(self.failure))
            return future
        try:
            self._gate.enter()
        except GenerationError as busy:
            future.set_exception(busy)
            return future
        future.add_done_callback(self._gate.leave)
        self._calls.put(_Call(fn, args, future))
        self._wake.set()
        return future

    async def embed_texts(self, texts: list[str]) -> list[list[float]]:
        """L2-normalised CLIP text embeddings from the first perceptor model."""
        from generation.engine import embed_texts

        return await self.call(embed_texts, list(texts))

    async def clip_score(self, png: bytes, prompt: str) -> float:
        return await self.call(_clip_score_of_png, png, prompt)

    async def rank_captions(self, image: bytes, captions: list[str]) -> list[tuple[str, float]]:
        return await self.call(_rank_png, image, list(captions))

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._batch_jobs)

    @property
    def max_waiting_calls(self) -> int:
        """Short calls that may wait at once; one more fails with WorkerBusy."""
        return self._gate.limit

    @property
    def capacity(self) -> int:
        """Jobs this worker runs at once (its batch size)."""
        return self.batch_size

    def status(self) -> WorkersStatus:
        up = int(self._thread is not None and self.store is not None and self.failure is None)
        return WorkersStatus(
            kind="local", total=1, up=up, busy=int(self.busy), stuck=len(self._abandoned.alive())
        )

    async def wait_failed(self) -> str:
        """Returns (why) once the worker has given up; a bot stops then, so that its
        supervisor starts a fresh process."""
        await self._failed.wait()
        assert self.failure is not None
        return self.failure

    def generator_names(self) -> tuple[str, ...]:
        from generation.generators import generator_names

        return generator_names()

    def describe(self) -> dict[str, str]:
        """Plain facts for /info: device, models, generators, preset."""
        store = self.store
        facts = {"generators": ", ".join(self.generator_names())}
        if store is None:
            return facts | {"device": "not started"}
        facts["device"] = _device_name(store.device)
        facts["perceptor"] = store.describe()
        facts["preset"] = "tiny (random weights: pictures are noise)" if store.is_tiny else "real"
        stuck = self._abandoned.describe()
        if stuck is not None:
            facts["stuck"] = stuck
        if self.failure is not None:
            facts["state"] = f"cannot go on: {self.failure}"
        return facts

    def _require_started(self) -> asyncio.AbstractEventLoop:
        if self.failure is not None and self._loop is not None:
            return self._loop  # given up: submit and call answer WorkerFailed
        if self._loop is None or self._thread is None or self._stopping.is_set():
            raise RuntimeError("the worker is not running: await start() first")
        return self._loop

    # ---- bridge helpers (called from the device thread) ---------------------------------------

    def _resolve(
        self, future: asyncio.Future[Any], result: Any = None, error: BaseException | None = None
    ) -> None:
        def settle() -> None:
            if future.done():
                return
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(result)

        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(settle)
        except RuntimeError:
            # The loop is closed: nobody is waiting any more.
            log.debug("event loop closed before a result could be delivered")

    def _emit(self, job: _Job, frame: ProgressFrame) -> None:
        callback = job.on_progress
        if callback is None or self._loop is None:
            return

        def deliver() -> None:
            try:
                callback(frame)
            except Exception:
                log.exception("progress callback for job %s failed", job.handle.job_id)

        try:
            self._loop.call_soon_threadsafe(deliver)
        except RuntimeError:
            log.debug("event loop closed before a progress frame could be delivered")

    def _fail_pending(self, error: GenerationError) -> None:
        while self._waiting:
            job = self._waiting.popleft()
            if not job.handle._future.done():
                job.handle._future.set_exception(error)
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if not job.handle._future.done():
                job.handle._future.set_exception(error)
        while True:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                break
            if not call.future.done():
                call.future.set_exception(error)

    # ---- device thread ------------------------------------------------------------------------

    def _thread_main(self, ready: asyncio.Future[None] | None, generation: int) -> None:
        if ready is not None:  # the first thread loads the models; a replacement reuses them
            try:
                self._configure_threads()
                self.store = self._store_factory(self._models_spec, self._device)
                warm = getattr(self.store, "perceptor", None)
                if callable(warm):
                    warm()  # load CLIP now, so the first job and moderation checks don't wait
            except BaseException as error:  # noqa: BLE001 - handed to the awaiting start()
                self._loading = False
                self._resolve(ready, error=error)
                return
            self._loading = False
            if self._batch_setting is None and _device_type(self.store) == "cuda":
                self.batch_size = CUDA_BATCH_SIZE
            self._resolve(ready, None)
        while not self._stopping.is_set() and generation == self._generation:
            self._run_calls()
            job = self._next_waiting()
            if job is None:
                self._wake.wait()
                self._wake.clear()
                continue
            if batchable(self, job):
                run_batch(self, generation)  # until the batch is empty (worker_batch.py)
                continue
            self._waiting.popleft()
            self._run_job(job)
        if generation == self._generation:
            self._run_calls()

    def _next_waiting(self) -> _Job | None:
        """The first waiting job (submitted jobs move from the queue to ``_waiting`` here)."""
        while True:
            try:
                self._waiting.append(self._jobs.get_nowait())
            except queue.Empty:
                break
        return self._waiting[0] if self._waiting else None

    def _configure_threads(self) -> None:
        """On a CPU, leave one core to the event loop so heartbeats and replies stay prompt."""
        import torch

        if (self._device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu":
            cores = os.cpu_count() or 1
            torch.set_num_threads(max(1, cores - 1))

    def _run_calls(self, limit: int | None = None) -> None:
        """Run waiting short calls: all of them, or at most ``limit`` (between two steps)."""
        done = 0
        while limit is None or done < limit:
            try:
                call = self._calls.get_nowait()
            except queue.Empty:
                return
            done += 1
            try:
                result = call.fn(self.store, *call.args)
            except BaseException as error:  # noqa: BLE001 - delivered to the caller
                self._resolve(call.future, error=error)
            else:
                self._resolve(call.future, result)

    def _run_job(self, job: _Job) -> None:
        handle = job.handle
        if handle.cancel_requested:
            self._resolve(handle._future, error=GenerationCancelled(0))
            return
        self._current = job
        self._call_on_loop(lambda: self._start_timer(job))
        control = RunControl(
            cancel=handle._cancel,
            on_progress=lambda progress: self._on_progress(job, progress),
            between_steps=lambda: self._between_steps(job),
        )
        try:
            result = self._generate_fn()(job.request, self.store, control)
            finished = finished_image(result)
        except GenerationError as error:
            self._resolve(handle._future, error=error)
        except Exception as error:
            # Anything else is a bug or an unexpected fault; the user gets a short message, the
            # log gets the traceback, and the worker goes on with the next job.
            log.exception("job %s failed", handle.job_id)
            wrapped = GenerationError(f"internal error ({type(error).__name__}); the job failed")
            self._resolve(handle._future, error=wrapped)
        else:
            self._resolve(handle._future, finished)
        finally:
            if self._current is job:  # an abandoned thread must not clear its successor's job
                self._current = None

    def _between_steps(self, job: _Job) -> None:
        # A job asked to stop (cancelled, timed out, abandoned) runs no more calls: its thread
        # may be one that was replaced, and the calls belong to the live thread now.
        if not job.handle.cancel_requested:
            self._run_calls(self._calls_per_step)

    # ---- per-job time limit (event loop side) -------------------------------------------------

    def _call_on_loop(self, fn: Callable[[], None]) -> None:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn)
        except RuntimeError:
            log.debug("event loop closed")

    def _start_timer(self, job: _Job) -> None:
        future = job.handle._future
        if self.job_timeout is None or future.done():
            return
        assert self._loop is not None
        job.timer = self._loop.call_later(self.job_timeout, self._time_out, job)
        future.add_done_callback(lambda _f: job.timer.cancel() if job.timer else None)

    def _time_out(self, job: _Job) -> None:
        future = job.handle._future
        if future.done():
            return
        assert self.job_timeout is not None and self._loop is not None
        log.warning(
            "job %s ran past the %g s time limit; stopping it", job.handle.job_id, self.job_timeout
        )
        future.set_exception(JobTimedOut(timeout_message(self.job_timeout)))
        job.handle.cancel()
        self._loop.call_later(self._hang_grace, self._replace_if_stuck, job)

    def _replace_if_stuck(self, job: _Job) -> None:
        """The timed-out job ignored its cancel for ``hang_grace`` seconds: abandon its thread
        and let a fresh one (same models) take the next job."""
        if (self._current is not job and job not in self._batch_jobs) or self._stopping.is_set():
            return
        stuck = self._thread
        assert stuck is not None
        if self._abandoned.would_exceed():
            self._give_up(
                f"job {job.handle.job_id} is stuck inside a step and "
                f"{len(self._abandoned.alive())} threads of earlier hung jobs still hold the "
                f"device ({self._abandoned.limit} allowed); the bot must be restarted"
            )
            return
        log.error(
            "job %s is stuck inside a step; abandoning its thread and starting a new one",
            job.handle.job_id,
        )
        self._generation += 1
        self._current = None
        lose_stuck_batch(self, job)
        self.threads_replaced += 1
        abandon = getattr(self.store, "abandon_thread", None)
        if callable(abandon):
            abandon(stuck)  # its loads in progress never end: nobody waits for them
        self._thread = threading.Thread(
            target=self._replacement_main,
            args=(self._generation, stuck, job.handle.job_id),
            name=f"gpu-worker-{self._generation}",
            daemon=True,
        )
        self._thread.start()
        self._wake.set()

    def _replacement_main(self, generation: int, stuck: threading.Thread, job_id: object) -> None:
        # On the new device thread: what the device holds is read here, off the event loop.
        self._abandoned.add(stuck, job_id, _device_memory(self.store))
        self._thread_main(None, generation)

    def _give_up(self, reason: str) -> None:
        """On the event loop: stop for good; waiting and new work fail with WorkerFailed."""
        log.error("the worker cannot go on: %s", reason)
        self.failure = reason
        self._stopping.set()
        self._wake.set()
        self._fail_pending(WorkerFailed(reason))
        self._failed.set()

    def _on_progress(self, job: _Job, progress: Progress) -> None:
        frame = ProgressFrame(
            job_id=job.handle.job_id,
            step=progress.step,
            total=progress.total,
            loss=progress.loss,
            elapsed=progress.elapsed,
            eta=progress.eta,
            png=_preview_png(progress.image),
        )
        self._emit(job, frame)

    def _generate_fn(self) -> Callable[..., Any]:
        if self._generate is None:
            from generation.engine import generate

            self._generate = generate
        return self._generate


def _device_type(store: Any) -> str:
    device = getattr(store, "device", "cpu")
    return str(getattr(device, "type", device))


def _device_name(device: Any) -> str:
    import torch

    if getattr(device, "type", None) == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def _device_memory(store: Any) -> str:
    """ "3.2 GiB in use" on a CUDA device (all threads together), "" elsewhere."""
    device = getattr(store, "device", None)
    if getattr(device, "type", None) != "cuda":
        return ""
    import torch

    return f"{torch.cuda.memory_allocated(device) / 2**30:.1f} GiB in use"


def _decode_png(data: bytes) -> Any:
    """Decode image bytes the bot has already size- and type-checked (PIL's own
    decompression-bomb limit still applies)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        image.load()
        return image.convert("RGB")


def _clip_score_of_png(store: Any, png: bytes, prompt: str) -> float:
    from generation.judge import clip_score

    return clip_score(store, _decode_png(png), prompt)


def _rank_png(store: Any, image: bytes, captions: list[str]) -> list[tuple[str, float]]:
    from generation.judge import rank_captions

    return rank_captions(store, _decode_png(image), captions)
