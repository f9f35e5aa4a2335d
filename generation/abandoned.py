"""Threads a worker gave up on because their job hung inside a step.

A Python thread cannot be killed, so a stuck job's thread is abandoned and a fresh one takes
over. The abandoned thread still holds what it held: the job's tensors on the device, a model
load half done. This ledger keeps them in sight (the log, /info) and tells the worker when one
more would be too many: then the worker refuses new work and says it must be restarted, since
only a new process gets the memory back.

No torch here: the worker passes in what it knows about the device's memory.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class AbandonedThread:
    thread: threading.Thread
    job_id: object
    memory: str  # what the device held when the thread was given up ("3.2 GiB in use"), or ""
    since: float = field(default_factory=time.time)


class AbandonedThreads:
    """The abandoned threads of one worker that are still alive, up to ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"the limit of stuck threads must be 0 or more, not {limit}")
        self.limit = limit
        self._threads: list[AbandonedThread] = []
        self._lock = threading.Lock()

    def would_exceed(self) -> bool:
        """Whether abandoning one more thread would leave more than ``limit`` stuck."""
        return len(self.alive()) + 1 > self.limit

    def add(self, thread: threading.Thread, job_id: object, memory: str = "") -> None:
        with self._lock:
            self._threads.append(AbandonedThread(thread, job_id, memory))
        held = f"; the device had {memory} when it was given up" if memory else ""
        log.error(
            "abandoned the thread %s of job %s, stuck inside a step: it keeps what it holds on "
            "the device until it ends%s (%d of %d stuck threads allowed)",
            thread.name,
            job_id,
            held,
            len(self.alive()),
            self.limit,
        )

    def alive(self) -> list[AbandonedThread]:
        """The abandoned threads still running; one that ended after all is dropped (and its
        memory is free again)."""
        with self._lock:
            ended = [t for t in self._threads if not t.thread.is_alive()]
            self._threads = [t for t in self._threads if t.thread.is_alive()]
        for gone in ended:
            log.warning(
                "the abandoned thread %s of job %s ended after all; what it held is free again",
                gone.thread.name,
                gone.job_id,
            )
        return list(self._threads)

    def describe(self) -> str | None:
        """One line for /info, or None when no abandoned thread is alive."""
        alive = self.alive()
        if not alive:
            return None
        jobs = ", ".join(
            f"job {t.job_id} since {time.strftime('%H:%M UTC', time.gmtime(t.since))}"
            + (f" ({t.memory} on the device then)" if t.memory else "")
            for t in alive
        )
        return (
            f"{len(alive)} thread{'s' if len(alive) > 1 else ''} of hung jobs, holding their "
            f"device memory until they end: {jobs}; {self.limit} allowed"
        )
