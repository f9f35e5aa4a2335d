"""/imagine, /queue and /history: thin handlers that parse options and call the JobService.

No ``from __future__ import annotations`` here: the /imagine signature is built at run time
(its size and generator choices and its step limit come from the settings and the worker), and
discord.py reads the annotations of that signature as real objects.
"""

import asyncio
import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import discord
from discord import app_commands
from discord.ext import commands

import db
from bot import render
from bot.admission import Refused
from bot.attachments import (
    AttachmentError,
    CheckedImage,
    check_declared,
    discard,
    discard_unless_used,
    fetch_image,
)
from bot.exts.info import workers_text
from bot.jobs import random_seed
from bot.modals import USE_AS, ImagineFromImageModal
from bot.settings import parse_size

if TYPE_CHECKING:
    from bot.client import ImagineBot

log = logging.getLogger(__name__)

# Discord integer options stop at 2**53.
MAX_OPTION_SEED = 2**53 - 1
# Pictures one /imagine may ask for (count): a grid plus each file fits Discord's 10
# attachments, and a Re-roll and a Variation per picture fit its 5 buttons a row.
MAX_COUNT = 4


def size_label(size: str) -> str:
    """ "384x256" -> "384×256 landscape 3:2"."""
    width, height = parse_size(size)
    if width == height:
        return f"{width}×{height} square"
    divisor = math.gcd(width, height)
    shape = "landscape" if width > height else "portrait"
    return f"{width}×{height} {shape} {width // divisor}:{height // divisor}"


def build_imagine_command(cog: "ImagineCog") -> app_commands.Command[Any, Any, Any]:
    settings = cog.bot.settings
    # Only the generators the operator allows (IMAGINE_GENERATORS), the default first.
    generators = settings.generators or cog.bot.worker.generator_names()
    size_choices = [
        app_commands.Choice(name=size_label(size), value=size) for size in settings.sizes[:25]
    ]
    generator_choices = [app_commands.Choice(name=name, value=name) for name in generators[:25]]
    Steps = app_commands.Range[int, 1, settings.max_steps]
    Seed = app_commands.Range[int, 0, MAX_OPTION_SEED]

    @app_commands.command(name="imagine", description="Paint a picture from a text prompt")
    @app_commands.describe(
        prompt='What to paint, e.g. "a lighthouse in a storm, oil painting" (weights: "a:1 | b:-0.5")',
        seed="Same seed and settings give the same picture (random if left out)",
        steps=f"Optimisation steps: more is slower and more detailed (default {settings.default_steps})",
        size="Width × height",
        generator="How the picture is made",
        init_image="An image to start from",
        image_prompt="An image whose look the picture should have",
        strength="Diffusion generators: how much of the init image to paint over, 0.01-1 "
        "(default 0.5 pixel, 0.75 latent)",
        count=f"How many pictures of this prompt, with consecutive seeds (1-{MAX_COUNT}, "
        "default 1)",
        dm="Send the finished picture to your DMs as well (default: your /dms setting)",
    )
    @app_commands.choices(size=size_choices, generator=generator_choices)
    async def imagine(
        interaction: discord.Interaction,
        prompt: app_commands.Range[str, 1, 1000],
        seed: Seed | None = None,  # type: ignore[valid-type]
        steps: Steps | None = None,  # type: ignore[valid-type]
        size: str | None = None,
        generator: str | None = None,
        init_image: discord.Attachment | None = None,
        image_prompt: discord.Attachment | None = None,
        strength: app_commands.Range[float, 0.01, 1.0] | None = None,
        count: app_commands.Range[int, 1, MAX_COUNT] | None = None,
        dm: bool | None = None,
    ) -> None:
        await cog.imagine(
            interaction,
            prompt=prompt,
            seed=seed,
            steps=steps,
            size=size,
            generator=generator,
            init_image=init_image,
            image_prompt=image_prompt,
            strength=strength,
            count=count,
            dm=dm,
        )

    return imagine


def first_image(message: discord.Message) -> discord.Attachment | None:
    """The message's first image attachment (a bot's picture is one: its embed shows it)."""
    for attachment in message.attachments:
        kind = (attachment.content_type or "").split(";")[0].strip().lower()
        if kind.startswith("image/") or attachment.filename.lower().endswith(IMAGE_SUFFIXES):
            return attachment
    return None


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
NO_IMAGE = (
    "This message has no image attached. Use Imagine from this image on a message with a "
    "picture, or run /imagine with init_image."
)


