"""What the bot does with a request once a cog has parsed it: admit it, save it, answer, and
handle the job buttons (Re-roll, Variation, Edit prompt, Delete, Cancel).

The cogs and the buttons stay thin; everything here works on plain ``JobSpec`` values and the
interaction it has to answer.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiosqlite
import discord

import db
from bot import grouprender, render
from bot.admission import Admission, Refused
from bot.coalesce import NextRead
from bot.modals import EditPromptModal
from bot.moderation import permissions
from bot.progress import ReplyManager
from bot.queuewatch import QueueWatcher
from bot.replies import edit_kwargs
from bot.retention import FileClaims
from bot.scheduler import Scheduler
from db import Job, JobSpec

if TYPE_CHECKING:
    from bot.settings import Settings

log = logging.getLogger(__name__)

# Seeds the bot picks stay below 2**32 so that a user can type them back into /imagine
# (Discord integer options stop at 2**53).
SEED_RANGE = 2**32

DMS_OFF = "This bot does not take commands in direct messages. Use it in a server it is in."
NOT_YOURS = (
    "Only the person who asked for this picture, or a moderator, can cancel it. "
    "You can make your own with /imagine."
)
NOT_YOURS_TO_DELETE = (
    "Only the person who asked for this picture, or a moderator, can delete it. "
    "You can make your own with /imagine."
)


def _all_exist(paths: list[str]) -> bool:
    return all(Path(p).is_file() for p in paths)


def random_seed() -> int:
    return secrets.randbelow(SEED_RANGE)


def is_moderator(interaction: discord.Interaction[Any], moderator_role_id: int | None) -> bool:
    """Manage Messages (or Administrator) in this channel, or the guild's configured moderator
    role: the same rule as the moderator commands (``bot.moderation.permissions``)."""
    # One definition of "moderator" for buttons and commands. The role ids come from the
    # interaction payload, since Member.get_role misses roles the guild cache does not hold.
    user = interaction.user
    role_ids = getattr(user, "_roles", ()) if isinstance(user, discord.Member) else ()
    caller = permissions.Caller.of(user.id, interaction.permissions.value, role_ids)
    return permissions.is_moderator(caller, moderator_role_id)


class QueuePositions:
    """Queue places for many new jobs from few reads of the whole fair queue (``NextRead``).

    A read waits (briefly) until admissions in flight have committed their rows: in a burst of
    commands one read then serves them all."""

    # How long a read waits for admissions in flight to commit first.
    SETTLE_LIMIT = 0.5

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._inserting = 0
        self._settled = asyncio.Event()
        self._settled.set()
        self._reads: NextRead[None, dict[int, int]] = NextRead(self._read, before=self._settle)

    def inserting(self) -> None:
        """An admission started: its row is about to be committed."""
        self._inserting += 1
        self._settled.clear()

    def inserted(self) -> None:
        """That admission's row is committed (or it was refused)."""
        self._inserting -= 1
        if self._inserting == 0:
            self._settled.set()

    async def _settle(self) -> None:
        try:
            await asyncio.wait_for(self._settled.wait(), self.SETTLE_LIMIT)
        except TimeoutError:
            pass  # a steady stream of commands: read anyway

    async def _read(self, _key: None) -> dict[int, int]:
        entries = await db.fair_queue(self._conn)
        return {e.job.id: e.position for e in entries if e.position is not None}

    async def position(self, job_id: int) -> int | None:
        """1 = next to run; None when the job is not waiting in the queue (running, done)."""
        return (await self._reads.get(None)).get(job_id)


