"""Where a job's message lives, and how one edit of it is sent.

A job's reply starts as the interaction's original response, edited through the interaction
webhook (``PATCH /webhooks/<app>/<token>/messages/@original``). Interaction tokens die after 15
minutes, so once the token is near its end (or an edit fails with 50027 Invalid Webhook Token,
401, or the message is gone) the reply continues in the bot's own channel message: posted once
with a mention of the requester, its id kept in the job row, and edited from then on.

discord.py itself waits out 429s (it reads Retry-After from the headers) and retries 5xx a few
times; what still fails comes out of here as ``TransientSendError`` (the reporter retries a
final later) or ``PermanentSendError``.
"""

from __future__ import annotations

import io
import logging
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import aiosqlite
import discord

import db
from bot.progress import PermanentSendError, TransientSendError
from bot.render import EmbedSpec, Rendered, channel_fallback
from bot.ui import job_view

if TYPE_CHECKING:
    from db import Job

log = logging.getLogger(__name__)

# Discord error codes: 10008 Unknown Message, 10015 Unknown Webhook, 50027 Invalid Webhook Token.
UNKNOWN_MESSAGE = 10008
UNKNOWN_WEBHOOK = 10015
INVALID_WEBHOOK_TOKEN = 50027


def to_embed(spec: EmbedSpec | None) -> discord.Embed | None:
    if spec is None:
        return None
    embed = discord.Embed(title=spec.title, description=spec.description, color=spec.color)
    for name, value, inline in spec.fields:
        embed.add_field(name=name, value=value, inline=inline)
    if spec.image:
        embed.set_image(url=f"attachment://{spec.image}")
    if spec.footer:
        embed.set_footer(text=spec.footer)
    return embed


def to_file(rendered: Rendered) -> discord.File | None:
    if rendered.png is None:
        return None
    return discord.File(
        io.BytesIO(rendered.png),
        filename=rendered.filename or "image.png",
        spoiler=rendered.spoiler,
    )


def to_files(rendered: Rendered) -> list[discord.File]:
    """Every picture of the message: ``png`` first (the one the embed shows), then ``files``."""
    first = to_file(rendered)
    extra = [
        discord.File(io.BytesIO(item.png), filename=item.filename, spoiler=item.spoiler)
        for item in rendered.files
    ]
    return ([first] if first is not None else []) + extra


def _view(rendered: Rendered) -> discord.ui.View | None:
    return job_view(rendered.job_id, rendered.buttons, rendered.members)


def edit_kwargs(rendered: Rendered) -> dict[str, Any]:
    """Keyword arguments for an edit: every part is set, so nothing of an earlier state (an old
    preview, a Cancel button) survives."""
    return {
        "content": rendered.content,
        "embed": to_embed(rendered.embed),
        "attachments": to_files(rendered),
        "view": _view(rendered),
    }


def send_kwargs(rendered: Rendered, mention: int | None) -> dict[str, Any]:
    """Keyword arguments for a new channel message."""
    kwargs: dict[str, Any] = {"content": rendered.content}
    embed = to_embed(rendered.embed)
    if embed is not None:
        kwargs["embed"] = embed
    files = to_files(rendered)
    if files:
        kwargs["files"] = files
    view = _view(rendered)
    if view is not None:
        kwargs["view"] = view
    kwargs["allowed_mentions"] = discord.AllowedMentions(
        everyone=False,
        roles=False,
        users=[discord.Object(mention)] if mention is not None else False,
    )
    return kwargs


def token_is_dead(error: discord.HTTPException) -> bool:
    """The interaction reply cannot be edited any more (token expired or message gone)."""
    return error.status == 401 or error.code in (
        INVALID_WEBHOOK_TOKEN,
        UNKNOWN_WEBHOOK,
        UNKNOWN_MESSAGE,
    )


def classify(error: Exception) -> Exception:
    """Map a failed request to the reporter's two kinds of failure."""
    if isinstance(error, discord.DiscordServerError):
        return TransientSendError(f"Discord server error {error.status}")
    if isinstance(error, discord.HTTPException):
        if error.status == 429:
            return TransientSendError("still rate limited after discord.py's retries")
        if error.status >= 500:
            return TransientSendError(f"Discord server error {error.status}")
        return PermanentSendError(f"HTTP {error.status} (code {error.code})")
    if isinstance(error, aiohttp.ClientError | OSError | TimeoutError):
        return TransientSendError(f"connection problem: {type(error).__name__}")
    return error


class JobReplySink:
    """Sends edits of one job's message, switching to a channel message when the interaction
    token can no longer be used."""

    def __init__(
        self, client: discord.Client, conn: aiosqlite.Connection, job: Job, *, margin: float
    ) -> None:
        self._client = client
        self._conn = conn
        self.job_id = job.id
        self.user_id = job.user_id
        self.channel_id = job.channel_id
        self.channel_message_id = job.channel_message_id
        self._application_id = job.application_id
        self._token = job.interaction_token
        self._expires_at = job.token_expires_at
        self._reply_message_id = job.reply_message_id
        self._margin = margin
        self._loaded = False
        self.token_dead = False

    async def _refresh(self) -> None:
        """Read the message details once, at the first edit: the job may have been taken by
        the scheduler before its acknowledgement stored them."""
        self._loaded = True
        job = await db.get_job(self._conn, self.job_id)
        if job is None:
            return
        self._application_id = job.application_id
        self._token = job.interaction_token
        self._expires_at = job.token_expires_at
        self._reply_message_id = job.reply_message_id
        self.channel_id = job.channel_id
        self.channel_message_id = job.channel_message_id

    def token_usable(self) -> bool:
        if self.token_dead or self._token is None or self._application_id is None:
            return False
        if self._expires_at is None:
            return True
        return time.time() < self._expires_at - self._margin

    async def send(self, rendered: Rendered, *, final: bool) -> None:
        if not self._loaded:
            await self._refresh()
        try:
            if self.channel_message_id is None and self.token_usable():
                try:
                    await self._edit_original(rendered)
                    return
                except discord.HTTPException as error:
                    if not token_is_dead(error):
                        raise
                    log.info(
                        "job %s: interaction reply no longer editable (%s, code %s); "
                        "continuing in a channel message",
                        self.job_id,
                        error.status,
                        error.code,
                    )
                    self.token_dead = True
            await self._via_channel(rendered)
        except (discord.HTTPException, aiohttp.ClientError, OSError, TimeoutError) as error:
            raise classify(error) from error

    async def _edit_original(self, rendered: Rendered) -> None:
        assert self._application_id is not None and self._token is not None
        webhook = discord.Webhook.partial(self._application_id, self._token, client=self._client)
        # The reply is the interaction's original response ("@original"), or a followup whose
        # id the job row keeps (a command with attachments answers ephemerally first).
        target: Any = self._reply_message_id or "@original"
        await webhook.edit_message(target, **edit_kwargs(rendered))

    async def _via_channel(self, rendered: Rendered) -> None:
        if self.channel_id is None:
            raise PermanentSendError("the interaction token expired and the job has no channel")
        channel = self._client.get_partial_messageable(self.channel_id)
        if self.channel_message_id is not None:
            try:
                await channel.get_partial_message(self.channel_message_id).edit(
                    **edit_kwargs(rendered)
                )
                return
            except discord.NotFound:
                log.info("job %s: channel message was deleted; posting a new one", self.job_id)
        message = await channel.send(
            **send_kwargs(channel_fallback(rendered, self.user_id), self.user_id)
        )
        self.channel_message_id = message.id
        await db.set_channel_message(self._conn, self.job_id, message.id)
