"""Pure rendering: a job's state -> what its Discord message shows.

Nothing here talks to Discord or the database; every function takes plain values (a
``db.Job``, a progress frame's numbers) and returns a ``Rendered``. ``bot.replies`` turns a
``Rendered`` into discord.py objects, so these functions are unit-tested without a client.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Protocol

from discord.utils import escape_markdown, escape_mentions

from bot.moderation.normalize import shown_text
from db import Job

# Embed colours: blurple while waiting, amber while painting, green done, red failed, grey off.
COLOR_QUEUED = 0x5865F2
COLOR_RUNNING = 0xF0B232
COLOR_DONE = 0x23A55A
COLOR_FAILED = 0xDA373C
COLOR_CANCELLED = 0x80848E

# Discord limits (characters): embed title 256, description 4096, field value 1024, content 2000.
TITLE_LIMIT = 256
DESCRIPTION_LIMIT = 1000  # well below 4096: a prompt longer than this is not worth a wall of text
CONTENT_LIMIT = 2000

# Which buttons a message carries.
BUTTONS_NONE = "none"
BUTTONS_CANCEL = "cancel"  # queued or running: Cancel
BUTTONS_DONE = "done"  # finished: Re-roll, Variation
BUTTONS_GROUP = "group"  # several pictures finished: Re-roll N / Variation N for each


@dataclass(frozen=True)
class EmbedSpec:
    title: str | None = None
    description: str | None = None
    fields: tuple[tuple[str, str, bool], ...] = ()  # (name, value, inline)
    image: str | None = None  # filename of an attached file shown as the embed's image
    color: int = COLOR_QUEUED
    footer: str | None = None


@dataclass(frozen=True)
class FileSpec:
    """A further picture attached to a message (after ``Rendered.png``)."""

    filename: str
    png: bytes = field(repr=False)
    spoiler: bool = False


@dataclass(frozen=True)
class Rendered:
    """One state of a job's message. ``png`` (if any) is attached as ``filename`` and replaces
    every earlier attachment; ``png=None`` removes attachments."""

    content: str
    embed: EmbedSpec | None = None
    png: bytes | None = field(default=None, repr=False)
    filename: str | None = None
    spoiler: bool = False
    buttons: str = BUTTONS_NONE
    job_id: int | None = None
    # The job waits in the queue (not painting yet): queue-position edits may replace this.
    waiting: bool = False
    # /imagine count:N: the pictures attached after ``png`` (a grid), and for BUTTONS_GROUP
    # the (number shown on the buttons, job id) of each picture that has buttons.
    files: tuple[FileSpec, ...] = ()
    members: tuple[tuple[int, int], ...] = ()


class FrameLike(Protocol):
    """What rendering needs of a progress frame (generation.worker.ProgressFrame fits)."""

    step: int
    total: int
    eta: float
    png: bytes


class FinishedLike(Protocol):
    """What rendering needs of a finished image (generation.worker.FinishedImage fits)."""

    png: bytes
    width: int
    height: int
    seed: int
    steps_done: int
    elapsed: float
    clip_score: float | None


def format_duration(seconds: float | None) -> str:
    """12.34 -> "12.3 s"; 125 -> "2 min 5 s"; 3720 -> "1 h 2 min"; unknown -> "unknown"."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "unknown"
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{round(seconds)} s"
    whole = round(seconds)
    if whole < 3600:
        minutes, secs = divmod(whole, 60)
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    hours, rest = divmod(whole, 3600)
    minutes = rest // 60
    return f"{hours} h {minutes} min" if minutes else f"{hours} h"


