"""The bot: a ``commands.Bot`` that is handed its dependencies (settings, database connection,
GPU worker) and wires the pieces together.

``setup_hook`` (after login, before the gateway connects) loads the cogs, registers the job
buttons as DynamicItems, syncs the slash commands, and starts the scheduler, which first puts
interrupted jobs back on the queue.
"""

from __future__ import annotations

import asyncio
import importlib.util
import logging
import time
from typing import Any

import aiohttp
import aiosqlite
import discord
import yarl
from discord import app_commands
from discord.ext import commands

import db
from bot.admission import Admission, BlockedTermsPolicy, BotLimits, PolicyChain
from bot.delivery import Delivery
from bot.dms import DmSender
from bot.joblog import job_line
from bot.jobs import DMS_OFF, JobService
from bot.option_types import malformed_options
from bot.progress import ReplyManager
from bot.queuewatch import QueueWatcher
from bot.refusals import RefusalLog
from bot.replies import JobReplySink
from bot.retention import FileClaims, RetentionSweeper
from bot.scheduler import Scheduler
from bot.settings import Settings, parse_size
from bot.ui import JobButton
from generation.workers import Workers

log = logging.getLogger(__name__)

EXTENSIONS = (
    "bot.exts.imagine",
    "bot.exts.info",
    "bot.exts.repost",
    "bot.exts.help",
    "bot.exts.dms",
)
# Written by the moderation work; loaded when it is there.
OPTIONAL_EXTENSIONS = ("bot.exts.moderation", "bot.exts.rank")  # moderation helper: + rank


def point_discord_at(settings: Settings) -> None:
    """Send REST calls to ``api_base`` and open the gateway at ``gateway_url`` (a proxy, or the
    fake Discord in tests). Must run before login; Route builds each URL when it is created."""
    discord.http.Route.BASE = settings.api_base.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(settings.gateway_url)


