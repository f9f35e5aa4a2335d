"""Optional DM delivery: the final picture sent to the requester's DMs as well.

Asked for with ``/imagine dm:True`` or, for every picture, with ``/dms on``; the request is kept
in the job's extra parameters (``"dm": true``), so it survives restarts with the job. The DM is
sent just before the channel's final edit, and its outcome is stored (``jobs.dm_delivery``), so
a redelivery or a restart neither repeats it nor forgets it. The picture always stays in the
channel too: a DM is a copy, and when the user's DMs are closed to the bot (Discord's 50007)
the channel reply says so instead.
"""

from __future__ import annotations

import dataclasses
import io
import logging

import aiosqlite
import discord

import db
from bot import render
from bot.render import Rendered
from db import Job

log = logging.getLogger(__name__)

CANNOT_SEND_TO_USER = 50007  # Discord: "Cannot send messages to this user"

NOTES = {
    "sent": "Also sent to your DMs.",
    "closed": (
        "Your DMs are closed to this bot, so the picture is only here. To get pictures in your "
        "DMs, allow direct messages from this server's members (Privacy Settings)."
    ),
    "failed": "It could not be sent to your DMs this time; the picture is here.",
}


def dm_text(job: Job) -> str:
    """The message that goes with the picture in the requester's DMs."""
    return render.shorten(
        f"Your picture #{job.id} from <#{job.channel_id}>: {render.safe_prompt(job.prompt, 300)}",
        render.CONTENT_LIMIT,
    )


def with_note(rendered: Rendered, outcome: str | None) -> Rendered:
    """The channel's final message with a line on where the DM copy went."""
    note = NOTES.get(outcome or "")
    if note is None:
        return rendered
    content = f"{rendered.content}\n{note}" if rendered.content else note
    return dataclasses.replace(rendered, content=render.shorten(content, render.CONTENT_LIMIT))


class DmSender:
    """Sends a finished picture to its requester's DMs once, and records what happened."""

    def __init__(self, conn: aiosqlite.Connection, client: discord.Client) -> None:
        self._conn = conn
        self._client = client

    async def deliver(self, job: Job, rendered: Rendered) -> Rendered:
        """``rendered`` (the channel's final message) with the DM note; sends the DM first if
        the job asked for one and none was tried yet. Withheld pictures are never sent."""
        if not job.wants_dm or rendered.png is None:
            return rendered
        outcome = job.dm_delivery
        if outcome is None:
            outcome = await self._send(job, rendered)
            try:
                await db.set_dm_delivery(self._conn, job.id, outcome)
            except Exception:
                log.exception("could not record the DM of picture #%s", job.id)
        return with_note(rendered, outcome)

    async def _send(self, job: Job, rendered: Rendered) -> str:
        assert rendered.png is not None
        try:
            user = self._client.get_user(job.user_id) or await self._client.fetch_user(job.user_id)
            channel = user.dm_channel or await user.create_dm()
            file = discord.File(
                io.BytesIO(rendered.png),
                filename=rendered.filename or f"imagine-{job.id}.png",
                spoiler=rendered.spoiler,
            )
            await channel.send(content=dm_text(job), file=file)
        except discord.Forbidden as error:
            if error.code == CANNOT_SEND_TO_USER:
                log.info("picture #%s: the requester's DMs are closed to the bot", job.id)
                return "closed"
            log.warning("picture #%s: the DM was refused (%s)", job.id, error)
            return "failed"
        except (discord.HTTPException, OSError) as error:
            log.warning("picture #%s: the DM could not be sent (%s)", job.id, error)
            return "failed"
        return "sent"