class ImagineCog(commands.Cog):
    def __init__(self, bot: "ImagineBot") -> None:
        self.bot = bot
        self.imagine_command = build_imagine_command(self)
        self.from_image_menu = app_commands.ContextMenu(
            name="Imagine from this image", callback=self.imagine_from_image
        )

    async def cog_load(self) -> None:
        self.bot.tree.add_command(self.imagine_command, override=True)
        self.bot.tree.add_command(self.from_image_menu, override=True)

    async def cog_unload(self) -> None:
        self.bot.tree.remove_command(self.imagine_command.name)
        self.bot.tree.remove_command(self.from_image_menu.name, type=discord.AppCommandType.message)

    async def imagine_from_image(
        self, interaction: discord.Interaction, message: discord.Message
    ) -> None:
        """Message context menu: ask for a prompt, then paint from the message's image."""
        attachment = first_image(message)
        if attachment is None:
            await self.bot.jobs.refuse(interaction, NO_IMAGE)
            return

        async def submitted(
            modal_interaction: discord.Interaction, prompt: str, use_as: str
        ) -> None:
            await self.from_image_submitted(modal_interaction, attachment, prompt, use_as)

        await interaction.response.send_modal(ImagineFromImageModal(submitted))

    async def from_image_submitted(
        self,
        interaction: discord.Interaction,
        attachment: discord.Attachment,
        prompt: str,
        use_as: str,
    ) -> None:
        if use_as not in USE_AS:
            await self.bot.jobs.refuse(
                interaction,
                f"Type init (start from the image) or style (aim for its look), not "
                f"{render.shorten(use_as, 20)!r}.",
            )
            return
        await self.imagine(
            interaction,
            prompt=prompt,
            seed=None,
            steps=None,
            size=None,
            generator=None,
            init_image=attachment if use_as == "init" else None,
            image_prompt=attachment if use_as == "style" else None,
        )

    async def imagine(
        self,
        interaction: discord.Interaction,
        *,
        prompt: str,
        seed: int | None,
        steps: int | None,
        size: str | None,
        generator: str | None,
        init_image: discord.Attachment | None,
        image_prompt: discord.Attachment | None,
        strength: float | None = None,
        count: int | None = None,
        dm: bool | None = None,
    ) -> None:
        settings = self.bot.settings
        jobs = self.bot.jobs
        pictures = 1 if count is None else count
        try:
            # Discord's range is a hint to the app; a client may send anything.
            jobs.admission.limits.check_count(pictures)
        except Refused as refused:
            await jobs.refuse(interaction, refused.message)
            return
        if size is not None and size not in settings.sizes:
            # Discord offers only the choices, but a client may send anything.
            await jobs.refuse(
                interaction,
                f"The size {render.shorten(size, 20)!r} is not offered on this bot; choose one "
                f"of: {', '.join(settings.sizes)}.",
            )
            return
        width, height = parse_size(size) if size else settings.default_size
        generators = settings.generators or self.bot.worker.generator_names()
        if generator is not None and generator not in generators:
            await jobs.refuse(
                interaction,
                f"The {generator} generator is not enabled on this bot; choose one of: "
                f"{', '.join(generators)}.",
            )
            return
        spec = db.JobSpec(
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            prompt=prompt,
            seed=random_seed() if seed is None else seed,
            steps=settings.default_steps if steps is None else steps,
            width=width,
            height=height,
            generator=generator or (generators[0] if generators else "vqgan"),
            cutn=settings.default_cutn,
        )
        # A strength is checked together with its init image, which has a path only once it is
        # downloaded; without one, admission refuses it and says why.
        with_strength = {} if strength is None else {"strength": strength}
        if init_image is None:
            spec = spec.replace(extra=with_strength)
        attachments = [
            (a, what)
            for a, what in ((init_image, "init image"), (image_prompt, "image prompt"))
            if a is not None
        ]
        if not attachments:
            await jobs.submit(interaction, spec, count=pictures, dm=dm)
            return
        # Refuse bad options, bans, limits, blocked prompts and files that are too big or not
        # images by what Discord says about them, all before downloading anything.
        try:
            await jobs.admission.precheck(spec)
            for attachment, what in attachments:
                check_declared(attachment, max_bytes=settings.max_attachment_bytes, what=what)
        except Refused as refused:
            await jobs.refuse(interaction, refused.message)
            return
        except AttachmentError as error:
            await jobs.refuse(interaction, str(error))
            return
        # Downloads may take longer than Discord's 3 seconds: answer "thinking" (ephemeral, so
        # an error about the file is seen by its sender only), then post the job publicly.
        await interaction.response.defer(ephemeral=True, thinking=True)
        # Each file is claimed before it is written (the retention sweep leaves it alone) and
        # is either handed to the job or deleted, whatever fails on the way.
        with self.bot.file_claims.hold() as saved:
            submitting = False
            handed = False
            try:
                downloaded = await self._download(spec, attachments, saved.add)
                if isinstance(downloaded, str):
                    # One file was refused: the other one is not kept either (deleted before
                    # the answer, so nothing is left once the user reads it).
                    await asyncio.to_thread(discard, saved.paths)
                    await jobs.refuse(interaction, downloaded, deferred=True)
                    return
                spec = downloaded.replace(extra={**downloaded.extra, **with_strength})
                submitting = True
                handed = (
                    await jobs.submit(interaction, spec, deferred=True, count=pictures, dm=dm)
                    is not None
                )
            finally:
                if not handed and saved.paths:
                    if submitting:
                        # It failed or was cancelled part-way: the job may exist after all.
                        await discard_unless_used(self.bot.conn, saved.paths)
                    else:
                        # Refused, or failed before any job was asked for: keep nothing.
                        await asyncio.to_thread(discard, saved.paths)

    async def _download(
        self,
        spec: db.JobSpec,
        attachments: list[tuple[discord.Attachment, str]],
        claim: Callable[[Path], None],
    ) -> db.JobSpec | str:
        """Fetch the attachments into the spec, or the message that says why one was
        refused."""
        settings = self.bot.settings
        assert self.bot.downloads is not None
        results = await asyncio.gather(
            *(
                fetch_image(
                    self.bot.downloads,
                    attachment,
                    settings.input_dir,
                    max_bytes=settings.max_attachment_bytes,
                    max_pixels=settings.max_image_pixels,
                    what=what,
                    origins=settings.attachment_origins,
                    claim=claim,
                )
                for attachment, what in attachments
            ),
            return_exceptions=True,
        )
        checked = [r for r in results if isinstance(r, CheckedImage)]
        errors = [r for r in results if not isinstance(r, CheckedImage)]
        if errors:
            if not isinstance(errors[0], AttachmentError):
                raise errors[0]
            return str(errors[0])
        paths = {what: str(item.path) for (_, what), item in zip(attachments, checked, strict=True)}
        return spec.replace(
            init_image=paths.get("init image"),
            image_prompts=(paths["image prompt"],) if "image prompt" in paths else (),
        )

    @app_commands.command(
        name="queue", description="Your pictures in the queue and when they are due"
    )
    async def queue(self, interaction: discord.Interaction) -> None:
        conn = self.bot.conn
        entries = await db.queued_jobs_for_user(
            conn, interaction.user.id, guild_id=interaction.guild_id
        )
        stats = await db.queue_stats(conn)
        header = (
            f"{stats.queued} waiting and {stats.running} painting in the whole queue; "
            f"workers: {workers_text(self.bot.worker.status())}."
        )
        if not entries:
            await interaction.response.send_message(
                f"You have no pictures waiting. {header}", ephemeral=True
            )
            return
        lines = []
        for entry in entries[:15]:
            job = entry.job
            prompt = render.safe_prompt(job.prompt, 80)
            if entry.position is None:
                step = f" (step {job.last_step}/{job.total_steps})" if job.total_steps else ""
                where = f"painting now{step}"
            else:
                eta = await self.bot.jobs.eta(entry.position, job.generator)
                due = f", done in about {render.format_duration(eta)}" if eta is not None else ""
                where = f"{render.ordinal_place(entry.position)}{due}"
            lines.append(f"**#{job.id}** {prompt}: {where}")
        if len(entries) > 15:
            lines.append(f"…and {len(entries) - 15} more.")
        await interaction.response.send_message(header + "\n" + "\n".join(lines), ephemeral=True)

    @app_commands.command(
        name="history", description="Your recent pictures with their seeds, to run again"
    )
    @app_commands.describe(order="Newest first, or best CLIP score first")
    @app_commands.choices(
        order=[
            app_commands.Choice(name="newest first", value="recent"),
            app_commands.Choice(name="best score first", value="score"),
        ]
    )
    async def history(self, interaction: discord.Interaction, order: str | None = None) -> None:
        entries = await db.history(
            self.bot.conn,
            interaction.user.id,
            guild_id=interaction.guild_id,
            limit=10,
            order=order or "recent",
        )
        if not entries:
            await interaction.response.send_message(
                "You have no finished pictures here yet. Try /imagine.", ephemeral=True
            )
            return
        lines = []
        for entry in entries:
            # The whole row: every option the picture was made with, to make it again.
            job = await db.get_job(self.bot.conn, entry.job_id)
            if job is not None:
                lines.append(render.history_line(job, entry.clip_score))
        # Whole entries only (a cut command would not make the picture again).
        shown: list[str] = []
        for line in lines:
            if sum(len(x) + 1 for x in shown) + len(line) > render.CONTENT_LIMIT - 60:
                shown.append(f"…and {len(lines) - len(shown)} more; long prompts fill the list.")
                break
            shown.append(line)
        lines = shown
        await interaction.response.send_message(
            render.shorten("\n".join(lines), render.CONTENT_LIMIT), ephemeral=True
        )


async def setup(bot: "ImagineBot") -> None:
    await bot.add_cog(ImagineCog(bot))