class ImagineBot(commands.Bot):
    def __init__(
        self,
        settings: Settings,
        conn: aiosqlite.Connection,
        worker: Workers,
        **options: Any,
    ) -> None:
        intents = discord.Intents.none()
        # Guilds: the guild and role caches (moderator role checks); nothing else is needed,
        # slash commands and buttons arrive without privileged intents.
        intents.guilds = True
        super().__init__(
            command_prefix=commands.when_mentioned,
            intents=intents,
            help_command=None,
            # Prompts are user text: never let them ping anyone.
            allowed_mentions=discord.AllowedMentions.none(),
            **options,
        )
        self.settings = settings
        self.conn = conn
        self.worker = worker
        self.started_at = time.time()
        self.replies = ReplyManager(
            lambda job: JobReplySink(self, conn, job, margin=settings.token_margin),
            interval=settings.edit_interval,
            channel_limit=settings.channel_edit_limit,
            channel_window=settings.channel_edit_window,
            started_at=self.started_at,
            final_attempts=settings.final_edit_attempts,
        )
        self.delivery = Delivery(
            conn,
            self.replies,
            retry_after=settings.redeliver_after,
            max_attempts=settings.redeliver_attempts,
        )
        self.delivery.dms = DmSender(conn, self)
        self.policy = PolicyChain([BlockedTermsPolicy(conn)])
        # Refused prompts logged per user per hour; the rest are counted (retention flushes).
        self.refusals = RefusalLog(conn, settings.refusals_logged_per_hour)
        # Stored files that requests being admitted are about to use (retention skips them).
        self.file_claims = FileClaims()
        self.admission = Admission(
            conn,
            self.policy,
            known_generators=settings.generators or worker.generator_names(),
            global_queue_cap=settings.global_queue_cap,
            user_limits=db.UserLimits(
                jobs_per_hour=settings.user_jobs_per_hour, waiting=settings.user_waiting
            ),
            limits=BotLimits(
                max_steps=settings.max_steps,
                sizes=tuple(parse_size(size) for size in settings.sizes),
            ),
            refusals=self.refusals,
        )
        self.scheduler = Scheduler(
            conn,
            worker,
            self.replies,
            output_dir=settings.output_dir,
            progress_every=settings.progress_every,
            max_attempts=settings.max_attempts,
            delivery=self.delivery,
        )
        self.jobs = JobService(conn, settings, self.admission, self.scheduler, self.replies)
        self.queue_watcher = QueueWatcher(
            conn, self.replies, self.jobs.eta, spacing=settings.edit_interval
        )
        self.jobs.queue_watcher = self.queue_watcher
        self.jobs.file_claims = self.file_claims
        # A finished job frees a worker: the next one starts and every waiting job moves up.
        self.scheduler.on_job_finished.append(self.queue_watcher.poke)
        self.retention = RetentionSweeper(
            conn,
            (settings.output_dir, settings.input_dir),
            max_age_days=settings.retention_days,
            max_gb=settings.retention_max_gb,
            claims=self.file_claims,
            job_rows_days=settings.job_rows_days,
            modlog_days=settings.modlog_days,
            refusals=self.refusals,
        )
        self.downloads: aiohttp.ClientSession | None = None
        self.synced_commands = "no commands synced"
        self._job_logs: set[asyncio.Task[None]] = set()
        self.scheduler.on_job_finished.append(self._log_job)
        self.tree.on_error = self._on_app_command_error
        self.tree.interaction_check = self._interaction_allowed  # type: ignore[method-assign]

    async def setup_hook(self) -> None:
        self.downloads = aiohttp.ClientSession()
        self.add_dynamic_items(JobButton)
        for name in EXTENSIONS:
            await self.load_extension(name)
        for name in OPTIONAL_EXTENSIONS:
            if importlib.util.find_spec(name) is not None:
                await self.load_extension(name)
        await self.sync_commands()
        await self.scheduler.start()
        await self.delivery.resume()
        self.retention.start()
        self.queue_watcher.start()

    async def sync_commands(self) -> None:
        if self.settings.guild_ids:
            # Guild commands appear at once; handy while setting the bot up.
            counts = []
            for guild_id in self.settings.guild_ids:
                guild = discord.Object(guild_id)
                self.tree.copy_global_to(guild=guild)
                counts.append(len(await self.tree.sync(guild=guild)))
            where = "guild " + ", ".join(map(str, self.settings.guild_ids))
            self.synced_commands = f"{max(counts)} commands synced ({where})"
        else:
            synced = await self.tree.sync()
            self.synced_commands = f"{len(synced)} commands synced (global; may take an hour)"

    async def on_ready(self) -> None:
        # on_ready comes again after a full reconnect; the line says the same then.
        log.info(
            "ready as %s (id %s), %s", self.user, self.user and self.user.id, self.synced_commands
        )

    def _log_job(self, job_id: int, outcome: str) -> None:
        task = asyncio.ensure_future(self._write_job_log(job_id, outcome))
        self._job_logs.add(task)
        task.add_done_callback(self._job_logs.discard)

    async def _write_job_log(self, job_id: int, outcome: str) -> None:
        try:
            job = await db.get_job(self.conn, job_id)
        except Exception:
            log.warning("job %s %s (its row could not be read)", job_id, outcome)
            return
        if job is not None:
            logging.getLogger("bot.jobs").info(job_line(job, outcome))

    async def close(self) -> None:
        await self.queue_watcher.close()
        await self.scheduler.close()
        await self.retention.close()
        await self.delivery.close()
        await self.replies.close()
        if self.downloads is not None:
            await self.downloads.close()
        await super().close()

    async def _interaction_allowed(self, interaction: discord.Interaction[Any]) -> bool:
        """Commands in direct messages only when the operator allows them (allow_dms), and
        only with options of the types their command declares."""
        if not await self._options_well_formed(interaction):
            return False
        if interaction.guild_id is not None or self.settings.allow_dms:
            return True
        if interaction.type is discord.InteractionType.application_command:
            try:
                await interaction.response.send_message(DMS_OFF, ephemeral=True)
            except discord.HTTPException as error:
                log.warning("could not refuse a command in a DM: %s", error)
        return False

    async def _options_well_formed(self, interaction: discord.Interaction[Any]) -> bool:
        data: Any = interaction.data
        if interaction.type is not discord.InteractionType.application_command:
            return True  # autocomplete sends partial text for every type; buttons have none
        if not isinstance(data, dict) or data.get("type", 1) != 1:
            return True  # context menus carry a target, not options
        problem = malformed_options(data, self.tree, interaction.guild)
        if problem is None:
            return True
        name = data.get("name") if isinstance(data.get("name"), str) else "the command"
        log.warning("refused a malformed /%s from user %s: %s", name, interaction.user.id, problem)
        try:
            await interaction.response.send_message(
                f"This command did not arrive as Discord sends it ({problem}); "
                f"run /{name} again from Discord's command menu.",
                ephemeral=True,
            )
        except discord.HTTPException as error:
            log.warning("could not refuse a malformed command: %s", error)
        return False

    async def _on_app_command_error(
        self, interaction: discord.Interaction[Any], error: app_commands.AppCommandError
    ) -> None:
        if isinstance(error, app_commands.CheckFailure):
            message = str(error) or "You may not use this command here."
        else:
            log.error(
                "command %s failed",
                interaction.command and interaction.command.name,
                exc_info=error,
            )
            message = "Something went wrong on the bot's side; please try again."
        try:
            if interaction.response.is_done():
                await interaction.followup.send(message, ephemeral=True)
            else:
                await interaction.response.send_message(message, ephemeral=True)
        except discord.HTTPException:
            pass
