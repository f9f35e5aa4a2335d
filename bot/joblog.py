"""One log line per finished job, for operators: which job, whose, how it was made, how long
it took, how it ended. Pure formatting here; the client calls it when the scheduler reports a
finished job."""

from __future__ import annotations

from db import Job


def job_line(job: Job, outcome: str) -> str:
    """``job 12 done: user 345, vqgan, 250 steps, 64x64, 12.3 s`` (plus the error of a failed
    job). The prompt is left out: it is user text, and may be what a moderator blocked."""
    seconds = job.duration
    took = f"{seconds:.1f} s" if seconds is not None else "not run"
    line = (
        f"job {job.id} {outcome}: user {job.user_id}, {job.generator}, {job.steps} steps, "
        f"{job.width}x{job.height}, {took}"
    )
    if outcome == "failed" and job.error:
        line += f" ({job.error})"
    return line