class JobService:
    TIMINGS_TTL = 10.0
    REPLY_DETAILS_WAIT = 2.0

    def __init__(
        self,
        conn: aiosqlite.Connection,
        settings: Settings,
        admission: Admission,
        scheduler: Scheduler,
        replies: ReplyManager,
    ) -> None:
        self._conn = conn
        self._settings = settings
        self.admission = admission
        self.scheduler = scheduler
        self.replies = replies
        # Acknowledgement latencies in seconds (interaction received -> answer sent), for the
        # benchmark; bounded.
        self.ack_latencies: deque[float] = deque(maxlen=10_000)
        # Recent job durations change only when jobs finish; reading them for every ack of a
        # burst would queue hundreds of reads on the one database connection.
        self._timings: tuple[float, dict[str, db.GeneratorTiming]] | None = None
        self.positions = QueuePositions(conn)
        # Commands being admitted right now. Storing reply details waits until none are (or
        # REPLY_DETAILS_WAIT has passed), so a burst of commands gets its answers first.
        self._admitting = 0
        self._quiet = asyncio.Event()
        self._quiet.set()
        # Observers (tests, tools): called with (interaction id, job) once a job's reply details
        # are stored.
        self.on_submitted: list[Callable[[int, Job], None]] = []
        # Keeps the places shown on waiting jobs' messages up to date (set by the client).
        self.queue_watcher: QueueWatcher | None = None
        # Stored files a request is about to reuse: claimed before they are checked and until
        # the job row is committed, so the retention sweep cannot delete them in between (the
        # client shares its sweeper's claims here).
        self.file_claims = FileClaims()

    # ---- new jobs ---------------------------------------------------------------------------

    async def eta(self, position: int | None, generator: str) -> float | None:
        """Seconds until a job at ``position`` is done, from recent job durations."""
        if position is None:
            return None
        now = time.monotonic()
        if self._timings is None or now - self._timings[0] > self.TIMINGS_TTL:
            self._timings = (now, await db.generator_timings(self._conn))
        timing = self._timings[1].get(generator)
        if timing is None or timing.samples == 0:
            return None
        return position * timing.mean_seconds

    async def submit(
        self,
        interaction: discord.Interaction[Any],
        spec: JobSpec,
        *,
        deferred: bool = False,
        count: int = 1,
        dm: bool | None = None,
    ) -> Job | None:
        """Admit ``spec`` and answer the interaction with the job's place in the queue.
        ``dm``: send the final picture to the requester's DMs as well (None: their /dms
        default).

        The job row is committed before the answer is sent. ``deferred``: the interaction was
        already answered with an ephemeral "thinking" (a command with attachments); the job's
        message is then a public followup and the ephemeral answer says where it is.
        """
        # The name the picture's footer shows (a name, not an id; as it was when asked).
        extra = {**spec.extra, "requester": interaction.user.display_name}
        extra.pop("dm", None)  # a re-roll's parent asked for itself; this request decides
        if spec.guild_id is not None and await self._wants_dm(spec.user_id, dm):
            extra["dm"] = True  # kept with the job: a restart still sends it (bot/dms.py)
        spec = spec.replace(extra=extra)
        self._admitting += 1
        self._quiet.clear()
        try:
            answered = await self._admit_and_answer(
                interaction, spec, deferred=deferred, count=count
            )
        finally:
            self._admitting -= 1
            if self._admitting == 0:
                self._quiet.set()
        if answered is None:
            return None
        job, message_id, expires = answered
        try:
            # Stored after the answer, to keep answers quick; the job's edits wait for it (the
            # reply manager's ack gate), so no edit goes out without these details.
            try:
                await asyncio.wait_for(self._quiet.wait(), self.REPLY_DETAILS_WAIT)
            except TimeoutError:
                pass
            job = await db.set_reply(
                self._conn,
                job.id,
                interaction_id=interaction.id,
                interaction_token=interaction.token,
                application_id=interaction.application_id,
                token_expires_at=expires,
                message_id=message_id,
            )
        except Exception:
            log.exception("could not store the reply details of job %s", job.id)
        finally:
            self.replies.acks.acked(job.id)
        for observer in self.on_submitted:
            observer(interaction.id, job)
        return job

    async def _wants_dm(self, user_id: int, dm: bool | None) -> bool:
        if dm is not None:
            return dm
        try:
            return await db.get_dm_default(self._conn, user_id)
        except Exception:
            log.exception("could not read the /dms setting of user %s", user_id)
            return False

    async def _admit_and_answer(
        self,
        interaction: discord.Interaction[Any],
        spec: JobSpec,
        *,
        deferred: bool,
        count: int = 1,
    ) -> tuple[Job, int | None, float] | None:
        """Admit the job and send the answer; (job, followup message id, token expiry).
        ``count`` > 1: that many pictures with consecutive seeds (a group, one reply); the job
        returned is the group's first, whose row holds the reply's details."""
        received = time.monotonic()
        self.positions.inserting()
        try:
            if count == 1:
                job = await self.admission.admit(spec)
            else:
                specs = [spec.replace(seed=spec.seed + i) for i in range(count)]
                job = (await self.admission.admit_group(specs))[0]
        except Refused as refused:
            self.positions.inserted()
            await self.refuse(interaction, refused.message, deferred=deferred)
            return None
        except BaseException:
            self.positions.inserted()
            raise
        self.positions.inserted()
        self.scheduler.wake()
        # The interaction's token dies 15 minutes after it was issued (a moment before now).
        expires = time.time() + self._settings.token_lifetime
        message_id: int | None = None
        try:
            position = await self.positions.position(job.id)
            if self.queue_watcher is not None:
                self.queue_watcher.shown(job.id, position)
                self.queue_watcher.poke()  # a new user's job may go ahead of others
            eta = await self.eta(position, job.generator)
            queued = grouprender.queued if job.in_group else render.queued
            kwargs = edit_kwargs(queued(job, position, eta))
            kwargs.pop("attachments")
            if deferred:
                # End the ephemeral "thinking" first: while it is loading, Discord would turn the
                # first followup into that (ephemeral) message instead of a public one.
                await interaction.edit_original_response(
                    content=f"Queued as picture #{job.id}; it appears in the channel."
                )
                message = await interaction.followup.send(wait=True, **kwargs)
                message_id = message.id
            else:
                await interaction.response.send_message(**kwargs)
            self.ack_latencies.append(time.monotonic() - received)
        except discord.HTTPException as error:
            # The job is saved and will run; its result reaches the channel even without this
            # answer (the reply sink falls back to a channel message).
            log.warning("could not acknowledge job %s: %s", job.id, error)
        return job, message_id, expires

    async def refuse(
        self, interaction: discord.Interaction[Any], message: str, *, deferred: bool = False
    ) -> None:
        """An ephemeral answer: only the person who asked sees why."""
        try:
            if deferred or interaction.response.is_done():
                await interaction.edit_original_response(content=message)
            else:
                await interaction.response.send_message(message, ephemeral=True)
        except discord.HTTPException as error:
            log.warning("could not send a refusal: %s", error)

    # ---- buttons ----------------------------------------------------------------------------

    async def on_button(
        self, interaction: discord.Interaction[Any], job_id: int, action: str
    ) -> None:
        if interaction.guild_id is None and not self._settings.allow_dms:
            await self.refuse(interaction, DMS_OFF)
            return
        job = await db.get_job(self._conn, job_id)
        if job is None:
            await self.refuse(interaction, "This picture is no longer known to the bot.")
            return
        if action == "cancel":
            await self.cancel(interaction, job)
        elif action == "reroll":
            await self.reroll(interaction, job)
        elif action == "variation":
            await self.variation(interaction, job)
        elif action == "edit":
            await self.edit_prompt(interaction, job)
        elif action == "delete":
            await self.delete(interaction, job)

    def _derived(
        self, interaction: discord.Interaction[Any], parent: Job, **changes: Any
    ) -> JobSpec:
        return parent.to_spec(
            parent_job_id=parent.id,
            user_id=interaction.user.id,
            guild_id=interaction.guild_id,
            channel_id=interaction.channel_id,
            **changes,
        )

    async def reroll(self, interaction: discord.Interaction[Any], parent: Job) -> Job | None:
        """Same request, new seed: a new job and message, counted against the presser."""
        if parent.status != "done":
            await self.refuse(interaction, "Only a finished picture can be re-rolled.")
            return None
        inputs = [p for p in (parent.init_image, *parent.image_prompts) if p]
        with self.file_claims.hold(inputs):
            if inputs and not await asyncio.to_thread(_all_exist, inputs):
                await self.refuse(
                    interaction,
                    "This picture started from images that have expired (the bot keeps files "
                    "for a limited time), so it cannot be re-rolled. Run /imagine again with "
                    "new images.",
                )
                return None
            seed = random_seed()
            while seed == parent.seed:
                seed = random_seed()
            return await self.submit(
                interaction, self._derived(interaction, parent, kind="reroll", seed=seed)
            )

    async def variation(self, interaction: discord.Interaction[Any], parent: Job) -> Job | None:
        """A new job that starts from the finished picture."""
        if parent.status != "done" or not parent.output_path:
            await self.refuse(interaction, "Only a finished picture can be varied.")
            return None
        with self.file_claims.hold([parent.output_path]):
            if parent.expired_at is not None or not await asyncio.to_thread(
                _all_exist, [parent.output_path]
            ):
                await self.refuse(
                    interaction,
                    f"{render.EXPIRED_NOTE} It cannot be varied any more; Re-roll it or run "
                    "/imagine again.",
                )
                return None
            spec = self._derived(
                interaction,
                parent,
                kind="variation",
                seed=random_seed(),
                init_image=parent.output_path,
            )
            return await self.submit(interaction, spec)

    async def _may_manage(self, interaction: discord.Interaction[Any], job: Job) -> bool:
        """The requester, or a moderator of the job's guild (checked here, on the server
        side: anyone who sees a button can press it)."""
        if interaction.user.id == job.user_id:
            return True
        moderator_role = None
        if job.guild_id is not None:
            settings = await db.get_guild_settings(self._conn, job.guild_id)
            moderator_role = settings.moderator_role_id
        return is_moderator(interaction, moderator_role)

    async def edit_prompt(self, interaction: discord.Interaction[Any], parent: Job) -> None:
        """Open a modal with the prompt filled in; on submit, paint it with the same seed and
        options (a new job of the presser)."""
        if parent.status != "done":
            await self.refuse(interaction, "Only a finished picture's prompt can be edited.")
            return

        async def submitted(modal_interaction: discord.Interaction[Any], prompt: str) -> None:
            await self.submit_edited(modal_interaction, parent.id, prompt)

        try:
            await interaction.response.send_modal(
                EditPromptModal(parent.id, parent.prompt, submitted)
            )
        except discord.HTTPException as error:
            log.warning("could not open the prompt editor of job %s: %s", parent.id, error)

    async def submit_edited(
        self, interaction: discord.Interaction[Any], parent_id: int, prompt: str
    ) -> Job | None:
        parent = await db.get_job(self._conn, parent_id)
        if parent is None:
            await self.refuse(interaction, "This picture is no longer known to the bot.")
            return None
        inputs = [p for p in (parent.init_image, *parent.image_prompts) if p]
        with self.file_claims.hold(inputs):
            if inputs and not await asyncio.to_thread(_all_exist, inputs):
                await self.refuse(
                    interaction,
                    "This picture started from images that have expired, so it cannot be "
                    "painted again with a new prompt. Run /imagine with new images.",
                )
                return None
            spec = self._derived(interaction, parent, kind="imagine", prompt=prompt.strip())
            return await self.submit(interaction, spec)

    async def delete(self, interaction: discord.Interaction[Any], job: Job) -> None:
        """Remove the picture's message and its file: requester or moderator only."""
        if not await self._may_manage(interaction, job):
            await self.refuse(interaction, NOT_YOURS_TO_DELETE)
            return
        if not job.finished:
            await self.refuse(interaction, "Cancel a picture that is still being made instead.")
            return
        try:
            await interaction.response.defer()
        except discord.HTTPException as error:
            log.warning("could not answer the delete of job %s: %s", job.id, error)
            return
        # The file first: once the message is gone nobody can press Delete again.
        if job.output_path and job.expired_at is None:
            # Like the retention sweep: not while a job uses it or a request has claimed it
            # (a Variation of this picture being admitted right now).
            deleted: list[str] = []
            with self.file_claims.snapshot() as snapshot:
                in_use = await db.files_in_use(self._conn)
                if job.output_path not in in_use:
                    deleted = await asyncio.to_thread(snapshot.delete, [job.output_path])
            if deleted or not await asyncio.to_thread(_all_exist, [job.output_path]):
                await db.mark_expired(self._conn, [job.output_path])
        try:
            if interaction.message is not None:
                await interaction.message.delete()
        except discord.HTTPException as error:
            log.warning("could not delete the message of job %s: %s", job.id, error)
            await self.refuse(interaction, "The message could not be deleted; try again later.")
            return
        log.info("job %s deleted by user %s", job.id, interaction.user.id)

    async def cancel(self, interaction: discord.Interaction[Any], job: Job) -> None:
        """Requester or moderator only; everyone else gets a polite ephemeral no."""
        if not await self._may_manage(interaction, job):
            await self.refuse(interaction, NOT_YOURS)
            return
        if job.in_group:
            assert job.group_id is not None
            # One Cancel for the whole group: every picture still waiting or painting.
            rows = await db.cancel_group(self._conn, job.group_id, by=interaction.user.id)
            if not rows:
                await self.refuse(interaction, "These pictures had already finished.")
                return
            try:
                await interaction.response.defer()
            except discord.HTTPException as error:
                log.warning("could not answer the cancel of group %s: %s", job.group_id, error)
            await self.cancelled_elsewhere(rows, by=interaction.user.id)
            if self.queue_watcher is not None:
                self.queue_watcher.poke()
            return
        if job.finished:
            await self.refuse(interaction, f"This picture is already {job.status}.")
            return
        cancelled = await db.mark_cancelled(self._conn, job.id, by=interaction.user.id)
        if cancelled is None:
            await self.refuse(interaction, "This picture had already finished.")
            return
        try:
            # The message itself is changed by the job's reporter, which keeps edits in order.
            await interaction.response.defer()
        except discord.HTTPException as error:
            log.warning("could not answer the cancel of job %s: %s", job.id, error)
        await self.cancelled_elsewhere([cancelled], by=interaction.user.id)
        if self.queue_watcher is not None:
            self.queue_watcher.poke()

    async def cancelled_elsewhere(self, jobs: list[Job], *, by: int | None) -> None:
        """Jobs cancelled in the database (a Cancel button, /ban, /purge): stop the running
        one and show "cancelled" on the others' messages."""
        groups = self.scheduler.delivery.groups
        finals = [
            # A picture of a group ends in the group's one message.
            groups.settle(job)
            if job.in_group
            else self.replies.finish(job, render.cancelled(job, by))
            for job in jobs
            # A running job stops within a step; the scheduler then edits its message.
            if not self.scheduler.abort(job.id)
        ]
        await asyncio.gather(*finals)
