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
    from generation.workers import WorkersStatus


def workers_text(status: WorkersStatus) -> str:
    """ "2 of 2 up, 1 busy (ray)": how many workers can paint and how many do now."""
    down = f", {status.total - status.up} restarting" if status.up < status.total else ""
    return f"{status.up} of {status.total} up, {status.busy} busy{down} ({status.kind})"


def info_lines(
    facts: dict[str, str],
    stats: db.QueueStats,
    uptime: float,
    running_job: int | None,
    workers: WorkersStatus | None = None,
) -> list[str]:
    """The /info text, one fact per line (pure, so it is tested without Discord)."""
    lines = [f"**{key.replace('_', ' ').capitalize()}**: {value}" for key, value in facts.items()]
    if workers is not None:
        lines.append(f"**Workers**: {workers_text(workers)}")
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
        facts = self.bot.worker.describe()
        if self.bot.settings.generators:  # the operator's allow-list, not every registered one
            facts["generators"] = ", ".join(self.bot.settings.generators)
        lines = info_lines(
            facts,
            stats,
            time.time() - self.bot.started_at,
            self.bot.scheduler.current_job_id,
            self.bot.worker.status(),
        )
        embed = discord.Embed(
            title="CLIP imagine bot", description="\n".join(lines), color=render.COLOR_QUEUED
        )
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(InfoCog(bot))
