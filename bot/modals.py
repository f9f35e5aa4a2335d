"""Modals: Edit prompt (prefilled with a finished picture's prompt) and Imagine from this image
(a prompt for a message's image). Thin: on submit they hand plain values to the job service
or the imagine cog, which check and admit them like any command."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import discord

from bot.moderation.normalize import shown_text

# Discord's limits: a modal title has at most 45 characters, a text input 4000 (ours: the
# /imagine prompt's 1000).
PROMPT_LIMIT = 1000
MODAL_TIMEOUT = 15 * 60.0

OnPrompt = Callable[[discord.Interaction[Any], str], Awaitable[None]]
OnImagePrompt = Callable[[discord.Interaction[Any], str, str], Awaitable[None]]

USE_AS = {"init": "init image", "style": "image prompt"}


class EditPromptModal(discord.ui.Modal):
    """Change the prompt of picture #job_id and paint it again (same seed and options)."""

    def __init__(self, job_id: int, prompt: str, on_submit: OnPrompt) -> None:
        super().__init__(title=f"Edit the prompt of #{job_id}"[:45], timeout=MODAL_TIMEOUT)
        self.custom_id = f"job:{job_id}:editmodal"
        self.prompt: discord.ui.TextInput[EditPromptModal] = discord.ui.TextInput(
            label="Prompt",
            style=discord.TextStyle.paragraph,
            default=shown_text(prompt)[:PROMPT_LIMIT],
            max_length=PROMPT_LIMIT,
            custom_id="prompt",
        )
        self.add_item(self.prompt)
        self._on_submit = on_submit

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        await self._on_submit(interaction, self.prompt.value)


class ImagineFromImageModal(discord.ui.Modal):
    """A prompt for a message's image, and whether the image is where the picture starts
    (init) or a look to aim for (style)."""

    def __init__(self, on_submit: OnImagePrompt) -> None:
        super().__init__(title="Imagine from this image", timeout=MODAL_TIMEOUT)
        self.custom_id = "imagine:fromimage"
        self.prompt: discord.ui.TextInput[ImagineFromImageModal] = discord.ui.TextInput(
            label="Prompt",
            style=discord.TextStyle.paragraph,
            placeholder="what to paint, e.g. a watercolour of this scene at night",
            max_length=PROMPT_LIMIT,
            custom_id="prompt",
        )
        self.use_as: discord.ui.TextInput[ImagineFromImageModal] = discord.ui.TextInput(
            label="Use the image as: init (start from it) or style",
            default="init",
            max_length=10,
            custom_id="use_as",
        )
        self.add_item(self.prompt)
        self.add_item(self.use_as)
        self._on_submit = on_submit

    async def on_submit(self, interaction: discord.Interaction[Any]) -> None:
        await self._on_submit(interaction, self.prompt.value, self.use_as.value.strip().lower())
