"""The job buttons: Re-roll, Variation, Edit prompt, Delete, Cancel.

They are DynamicItems: the custom_id ("job:<id>:<action>") carries the job id, and everything
else comes from the job's row when the button is pressed, so buttons keep working after a
restart without any view being stored in memory.
"""

from __future__ import annotations

import re
from typing import Any, Protocol

import discord

from bot.render import BUTTONS_CANCEL, BUTTONS_DONE, BUTTONS_GROUP, BUTTONS_NONE

ACTIONS = ("reroll", "variation", "edit", "delete", "cancel")
CUSTOM_ID = re.compile(
    r"job:(?P<job_id>[0-9]{1,20}):(?P<action>reroll|variation|edit|delete|cancel)"
)

_LOOKS: dict[str, tuple[str, discord.ButtonStyle, str]] = {
    "reroll": ("Re-roll", discord.ButtonStyle.primary, "🎲"),
    "variation": ("Variation", discord.ButtonStyle.secondary, "🎨"),
    "edit": ("Edit prompt", discord.ButtonStyle.secondary, "✏"),
    "delete": ("Delete", discord.ButtonStyle.secondary, "🗑"),
    "cancel": ("Cancel", discord.ButtonStyle.danger, "✖"),
}


def custom_id(job_id: int, action: str) -> str:
    if action not in ACTIONS:
        raise ValueError(f"unknown job action {action!r}")
    return f"job:{job_id}:{action}"


class ButtonHandler(Protocol):
    """What the bot does when a job button is pressed (``bot.jobs.JobService``)."""

    async def on_button(
        self, interaction: discord.Interaction[Any], job_id: int, action: str
    ) -> None: ...


class ButtonHost(Protocol):
    """What a button needs of the client it arrives on (``bot.client.ImagineBot``): its job
    service. A protocol, so this module does not import the client, which imports it."""

    @property
    def jobs(self) -> ButtonHandler: ...


class JobButton(discord.ui.DynamicItem[discord.ui.Button[Any]], template=CUSTOM_ID):
    def __init__(
        self, job_id: int, action: str, *, number: int | None = None, row: int | None = None
    ) -> None:
        label, style, emoji = _LOOKS[action]
        if number is not None:
            label = f"{label} {number}"  # which picture of a group: "Re-roll 2"
        super().__init__(
            discord.ui.Button(
                label=label,
                style=style,
                emoji=emoji,
                custom_id=custom_id(job_id, action),
                row=row,
            )
        )
        self.job_id = job_id
        self.action = action

    @classmethod
    async def from_custom_id(
        cls,
        interaction: discord.Interaction[Any],
        item: discord.ui.Button[Any],
        match: re.Match[str],
    ) -> JobButton:
        return cls(int(match["job_id"]), match["action"])

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        host: ButtonHost = interaction.client
        await host.jobs.on_button(interaction, self.job_id, self.action)


# Discord allows 5 buttons in a row and 5 rows: a group's pictures get one row per action.
GROUP_ACTIONS = ("reroll", "variation")
MAX_GROUP_BUTTONS = 5


def job_view(
    job_id: int | None, buttons: str, members: tuple[tuple[int, int], ...] = ()
) -> discord.ui.View | None:
    """The buttons a job's message carries in a given state (None: no buttons). For a group
    (``BUTTONS_GROUP``), ``members`` holds (number, job id) of each picture with buttons: a row
    of Re-roll 1..N and a row of Variation 1..N, each button naming its picture's own job."""
    if job_id is None or buttons == BUTTONS_NONE:
        return None
    view = discord.ui.View(timeout=None)
    if buttons == BUTTONS_GROUP:
        if not 1 <= len(members) <= MAX_GROUP_BUTTONS:
            raise ValueError(f"a group shows 1 to {MAX_GROUP_BUTTONS} pictures, not {len(members)}")
        for row, action in enumerate(GROUP_ACTIONS):
            for number, member_id in members:
                view.add_item(JobButton(member_id, action, number=number, row=row))
    elif buttons == BUTTONS_CANCEL:
        view.add_item(JobButton(job_id, "cancel"))
    elif buttons == BUTTONS_DONE:
        for action in ("reroll", "variation", "edit", "delete"):
            view.add_item(JobButton(job_id, action))
    else:
        raise ValueError(f"unknown button set {buttons!r}")
    return view
