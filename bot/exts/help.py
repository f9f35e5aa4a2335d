"""/help: what the bot does and how to use it (ephemeral)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.helptext import help_sections

if TYPE_CHECKING:
    from bot.client import ImagineBot


class HelpCog(commands.Cog):
    def __init__(self, bot: ImagineBot) -> None:
        self.bot = bot

    @app_commands.command(name="help", description="How to paint with this bot")
    async def help(self, interaction: discord.Interaction) -> None:
        settings = self.bot.settings
        embed = discord.Embed(
            title="Painting with CLIP",
            description="Describe a picture; the bot paints it and shows its progress.",
            color=0x5865F2,
        )
        sections = help_sections(
            generators=settings.generators or self.bot.worker.generator_names(),
            sizes=settings.sizes,
            max_steps=settings.max_steps,
            default_steps=settings.default_steps,
        )
        for title, text in sections:
            embed.add_field(name=title, value=text, inline=False)
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: ImagineBot) -> None:
    await bot.add_cog(HelpCog(bot))
