"""/rank: CLIP as a judge. Attach an image and give captions separated by "|"; the bot answers
with CLIP's zero-shot ranking of the captions, each with its share in percent.

The image goes through the same checks as /imagine's attachments (declared size and type, a
size-capped download, the file's signature, a full decode with a decompression-bomb guard) and
is never stored or re-posted: the answer is ephemeral and holds only the captions and numbers.

No ``from __future__ import annotations``: discord.py reads the command's annotations.
"""

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

import db
from bot import render
from bot.attachments import AttachmentError, check_declared, decode_check, download
from bot.thumbnails import shrink_for_clip
from generation.errors import GenerationError
from generation.workers import WorkerBusy

if TYPE_CHECKING:
    from bot.client import ImagineBot

log = logging.getLogger(__name__)

# The engine's limits (generation/judge.py); checked here too, so a bad list never waits for
# the GPU.
MAX_CAPTIONS = 25
MAX_CAPTION_CHARS = 300
BAR_WIDTH = 12
RATE_WINDOW = 60.0  # seconds; the limit is rank_per_minute answers per user in this window


class RateLimiter:
    """At most ``limit`` uses per user in any ``window`` seconds (a sliding window, in memory:
    a restart forgets it, which costs at most one window of extra /rank calls)."""

    def __init__(
        self, limit: int, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self.window = window
        self._clock = clock
        self._uses: dict[int, deque[float]] = {}

    def try_use(self, user_id: int) -> float | None:
        """Count a use and return None, or return the seconds until the user may try again."""
        now = self._clock()
        uses = self._uses.setdefault(user_id, deque())
        while uses and uses[0] <= now - self.window:
            uses.popleft()
        if len(uses) >= self.limit:
            return uses[0] + self.window - now
        uses.append(now)
        if len(self._uses) > 10_000:  # forget users whose window has passed
            self._uses = {u: d for u, d in self._uses.items() if d and d[-1] > now - self.window}
        return None


class CaptionError(ValueError):
    """The captions cannot be ranked; ``str(error)`` tells the user what to change."""


def parse_captions(text: str) -> list[str]:
    """ "a cat | a dog | a fox" -> ["a cat", "a dog", "a fox"]: spaces tidied, repeats dropped."""
    captions: list[str] = []
    for raw in text.split("|"):
        caption = " ".join(raw.split())
        if not caption:
            continue
        if len(caption) > MAX_CAPTION_CHARS:
            raise CaptionError(
                f"The caption {caption[:40]!r}… is {len(caption)} characters; keep each one "
                f"under {MAX_CAPTION_CHARS}."
            )
        if caption.casefold() not in (c.casefold() for c in captions):
            captions.append(caption)
    if len(captions) < 2:
        raise CaptionError(
            "Give at least two different captions separated by |, e.g. "
            "`a photo of a cat | a photo of a dog`."
        )
    if len(captions) > MAX_CAPTIONS:
        raise CaptionError(f"Give at most {MAX_CAPTIONS} captions, not {len(captions)}.")
    return captions


def ranking_lines(ranked: list[tuple[str, float]]) -> list[str]:
    """One line per caption, best first: place, a bar, the percentage, the caption."""
    lines = []
    for place, (caption, percent) in enumerate(ranked, start=1):
        filled = round(BAR_WIDTH * max(0.0, min(percent, 100.0)) / 100)
        bar = "█" * filled + "░" * (BAR_WIDTH - filled)
        lines.append(f"**{place}.** `{bar}` {percent:5.1f}% {render.safe_prompt(caption, 200)}")
    return lines


class RankCog(commands.Cog):
    def __init__(self, bot: "ImagineBot") -> None:
        self.bot = bot
        self.limiter = RateLimiter(bot.settings.rank_per_minute, RATE_WINDOW)

    @app_commands.command(
        name="rank", description="Which caption fits an image best, according to CLIP"
    )
    @app_commands.describe(
        image="The picture to judge (PNG, JPEG, WebP or GIF)",
        captions="Two or more captions separated by |, e.g. a cat | a dog | a fox",
    )
    async def rank(
        self,
        interaction: discord.Interaction,
        image: discord.Attachment,
        captions: app_commands.Range[str, 1, 2000],
    ) -> None:
        settings = self.bot.settings
        try:
            parsed = parse_captions(captions)
            check_declared(image, max_bytes=settings.max_attachment_bytes, what="image")
        except (CaptionError, AttachmentError) as error:
            await interaction.response.send_message(str(error), ephemeral=True)
            return
        if await db.is_banned(self.bot.conn, interaction.guild_id, interaction.user.id):
            await interaction.response.send_message(
                "You are banned from using this bot in this server. Ask a moderator if you "
                "think this is a mistake.",
                ephemeral=True,
            )
            return
        wait = self.limiter.try_use(interaction.user.id)
        if wait is not None:
            await interaction.response.send_message(
                f"You can rank {self.limiter.limit} images a minute; try again in "
                f"{math.ceil(wait)} s.",
                ephemeral=True,
            )
            return
        # Downloading and the GPU may take longer than Discord's 3 seconds.
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            ranked = await self._rank(image, parsed)
        except AttachmentError as error:
            await interaction.edit_original_response(content=str(error))
            return
        except WorkerBusy:
            await interaction.edit_original_response(
                content="The painters are busy with other requests; try /rank again in a moment."
            )
            return
        except GenerationError as error:
            await interaction.edit_original_response(
                content=f"CLIP could not rank these captions: {error}"
            )
            return
        embed = discord.Embed(
            title="CLIP's ranking",
            description="\n".join(ranking_lines(ranked)),
            color=render.COLOR_DONE,
        )
        embed.set_footer(
            text="Zero-shot: CLIP's similarities as shares of 100%, among these captions only."
        )
        await interaction.edit_original_response(content=None, embed=embed)

    async def _rank(
        self, image: discord.Attachment, captions: list[str]
    ) -> list[tuple[str, float]]:
        settings = self.bot.settings
        assert self.bot.downloads is not None
        data = await download(
            self.bot.downloads,
            image.url,
            max_bytes=settings.max_attachment_bytes,
            what="image",
            origins=settings.attachment_origins,
        )
        # Checked, decoded and made small in a thread here, so the painting thread only decodes
        # a small PNG between two steps of the running job (bot/thumbnails.py).
        small = await asyncio.to_thread(_checked_small, data, settings.max_image_pixels)
        return await self.bot.worker.rank_captions(small, captions)


def _checked_small(data: bytes, max_pixels: int) -> bytes:
    """The upload after the full decode check, shrunk for CLIP (call it in a thread)."""
    decode_check(data, max_pixels=max_pixels, what="image")
    return shrink_for_clip(data)


async def setup(bot: "ImagineBot") -> None:
    await bot.add_cog(RankCog(bot))