def shorten(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, marking the cut with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def safe_prompt(prompt: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """The prompt as shown in a message: bidi controls and invisible format characters removed
    (so it reads as it was matched), markdown and mentions defused, length capped."""
    return shorten(escape_mentions(escape_markdown(shown_text(prompt).strip())), limit)


def plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def ordinal_place(position: int | None) -> str:
    if position is None:
        return "next"
    if position == 1:
        return "next in line"
    return f"#{position} in line"


def requester_name(job: Job) -> str:
    """The requester's display name as it was when they asked (kept in the job's extra
    parameters), or their id for jobs stored before names were kept."""
    name = job.extra.get("requester")
    if isinstance(name, str) and shown_text(name).strip():
        return shorten(shown_text(name).strip(), 80)
    return f"user {job.user_id}"


def _kind_label(job: Job) -> str:
    return {"reroll": "Re-roll", "variation": "Variation"}.get(job.kind, "Picture")


def _title(job: Job) -> str:
    return shorten(f"{_kind_label(job)} #{job.id}", TITLE_LIMIT)


def _parameters(job: Job) -> tuple[tuple[str, str, bool], ...]:
    return (
        ("Seed", str(job.seed), True),
        ("Steps", str(job.steps), True),
        ("Generator", job.generator, True),
        ("Size", f"{job.width}×{job.height}", True),
    )


def queued(job: Job, position: int | None, eta: float | None = None) -> Rendered:
    """The acknowledgement: the job is saved and waiting; where it stands in the queue."""
    wait = f" (about {format_duration(eta)})" if eta is not None and math.isfinite(eta) else ""
    content = f"Queued: {ordinal_place(position)}{wait}."
    embed = EmbedSpec(
        title=_title(job),
        description=safe_prompt(job.prompt),
        fields=_parameters(job),
        color=COLOR_QUEUED,
    )
    return Rendered(
        content=content, embed=embed, buttons=BUTTONS_CANCEL, job_id=job.id, waiting=True
    )


def restarted(job: Job, position: int | None) -> Rendered:
    """After a restart: the job survived and waits again."""
    content = (
        f"The bot restarted; your picture is back in the queue ({ordinal_place(position)}). "
        "It starts over from step 0."
    )
    embed = EmbedSpec(
        title=_title(job),
        description=safe_prompt(job.prompt),
        fields=_parameters(job),
        color=COLOR_QUEUED,
    )
    return Rendered(
        content=content, embed=embed, buttons=BUTTONS_CANCEL, job_id=job.id, waiting=True
    )


def progress_filename(job: Job) -> str:
    return f"progress-{job.id}.png"


def result_filename(job: Job) -> str:
    return f"imagine-{job.id}-{job.seed}.png"


def running(job: Job, frame: FrameLike | None = None) -> Rendered:
    """While painting: the newest preview, the step count and an ETA."""
    if frame is None:
        content = "Painting: starting…"
        embed = EmbedSpec(
            title=_title(job),
            description=safe_prompt(job.prompt),
            fields=_parameters(job),
            color=COLOR_RUNNING,
        )
        return Rendered(content=content, embed=embed, buttons=BUTTONS_CANCEL, job_id=job.id)
    percent = 100 * frame.step / frame.total if frame.total else 0.0
    content = (
        f"Painting: step {frame.step}/{frame.total} ({percent:.0f}%), "
        f"about {format_duration(frame.eta)} left."
    )
    filename = progress_filename(job)
    embed = EmbedSpec(
        title=_title(job),
        description=safe_prompt(job.prompt),
        fields=_parameters(job),
        image=filename,
        color=COLOR_RUNNING,
    )
    return Rendered(
        content=content,
        embed=embed,
        png=frame.png,
        filename=filename,
        buttons=BUTTONS_CANCEL,
        job_id=job.id,
    )


def done(job: Job, finished: FinishedLike, *, spoiler: bool = False) -> Rendered:
    """The final picture with everything needed to make it again, and Re-roll / Variation."""
    fields = [
        ("Seed", str(finished.seed), True),
        ("Steps", str(finished.steps_done), True),
        ("Generator", job.generator, True),
        ("Size", f"{finished.width}×{finished.height}", True),
        ("Time", format_duration(finished.elapsed), True),
    ]
    if finished.clip_score is not None and math.isfinite(finished.clip_score):
        fields.append(("CLIP score", f"{finished.clip_score:.3f}", True))
    filename = result_filename(job)
    embed = EmbedSpec(
        title=_title(job),
        description=safe_prompt(job.prompt),
        fields=tuple(fields),
        # A spoilered image cannot be an embed image (embeds show it unblurred).
        image=None if spoiler else filename,
        color=COLOR_DONE,
        footer=f"Requested by {requester_name(job)}",
    )
    content = f"<@{job.user_id}> your picture is ready."
    return Rendered(
        content=content,
        embed=embed,
        png=finished.png,
        filename=filename,
        spoiler=spoiler,
        buttons=BUTTONS_DONE,
        job_id=job.id,
    )


def failed(job: Job, message: str) -> Rendered:
    """The job could not be finished; ``message`` says why (written for the user)."""
    content = shorten(
        f"<@{job.user_id}> the picture could not be made: {message.strip() or 'unknown error'}",
        CONTENT_LIMIT,
    )
    embed = EmbedSpec(
        title=_title(job),
        description=safe_prompt(job.prompt),
        fields=_parameters(job),
        color=COLOR_FAILED,
    )
    return Rendered(content=content, embed=embed, buttons=BUTTONS_NONE, job_id=job.id)


def cancelled(job: Job, by: int | None) -> Rendered:
    who = "its requester" if by is None or by == job.user_id else f"<@{by}>"
    embed = EmbedSpec(
        title=_title(job),
        description=safe_prompt(job.prompt),
        fields=_parameters(job),
        color=COLOR_CANCELLED,
    )
    return Rendered(
        content=f"Cancelled by {who}.", embed=embed, buttons=BUTTONS_NONE, job_id=job.id
    )


def withheld(job: Job, *, unchecked: bool = False) -> Rendered:
    """The finished image matched a blocked concept and the guild withholds such images, or
    (``unchecked``) the guild's image check is on but could not run, so it was not shown."""
    embed = EmbedSpec(
        title=_title(job),
        description=safe_prompt(job.prompt),
        fields=_parameters(job),
        color=COLOR_CANCELLED,
    )
    if unchecked:
        content = (
            f"<@{job.user_id}> the picture was withheld: this server checks pictures before "
            "showing them, and the check could not run. Try again in a while."
        )
    else:
        content = f"<@{job.user_id}> the picture was withheld by this server's image check."
    return Rendered(content=content, embed=embed, buttons=BUTTONS_NONE, job_id=job.id)


EXPIRED_NOTE = (
    "This picture has expired: the bot keeps pictures for a limited time and its file was deleted."
)


def expired(job: Job) -> Rendered:
    """A finished picture whose file is gone (the retention policy deleted it)."""
    embed = EmbedSpec(
        title=_title(job),
        description=safe_prompt(job.prompt),
        fields=_parameters(job),
        color=COLOR_CANCELLED,
    )
    return Rendered(
        content=f"<@{job.user_id}> {EXPIRED_NOTE}", embed=embed, buttons=BUTTONS_NONE, job_id=job.id
    )


def channel_fallback(rendered: Rendered, user_id: int) -> Rendered:
    """A reply continued in a channel message (its interaction token died): make sure it
    names the requester, who would otherwise not know which picture this is."""
    mention = f"<@{user_id}>"
    if rendered.content.startswith(mention):
        return rendered
    content = shorten(f"{mention} {rendered.content}", CONTENT_LIMIT)
    return dataclasses.replace(rendered, content=content)


def imagine_command(job: Job) -> str:
    """The /imagine command that paints ``job`` again: every option it was made with."""
    prompt = shown_text(job.prompt).replace("`", "'").replace("\n", " ")
    parts = [
        f"/imagine prompt:{prompt}",
        f"seed:{job.seed}",
        f"steps:{job.steps}",
        f"size:{job.width}x{job.height}",
        f"generator:{job.generator}",
    ]
    strength = job.extra.get("strength")
    if strength is not None:
        parts.append(f"strength:{strength}")
    return " ".join(parts)


def history_line(job: Job, clip_score: float | None = None) -> str:
    """One /history entry: what the picture is, then the command that makes it again."""
    score = f", score {clip_score:.3f}" if clip_score is not None else ""
    kind = {"reroll": ", a re-roll", "variation": ", a variation"}.get(job.kind, "")
    images = []
    if job.init_image is not None:
        images.append("init_image" if job.kind != "variation" else "init_image (its parent)")
    if job.image_prompts:
        images.append("image_prompt")
    attach = f"\nAttach the same {' and '.join(images)} too." if images else ""
    command = shorten(imagine_command(job), CONTENT_LIMIT - 200)
    return (
        f"**#{job.id}** {job.width}×{job.height}, {job.generator}, {job.steps} steps{kind}"
        f"{score}\n`{command}`{attach}"
    )
