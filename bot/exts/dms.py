"""/dms: a user's default for getting their finished pictures in their DMs as well.

No ``from __future__ import annotations``: discord.py reads the command's annotations.
"""

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

import db

if TYPE_CHECKING:
    from bot.client import ImagineBot

ON = (
    "From now on your finished pictures are sent to your DMs as well (they stay in the "
    "channel too). `/imagine dm:False` skips it once; `/dms send:False` turns it off."
)
OFF = (
    "Your pictures are no longer sent to your DMs. `/imagine dm:True` sends one once; "
    "`/dms send:True` turns it back on."
)


def status_line(on: bool) -> str:
    if on:
        return (
            "Your finished pictures are sent to your DMs as well. Turn it off: `/dms send:False`."
        )
    return "Your pictures are not sent to your DMs. Turn it on: `/dms send:True`."


class DmsCog(commands.Cog):
    def __init__(self, bot: "ImagineBot") -> None:
        self.bot = bot

    @app_commands.command(name="dms", description="Have your finished pictures sent to your DMs")
    @app_commands.describe(send="On: every picture you ask for also goes to your DMs")
    async def dms(self, interaction: discord.Interaction, send: bool | None = None) -> None:
        if send is None:
            on = await db.get_dm_default(self.bot.conn, interaction.user.id)
            await interaction.response.send_message(status_line(on), ephemeral=True)
            return
        await db.set_dm_default(self.bot.conn, interaction.user.id, send)
        await interaction.response.send_message(ON if send else OFF, ephemeral=True)


async def setup(bot: "ImagineBot") -> None:
    await bot.add_cog(DmsCog(bot))
