"""Pure rendering of a group's one reply (/imagine count:N): waiting, painting, and the final
message with a grid, the pictures as files, and per-picture buttons.

Like ``bot.render``, nothing here talks to Discord or the database: the functions take the
group's job rows (in ``group_index`` order, the first one the leader whose message it is) and
the pictures' bytes, and return a ``Rendered``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bot import render
from bot.render import (
    BUTTONS_CANCEL,
    BUTTONS_GROUP,
    BUTTONS_NONE,
    COLOR_CANCELLED,
    COLOR_DONE,
    COLOR_FAILED,
    COLOR_QUEUED,
    COLOR_RUNNING,
    CONTENT_LIMIT,
    EmbedSpec,
    FileSpec,
    Rendered,
)
from db import Job

# Image check verdicts (bot.delivery has the same strings).
SHOW = "show"
SPOILER = "spoiler"


def title(leader: Job) -> str:
    last = leader.id + leader.group_size - 1
    return f"{leader.group_size} pictures #{leader.id}–#{last}"


def seeds_text(rows: Sequence[Job]) -> str:
    return ", ".join(str(job.seed) for job in rows)


def _fields(leader: Job, rows: Sequence[Job]) -> tuple[tuple[str, str, bool], ...]:
    # Without the rows at hand (the acknowledgement), the seeds follow from the leader's.
    seeds = seeds_text(rows) or ", ".join(
        str(leader.seed + i) for i in range(max(1, leader.group_size))
    )
    return (
        ("Seeds", seeds, True),
        ("Steps", str(leader.steps), True),
        ("Generator", leader.generator, True),
        ("Size", f"{leader.width}×{leader.height}", True),
    )


def _embed(leader: Job, rows: Sequence[Job], color: int, **changes: object) -> EmbedSpec:
    spec = EmbedSpec(
        title=render.shorten(title(leader), render.TITLE_LIMIT),
        description=render.safe_prompt(leader.prompt),
        fields=_fields(leader, rows),
        color=color,
    )
    return dataclasses.replace(spec, **changes) if changes else spec  # type: ignore[arg-type]


def grid_filename(leader: Job) -> str:
    return f"imagine-grid-{leader.id}.png"


def preview_filename(leader: Job) -> str:
    return f"progress-{leader.id}.png"


def queued(
    leader: Job, position: int | None, eta: float | None = None, rows: Sequence[Job] = ()
) -> Rendered:
    """The acknowledgement of N pictures: saved, waiting, their place in the queue."""
    wait = (
        f" (about {render.format_duration(eta)})" if eta is not None and math.isfinite(eta) else ""
    )
    content = f"Queued {leader.group_size} pictures: {render.ordinal_place(position)}{wait}."
    return Rendered(
        content=content,
        embed=_embed(leader, rows, COLOR_QUEUED),
        buttons=BUTTONS_CANCEL,
        job_id=leader.id,
        waiting=True,
    )


def waiting_again(leader: Job, rows: Sequence[Job], position: int | None, why: str) -> Rendered:
    """After a restart or a lost worker: the unfinished pictures wait again."""
    left = sum(1 for job in rows if job.waiting) or leader.group_size
    content = (
        f"{why}; {render.plural(left, 'picture')} of this request "
        f"{'is' if left == 1 else 'are'} back in the queue ({render.ordinal_place(position)}) "
        "and will start over from step 0."
    )
    return Rendered(
        content=content,
        embed=_embed(leader, rows, COLOR_QUEUED),
        buttons=BUTTONS_CANCEL,
        job_id=leader.id,
        waiting=True,
    )


@dataclass(frozen=True)
class Step:
    """One picture's progress (a frame's numbers)."""

    step: int
    total: int
    eta: float


def member_notes(rows: Sequence[Job], verdicts: Mapping[int, str] | None = None) -> list[str]:
    """One line per picture that will not be shown, saying why."""
    notes = []
    for job in rows:
        number = (job.group_index or 0) + 1
        if job.status == "failed":
            reason = (job.error or "unknown error").strip()
            notes.append(f"Picture {number} could not be made: {reason}")
        elif job.status == "cancelled":
            notes.append(f"Picture {number} was cancelled.")
        elif job.status == "done" and verdicts is not None:
            verdict = verdicts.get(job.id, SHOW)
            if verdict == "withhold":
                notes.append(f"Picture {number} was withheld by this server's image check.")
            elif verdict == "unchecked":
                notes.append(
                    f"Picture {number} was withheld: the image check could not run; it is "
                    "checked again later."
                )
            elif verdict == "expired":
                notes.append(f"Picture {number} has expired (its file was deleted).")
    return notes


def running(
    leader: Job,
    rows: Sequence[Job],
    steps: Mapping[int, Step],
    preview: bytes | None,
) -> Rendered:
    """While painting: one line of progress for the group (the slowest picture's), the
    pictures that failed so far, and a grid of the latest frames."""
    painting = [job for job in rows if job.status == "running"]
    done = sum(1 for job in rows if job.status == "done")
    known = [steps[job.id] for job in painting if job.id in steps]
    if known:
        slowest = min(known, key=lambda s: s.step / s.total if s.total else 0.0)
        percent = 100 * slowest.step / slowest.total if slowest.total else 0.0
        eta = max(s.eta for s in known)
        content = (
            f"Painting {render.plural(len(painting), 'picture')}: step "
            f"{slowest.step}/{slowest.total} ({percent:.0f}%), about "
            f"{render.format_duration(eta)} left."
        )
    else:
        content = f"Painting {render.plural(max(1, len(painting)), 'picture')}: starting…"
    if done:
        content += f" {done} of {leader.group_size} done."
    notes = member_notes(rows)
    if notes:
        content = render.shorten(content + "\n" + "\n".join(notes), CONTENT_LIMIT)
    filename = preview_filename(leader)
    embed = _embed(leader, rows, COLOR_RUNNING, image=filename if preview else None)
    return Rendered(
        content=content,
        embed=embed,
        png=preview,
        filename=filename if preview else None,
        buttons=BUTTONS_CANCEL,
        job_id=leader.id,
    )


def final(
    rows: Sequence[Job],
    pictures: Mapping[int, bytes],
    verdicts: Mapping[int, str],
    grid: bytes | None,
) -> Rendered:
    """The group's last message: the grid of the pictures that may be shown, each of them as a
    file (spoilered ones only as spoilered files), a line for each that is not shown, and
    Re-roll/Variation buttons numbered like the pictures."""
    leader = rows[0]
    shown = [job for job in rows if job.id in pictures]
    notes = member_notes(rows, verdicts)
    if all(job.status == "cancelled" for job in rows):
        by = leader.cancelled_by
        who = "its requester" if by is None or by == leader.user_id else f"<@{by}>"
        return Rendered(
            content=f"Cancelled by {who}.",
            embed=_embed(leader, rows, COLOR_CANCELLED),
            buttons=BUTTONS_NONE,
            job_id=leader.id,
        )
    if shown:
        head = (
            f"<@{leader.user_id}> your {len(shown)} pictures are ready."
            if len(shown) == len(rows)
            else f"<@{leader.user_id}> {len(shown)} of {len(rows)} pictures are ready."
        )
    else:
        head = f"<@{leader.user_id}> none of the {len(rows)} pictures can be shown."
    content = render.shorten("\n".join([head, *notes]), CONTENT_LIMIT)
    files = tuple(
        FileSpec(
            filename=render.result_filename(job),
            png=pictures[job.id],
            spoiler=verdicts.get(job.id, SHOW) == SPOILER,
        )
        for job in shown
    )
    finished = [job for job in rows if job.duration is not None and job.status == "done"]
    fields = list(_fields(leader, rows))
    if finished:
        fields.append(
            ("Time", render.format_duration(max(j.duration or 0 for j in finished)), True)
        )
    scores = [
        j.clip_score for j in shown if j.clip_score is not None and math.isfinite(j.clip_score)
    ]
    if scores:
        fields.append(("CLIP scores", ", ".join(f"{s:.3f}" for s in scores), True))
    grid_name = grid_filename(leader)
    embed = EmbedSpec(
        title=render.shorten(title(leader), render.TITLE_LIMIT),
        description=render.safe_prompt(leader.prompt),
        fields=tuple(fields),
        image=grid_name if grid is not None else None,
        color=COLOR_DONE if shown else COLOR_FAILED,
        footer=f"Requested by {render.requester_name(leader)}",
    )
    return Rendered(
        content=content,
        embed=embed,
        png=grid,
        filename=grid_name if grid is not None else None,
        files=files,
        buttons=BUTTONS_GROUP if shown else BUTTONS_NONE,
        job_id=leader.id,
        members=tuple(((job.group_index or 0) + 1, job.id) for job in shown),
    )
