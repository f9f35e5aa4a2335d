"""/info: what the bot runs on and how busy it is."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

import db
from bot import render

if TYPE_CHECKING:
    from bot.client import ImagineBot


def info_lines(
    facts: dict[str, str], stats: db.QueueStats, uptime: float, running_job: int | None
) -> list[str]:
    """The /info text, one fact per line (pure, so it is tested without Discord)."""
    lines = [f"**{key.replace('_', ' ').capitalize()}**: {value}" for key, value in facts.items()]
    painting = f" (picture #{running_job})" if running_job is not None else ""
    lines += [
        f"**Queue**: {stats.queued} waiting, {stats.running} painting{painting}",
        f"**Pictures made**: {stats.done} ({stats.failed} failed, {stats.cancelled} cancelled)",
        f"**Users**: {stats.users}",
        f"**Up for**: {render.format_duration(uptime)}",
    ]
    return lines


class InfoCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="info", description="Models, device, queue and uptime of the bot")
    async def info(self, interaction: discord.Interaction) -> None:
        stats = await db.queue_stats(self.bot.conn)
        lines = info_lines(
            self.bot.worker.describe(),
            stats,
            time.time() - self.bot.started_at,
            self.bot.scheduler.current_job_id,
        )
        embed = discord.Embed(
            title="CLIP imagine bot", description="\n".join(lines), color=render.COLOR_QUEUED
        )
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(InfoCog(bot))
