"""The worker's continuous batching: up to ``batch_size`` step-form jobs paint in one step.

Runs on the worker's device thread (``GpuWorker._thread_main`` hands over when the first waiting
job can batch). Between two steps, in this order:

1. short calls (moderation embeddings, /rank) run, at most ``calls_per_step`` of them;
2. members that were cancelled (by the user, the time limit, a shutdown) leave;
3. waiting jobs join, in submission order, while there is room: the first waiting job joins only
   if it has the batch's key (same generator, model and size); if not, nobody behind it joins
   either (the fair order the bot chose holds), and it starts the next batch once this one has
   drained. A group (``submit_group``) joins whole, or in chunks of the batch size;
4. ONE batched step (``generation.steps.StepBatch``); a member whose step fails alone leaves with
   its own error, the others have taken their step;
5. finished members leave with their picture.

Nothing here imports torch at import time: the worker module must stay light for the bot.
"""

from __future__ import annotations

import logging
from typing import Any

from generation.errors import GenerationCancelled, GenerationError
from generation.request import RunControl
from generation.workers import FinishedImage, WorkerLost

# The worker (generation.worker.GpuWorker) and its queued jobs (_Job) are typed Any here: this
# module must not import the worker, which imports it (the layering test allows no circle).
GpuWorker = Any
_Job = Any

log = logging.getLogger(__name__)


def batchable(worker: GpuWorker, job: _Job) -> bool:
    """Whether ``job`` paints in a batch here: batching is on, the generator has a step form,
    and its batch key can be worked out (a missing model says so when the job runs alone)."""
    if worker.batch_size < 2 or not worker._batches_allowed:
        return False
    return _key(worker, job) is not None


def _key(worker: GpuWorker, job: _Job) -> Any:
    from generation import engine

    module = engine.step_form(job.request)
    if module is None:
        return None
    try:
        return (module.__name__, module.batch_key(job.request, worker.store))
    except Exception:  # noqa: BLE001 - it runs alone, where the error reaches its user
        return None


def run_batch(worker: GpuWorker, generation: int) -> None:
    """Device thread: start a batch with the first waiting job(s) and step it until empty."""
    from generation import engine
    from generation.steps import StepBatch

    first = worker._waiting[0]
    key = _key(worker, first)
    module = engine.step_form(first.request)
    assert module is not None and key is not None
    batch = StepBatch(module, worker.store, key)
    jobs: dict[int, _Job] = {}  # id(state) -> its job
    admitted: dict[int, int] = {}  # id(group) -> members admitted so far
    store = worker.store

    def leave(state: Any, outcome: FinishedImage | BaseException) -> None:
        batch.remove(state)
        job = jobs.pop(id(state))
        worker._batch_jobs = [j for j in worker._batch_jobs if j is not job]
        if isinstance(outcome, BaseException):
            worker._resolve(job.handle._future, error=outcome)
        else:
            worker._resolve(job.handle._future, outcome)

    try:
        while not worker._stopping.is_set() and generation == worker._generation:
            # 1. Short calls between two steps.
            worker._run_calls(worker._calls_per_step)
            # 2. Cancelled members leave.
            for state in list(batch.members):
                if jobs[id(state)].handle.cancel_requested:
                    leave(state, GenerationCancelled(state.steps_done))
            # 3. Waiting jobs join while there is room.
            for job in _joining(worker, key, len(batch.members), admitted):
                state = _start(worker, job)
                if state is not None:
                    batch.add(state)
                    jobs[id(state)] = job
                    worker._batch_jobs.append(job)
            if not batch.members:
                return
            # 4. One step for every member; a member that fails alone leaves.
            for state, error in batch.step():
                leave(state, _failure(engine, jobs[id(state)], state, error))
            # 5. Finished members leave with their picture.
            for state in batch.finished():
                try:
                    result = finished_image(engine.finish_job(state, store))
                except Exception as error:  # noqa: BLE001 - this job's own failure
                    leave(state, _failure(engine, jobs[id(state)], state, error))
                else:
                    leave(state, result)
    except Exception:
        # A fault of the batch itself, not of one job: its members fail, the worker goes on.
        log.exception("a batch of %d jobs failed", len(batch.members))
        for state in list(batch.members):
            leave(state, GenerationError("internal error in a batch; the job failed"))
    finally:
        if generation == worker._generation:
            # Stopping: what is left was cancelled by close().
            for state in list(batch.members):
                leave(state, GenerationCancelled(state.steps_done))


