"""The seam between the bot and whatever paints: one GPU thread in this process (``GpuWorker``)
or a pool of Ray actors, one per GPU (``generation.ray_pool.RayPool``). The bot talks to either
through ``Workers`` and never imports Ray.

Nothing here imports torch or Ray, so the bot can name these types before any model loads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from generation.errors import GenerationError

if TYPE_CHECKING:
    from generation.request import GenerationRequest

RAY_MISSING = "IMAGINE_WORKERS=ray needs Ray, which is not installed: pip install -e '.[ray]'"


class WorkerLost(GenerationError):
    """The worker running the job died (its process was killed, its node was lost) or hung past
    the time limit and was restarted. The job itself did nothing wrong: put it back on the
    queue."""


class WorkerFailed(WorkerLost):
    """The worker gave up for good (threads stuck on the device past its limit): it takes no
    more work until the bot is restarted. The job did nothing wrong: it waits in the queue."""


class JobTimedOut(GenerationError):
    """The job ran past the per-job time limit and was stopped."""


class WorkerBusy(GenerationError):
    """Too many short calls are waiting for the worker; try again in a moment."""


def timeout_message(limit: float) -> str:
    """What the user reads when a job ran past ``limit`` seconds."""
    minutes = limit / 60
    span = f"{minutes:g} minutes" if limit >= 60 else f"{limit:g} seconds"
    return (
        f"the picture took longer than the time limit ({span}) and was stopped; "
        "try fewer steps or a smaller size"
    )


# What comes back from any worker: built on the worker's side, plain values only (they cross
# process boundaries on Ray).


@dataclass(frozen=True)
class ProgressFrame:
    job_id: object
    step: int
    total: int
    loss: float
    elapsed: float
    eta: float
    png: bytes  # small preview PNG, encoded on the worker thread


@dataclass(frozen=True)
class FinishedImage:
    png: bytes  # the full PNG with metadata text chunks
    width: int
    height: int
    seed: int
    steps_done: int
    elapsed: float
    loss: float
    clip_score: float | None
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupMember:
    """One job of a group that paints together (``Workers.submit_group``)."""

    request: GenerationRequest
    on_progress: Callable[[ProgressFrame], None] | None = None
    job_id: object = None


@dataclass(frozen=True)
class WorkersStatus:
    """How many workers there are, how many are up (models loaded, reachable) and how many are
    painting a job right now; for /info and /queue."""

    kind: str  # "local" or "ray"
    total: int
    up: int
    busy: int
    stuck: int = 0  # threads of hung jobs given up but still alive, holding device memory


class Handle(Protocol):
    """One submitted job, seen from the event loop."""

    job_id: object

    def cancel(self) -> None:
        """Ask the job to stop; it raises GenerationCancelled within one step."""
        ...

    def done(self) -> bool: ...

    async def wait(self) -> FinishedImage:
        """The finished image, or the GenerationError that ended the job (GenerationCancelled,
        JobTimedOut, WorkerLost, BadRequest, ...)."""
        ...


class Workers(Protocol):
    """What the bot needs of its painters. ``capacity`` jobs may run at once; the bot submits
    at most that many and keeps the fair order itself."""

    @property
    def capacity(self) -> int: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    def submit(
        self,
        request: GenerationRequest,
        on_progress: Callable[[ProgressFrame], None] | None = None,
        *,
        job_id: object = None,
    ) -> Handle: ...

    def submit_group(self, members: Sequence[GroupMember]) -> list[Handle]:
        """Jobs that paint together (one request for several pictures): queued consecutively
        and admitted into one batch step together (in chunks of the batch size). One Handle
        per member, in order, each like ``submit``'s."""
        ...

    async def embed_texts(self, texts: list[str]) -> list[list[float]]: ...

    async def clip_score(self, png: bytes, prompt: str) -> float: ...

    async def rank_captions(self, image: bytes, captions: list[str]) -> list[tuple[str, float]]: ...

    def generator_names(self) -> tuple[str, ...]: ...

    def describe(self) -> dict[str, str]: ...

    def status(self) -> WorkersStatus: ...


class CallGate:
    """Bounds the short calls waiting for one worker: a call beyond ``limit`` is refused at once
    with WorkerBusy instead of queueing behind a flood (a /rank spam must not starve moderation
    checks or delay painting)."""

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"the short-call limit must be 1 or more, not {limit}")
        self.limit = limit
        self.waiting = 0

    def enter(self) -> None:
        if self.waiting >= self.limit:
            raise WorkerBusy(
                f"the painter has {self.waiting} short requests waiting already; "
                "try again in a moment"
            )
        self.waiting += 1

    def leave(self, _future: asyncio.Future[Any] | None = None) -> None:
        self.waiting -= 1
