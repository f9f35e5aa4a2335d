"""A tiny discord.py bot used only by the fake's own tests (not the project's bot).

It exercises the flows the real bot needs: a slash command that defers and edits its reply
with a PNG and a button, a button that defers and edits the message, an attachment option
read back from the CDN, a modal, a permission-gated subcommand, and a fallback to a channel
message when the interaction token has expired. Everything it sees goes into a Probe that
the tests await (queues and events; no sleeping).
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import struct
import zlib

import discord
from discord import app_commands
from discord.ext import commands


def make_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A solid-colour RGB PNG, encoded by hand so the test bot needs no imaging library."""
    row = b"\x00" + bytes(rgb) * width  # filter byte 0, then the pixels

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


@dataclasses.dataclass
class Probe:
    """What the tiny bot reports to the test."""

    # When set, /paint waits for it between its defer and its edit.
    gate: asyncio.Event | None = None
    errors: asyncio.Queue[BaseException] = dataclasses.field(default_factory=asyncio.Queue)
    clicks: asyncio.Queue[discord.Interaction] = dataclasses.field(default_factory=asyncio.Queue)
    uploads: asyncio.Queue[bytes] = dataclasses.field(default_factory=asyncio.Queue)
    modal_answers: asyncio.Queue[str] = dataclasses.field(default_factory=asyncio.Queue)
    blocked_terms: asyncio.Queue[str] = dataclasses.field(default_factory=asyncio.Queue)
    raw_events: asyncio.Queue[str] = dataclasses.field(default_factory=asyncio.Queue)
    fallback_messages: asyncio.Queue[discord.Message] = dataclasses.field(
        default_factory=asyncio.Queue
    )
    user_messages: asyncio.Queue[discord.Message] = dataclasses.field(default_factory=asyncio.Queue)


class PaintView(discord.ui.View):
    def __init__(self, probe: Probe) -> None:
        super().__init__(timeout=None)
        self.probe = probe

    @discord.ui.button(label="Again", style=discord.ButtonStyle.primary, custom_id="paint:again")
    async def again(self, interaction: discord.Interaction, button: discord.ui.Button) -> None:
        await interaction.response.defer()  # type 6: the edit comes next
        png = make_png(3, 2, (0, 0, 255))
        await interaction.edit_original_response(
            content="painted again", attachments=[discord.File(io.BytesIO(png), "again.png")]
        )
        await self.probe.clicks.put(interaction)


class PickView(discord.ui.View):
    @discord.ui.select(
        custom_id="pick:size",
        options=[discord.SelectOption(label=f"{n}px", value=str(n)) for n in (64, 128, 256)],
    )
    async def size(self, interaction: discord.Interaction, select: discord.ui.Select) -> None:
        # Callback type 7: the clicked message itself is rewritten.
        await interaction.response.edit_message(content=f"size {select.values[0]}", view=None)


class AskModal(discord.ui.Modal, title="A question"):
    answer = discord.ui.TextInput(label="Your answer", custom_id="answer")

    def __init__(self, probe: Probe) -> None:
        super().__init__(custom_id="ask:modal")
        self.probe = probe

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await interaction.response.send_message(f"you said {self.answer.value}")
        await self.probe.modal_answers.put(self.answer.value)


class TinyBot(commands.Bot):
    def __init__(self, probe: Probe, *, message_content: bool = False) -> None:
        intents = discord.Intents.default()
        intents.message_content = message_content
        super().__init__(command_prefix="!", intents=intents)
        self.probe = probe
        self._add_commands()

    async def setup_hook(self) -> None:
        await self.tree.sync()

    async def before_identify_hook(self, shard_id: int | None, *, initial: bool = False) -> None:
        # discord.py waits 5 s before re-identifying after an invalid session; the fake does
        # not rate-limit IDENTIFY, so the tests skip that pause.
        return None

    async def on_socket_event_type(self, event_type: str) -> None:
        await self.probe.raw_events.put(event_type)

    async def on_message(self, message: discord.Message) -> None:
        if not message.author.bot:
            await self.probe.user_messages.put(message)

    def _add_commands(self) -> None:
        probe = self.probe

        @self.tree.command(name="paint", description="Paint a picture")
        @app_commands.describe(prompt="What to paint", steps="How many steps")
        async def paint(interaction: discord.Interaction, prompt: str, steps: int = 2) -> None:
            await interaction.response.defer(thinking=True)
            if probe.gate is not None:
                await probe.gate.wait()
            png = make_png(4, 3, (255, 0, 0))
            content = f"{prompt} after {steps} steps"
            try:
                await interaction.edit_original_response(
                    content=content,
                    attachments=[discord.File(io.BytesIO(png), "paint.png")],
                    view=PaintView(probe),
                )
            except discord.HTTPException as exc:
                await probe.errors.put(exc)
                # The interaction token is gone: carry on with a plain channel message.
                assert interaction.channel is not None
                message = await interaction.channel.send(  # type: ignore[union-attr]
                    content=content, file=discord.File(io.BytesIO(png), "paint.png")
                )
                await probe.fallback_messages.put(message)

        @self.tree.command(name="upload", description="Upload an image")
        async def upload(interaction: discord.Interaction, image: discord.Attachment) -> None:
            data = await image.read()
            await interaction.response.send_message(
                f"got {len(data)} bytes of {image.content_type}", ephemeral=True
            )
            await probe.uploads.put(data)

        @self.tree.command(name="ask", description="Ask a question")
        async def ask(interaction: discord.Interaction) -> None:
            await interaction.response.send_modal(AskModal(probe))

        @self.tree.command(name="steps", description="Answer with followups")
        async def steps(interaction: discord.Interaction) -> None:
            await interaction.response.defer(thinking=True)
            await interaction.followup.send("first", wait=True)  # replaces "thinking..."
            png = make_png(1, 1, (7, 7, 7))
            second = await interaction.followup.send(
                "second", file=discord.File(io.BytesIO(png), "step.png"), ephemeral=True, wait=True
            )
            await second.edit(content="second, edited")
            await interaction.delete_original_response()

        @self.tree.command(name="pick", description="Pick a size")
        async def pick(interaction: discord.Interaction) -> None:
            await interaction.response.send_message("pick a size", view=PickView(timeout=None))

        styles = ["oil painting", "watercolour", "woodcut"]

        async def style_choices(
            interaction: discord.Interaction, current: str
        ) -> list[app_commands.Choice[str]]:
            return [app_commands.Choice(name=s, value=s) for s in styles if current.lower() in s]

        @self.tree.command(name="style", description="Pick a style")
        @app_commands.autocomplete(name=style_choices)
        async def style(interaction: discord.Interaction, name: str) -> None:
            await interaction.response.send_message(f"style {name}")

        admin = app_commands.Group(
            name="admin",
            description="Moderation",
            default_permissions=discord.Permissions(manage_messages=True),
        )

        @admin.command(name="block", description="Block a term")
        async def block(interaction: discord.Interaction, term: str) -> None:
            await interaction.response.send_message(f"blocked {term}", ephemeral=True)
            await probe.blocked_terms.put(term)

        self.tree.add_command(admin)