def _joining(worker: GpuWorker, key: Any, members: int, admitted: dict[int, int]) -> list[_Job]:
    """The waiting jobs that join now (taken off the waiting line), in order."""
    joining: list[_Job] = []
    while True:
        head = worker._next_waiting()
        room = worker.batch_size - members - len(joining)
        if head is None or room <= 0:
            return joining
        if head.handle.cancel_requested:
            worker._waiting.popleft()
            worker._resolve(head.handle._future, error=GenerationCancelled(0))
            continue
        if _key(worker, head) != key:
            return joining  # it waits for the next batch, and so does everyone behind it
        if head.group is None:
            chunk = [head]
        else:
            run = []
            for job in worker._waiting:
                if job.group is not head.group:
                    break
                run.append(job)
            if len(run) + admitted.get(id(head.group), 0) < head.group_size:
                return joining  # the rest of the group is still on its way to the thread
            chunk = run[: worker.batch_size]
            if len(chunk) > room:
                return joining  # a group joins whole: it waits for room
            admitted[id(head.group)] = admitted.get(id(head.group), 0) + len(chunk)
        for job in chunk:
            worker._waiting.popleft()
            joining.append(job)


def _start(worker: GpuWorker, job: _Job) -> Any:
    """The job's step-form state, or None when it could not start (its handle says why)."""
    from generation import engine

    handle = job.handle
    if handle.cancel_requested:
        worker._resolve(handle._future, error=GenerationCancelled(0))
        return None
    worker._call_on_loop(lambda: worker._start_timer(job))
    control = RunControl(
        cancel=handle._cancel, on_progress=lambda progress: worker._on_progress(job, progress)
    )
    try:
        return engine.start_job(job.request, worker.store, control)
    except Exception as error:  # noqa: BLE001 - this job's own failure (bad input, ...)
        worker._resolve(handle._future, error=_failure(engine, job, None, error))
        return None


def _failure(engine: Any, job: _Job, state: Any, error: BaseException) -> GenerationError:
    if isinstance(error, GenerationError):
        return error
    if state is None:
        log.error("job %s failed", job.handle.job_id, exc_info=error)
        return GenerationError(f"internal error ({type(error).__name__}); the job failed")
    converted = engine.step_error(state, error)
    if type(converted) is GenerationError:  # not an expected kind: the log gets the traceback
        log.error("job %s failed", job.handle.job_id, exc_info=error)
    return converted


def lose_stuck_batch(worker: GpuWorker, stuck_job: _Job) -> None:
    """On the event loop, when the thread is abandoned: the other members of its batch are stuck
    with it and did nothing wrong; they go back to the bot's queue (WorkerLost)."""
    for job in worker._batch_jobs:
        if job is not stuck_job and not job.handle._future.done():
            job.handle._future.set_exception(
                WorkerLost("the batch this picture was painting in got stuck")
            )
            job.handle.cancel()
    worker._batch_jobs = []


def finished_image(result: Any) -> FinishedImage:
    """A GenerationResult as the plain values that go back to the bot (the PNG encoded)."""
    from generation.png import encode_png

    return FinishedImage(
        png=encode_png(result.image, result.metadata or {}),
        width=result.image.width,
        height=result.image.height,
        seed=result.request.seed,
        steps_done=result.steps_done,
        elapsed=result.elapsed,
        loss=result.loss,
        clip_score=result.clip_score,
        metadata=dict(result.metadata),
    )
