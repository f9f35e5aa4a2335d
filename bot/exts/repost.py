"""/repost: post one of your finished pictures again, as a new message with its buttons.

For a picture whose message could not be delivered (Discord refused the final edit until the
bot gave up: the message deleted, no permission to attach files there), and for anyone who
wants a picture again in another channel. The requester or a moderator of the picture's server
may repost it; a picture the image check withheld is never reposted, and one whose file has
expired says so.

No ``from __future__ import annotations``: discord.py reads the command's annotations.
"""

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

import db
from bot import render
from bot.delivery import SHOW, SPOILER, StoredImage
from bot.jobs import is_moderator
from bot.replies import send_kwargs

if TYPE_CHECKING:
    from bot.client import ImagineBot

log = logging.getLogger(__name__)

NOT_YOURS = "Only the person who asked for picture #{id}, or a moderator, can repost it."


def _read(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes()
    except OSError:
        return None


class RepostCog(commands.Cog):
    def __init__(self, bot: "ImagineBot") -> None:
        self.bot = bot

    @app_commands.command(name="repost", description="Post one of your finished pictures again")
    @app_commands.describe(picture="The picture's number (#12 in its title, or see /history)")
    async def repost(
        self, interaction: discord.Interaction, picture: app_commands.Range[int, 1, 2**53 - 1]
    ) -> None:
        job = await db.get_job(self.bot.conn, picture)
        problem = await self._refusal(interaction, job, picture)
        if problem is not None:
            await interaction.response.send_message(problem, ephemeral=True)
            return
        assert job is not None and job.output_path is not None
        png = await asyncio.to_thread(_read, job.output_path)
        if png is None:
            await interaction.response.send_message(
                f"Picture #{picture}: {render.EXPIRED_NOTE} Re-roll it or run /imagine again.",
                ephemeral=True,
            )
            return
        verdict = job.image_verdict or SHOW
        rendered = render.done(job, StoredImage.of(job, png), spoiler=verdict == SPOILER)
        await interaction.response.send_message(**send_kwargs(rendered, interaction.user.id))
        if job.delivery in ("pending", "undelivered"):
            # It has reached Discord now: stop any retry and let retention treat it as usual.
            await db.mark_delivered(self.bot.conn, job.id)

    async def _refusal(
        self, interaction: discord.Interaction, job: db.Job | None, picture: int
    ) -> str | None:
        if job is None:
            return f"There is no picture #{picture}. /history lists yours."
        if interaction.user.id != job.user_id:
            role = None
            if job.guild_id is not None:
                role = (await db.get_guild_settings(self.bot.conn, job.guild_id)).moderator_role_id
            if job.guild_id != interaction.guild_id or not is_moderator(interaction, role):
                return NOT_YOURS.format(id=picture)
        if job.status != "done" or not job.output_path:
            return f"Picture #{picture} is {job.status}, not finished; only finished ones repost."
        if (job.image_verdict or SHOW) not in (SHOW, SPOILER):
            return f"Picture #{picture} was withheld by the server's image check."
        if job.expired_at is not None:
            return f"Picture #{picture}: {render.EXPIRED_NOTE} Re-roll it or run /imagine again."
        return None


async def setup(bot: "ImagineBot") -> None:
    await bot.add_cog(RepostCog(bot))
