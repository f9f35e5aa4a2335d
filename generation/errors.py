"""The exceptions the engine raises.

Every error a caller can report carries a message written for the person who asked for the
image: what went wrong and what to do about it. The bot shows ``str(error)`` to its user, so
messages never contain file contents, tokens or stack traces.
"""

from __future__ import annotations


class GenerationError(Exception):
    """Base class: a generation could not be done; ``str(error)`` is fit to show a user."""


class BadRequest(GenerationError, ValueError):
    """The request itself is wrong (empty prompt, bad weight, size, steps, ...)."""


class GenerationCancelled(GenerationError):
    """The run was cancelled cooperatively; raised at the start of the next step."""

    def __init__(self, step: int = 0) -> None:
        super().__init__(f"cancelled at step {step}")
        self.step = step


class OutOfMemory(GenerationError):
    """The device ran out of memory. The worker survives it and goes on with the next job."""


class WeightsNotFound(GenerationError):
    """A model's weights are missing; the message says where they were looked for and how
    to get them."""


class CheckpointError(GenerationError):
    """A checkpoint exists but cannot be used: corrupt, truncated, or of the wrong shape."""


class ModelLoadStuck(GenerationError):
    """A model this job needs is being loaded by another thread that does not finish (a stuck
    job's abandoned thread, a download that hangs); the job gives up instead of waiting."""
