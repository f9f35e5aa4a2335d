"""Moderator commands: /block, /limits, /ban, /unban, /purge, /modlog, /modsettings.

Every command here is for moderators (see ``bot.moderation.permissions``): the cog's
``interaction_check`` verifies it on every call, server side, whatever Discord's
``default_member_permissions`` shows or hides. All answers are ephemeral: only the moderator
sees lists of blocked terms and refused prompts.

Loading this extension also plugs the moderation into the bot: the blocked-concept policy joins
the admission chain (``bot.policy``) and the image check is given to the scheduler.

No ``from __future__ import annotations``: discord.py reads the command signatures' annotations
as real objects.
"""

import logging
from typing import TYPE_CHECKING, Any

import aiosqlite
import discord
from discord import app_commands
from discord.ext import commands

import db
from bot import render
from bot.moderation.image_check import FLAGGED_ACTION, ConceptImageCheck
from bot.moderation.normalize import normalize_term, shown_text
from bot.moderation.permissions import (
    MODERATOR_ROLE_REFUSAL,
    NOT_IN_A_SERVER,
    Caller,
    is_moderator,
    may_change_moderator_role,
    not_moderator_message,
)
from bot.moderation.policy import ConceptEmbedder, ConceptPolicy, EmbeddingUnavailable
from bot.moderation.terms import BlockedTerm as MatchTerm

if TYPE_CHECKING:
    from bot.client import ImagineBot

log = logging.getLogger(__name__)

MODERATOR_PERMISSIONS = discord.Permissions(manage_messages=True)
# Adding a concept waits for the GPU thread (between two steps of the running job); the
# interaction is deferred first, so this may be generous.
CONCEPT_EMBED_TIMEOUT = 60.0
LIST_LIMIT = 3900  # characters of an embed description (Discord allows 4096)
MODLOG_MAX = 25


class NotModerator(app_commands.CheckFailure):
    """Raised by the cog's check; the bot's error handler shows the message ephemerally."""


def caller_of(interaction: discord.Interaction[Any]) -> Caller:
    """The acting member's permission bits in this channel and their role ids."""
    user = interaction.user
    # The ids from the interaction payload itself: Member.roles drops roles missing from the
    # guild cache, and a freshly created moderator role may not be there yet.
    role_ids = getattr(user, "_roles", ()) if isinstance(user, discord.Member) else ()
    return Caller.of(user.id, interaction.permissions.value, role_ids)


def code(text: str, limit: int = 200) -> str:
    """User text shown verbatim in inline code (backticks cannot close it early; bidi controls,
    which could draw it in another order than it was matched, are removed)."""
    return "`" + render.shorten(shown_text(text).replace("`", "ˋ"), limit) + "`"


def join_lines(lines: list[str], limit: int = LIST_LIMIT) -> str:
    """Lines joined up to ``limit`` characters, with a count of the ones left out."""
    out: list[str] = []
    used = 0
    for index, line in enumerate(lines):
        if used + len(line) + 1 > limit - 40:
            out.append(f"…and {len(lines) - index} more.")
            break
        out.append(line)
        used += len(line) + 1
    return "\n".join(out)


# ---- pure text builders (tested without Discord) -------------------------------------------


def limits_text(settings: db.GuildSettings, defaults: db.Limits, global_cap: int) -> str:
    def line(label: str, value: int, default: int) -> str:
        note = " (default)" if value == default else f" (default {default})"
        shown = "none allowed" if value == 0 else str(value)
        return f"**{label}**: {shown}{note}"

    limits = settings.limits
    return "\n".join(
        [
            line("Pictures per user per hour", limits.jobs_per_hour, defaults.jobs_per_hour),
            line("Waiting pictures per user", limits.waiting_per_user, defaults.waiting_per_user),
            line(
                "Waiting pictures in this server",
                limits.waiting_per_guild,
                defaults.waiting_per_guild,
            ),
            f"**Whole bot queue**: {global_cap} (set by the bot's operator)",
            "",
            "Waiting counts queued and painting pictures. The queue takes users in turn, so "
            "one user's many pictures delay another's first by at most one picture. "
            "Re-rolls and variations count against whoever presses the button.",
        ]
    )


def modlog_line(entry: db.ModlogEntry) -> str:
    """One moderators' log entry as a line of text."""
    when = f"<t:{int(entry.at)}:R>"
    actor = f"<@{entry.actor_id}>" if entry.actor_id is not None else "the bot"
    target = entry.target or ""
    detail = entry.detail or ""
    action = entry.action
    if action == "refused_prompt":
        text = f"{actor}'s prompt was refused ({code(target, 80)}): {code(detail)}"
    elif action == FLAGGED_ACTION:
        text = f"{actor}'s picture was flagged ({code(target, 80)}): {code(detail)}"
    elif action == "ban":
        reason = f" ({code(detail)})" if detail else ""
        text = f"{actor} banned <@{target}>{reason}"
    elif action == "unban":
        text = f"{actor} unbanned <@{target}>"
    elif action == "purge":
        text = f"{actor} purged <@{target}>'s queue ({detail})"
    elif action == "block_term":
        text = f"{actor} blocked the term {code(target)} ({detail or 'word'} match)"
    elif action == "unblock_term":
        text = f"{actor} unblocked the term {code(target)}"
    elif action == "block_concept":
        text = f"{actor} blocked the concept {code(target)}"
    elif action == "unblock_concept":
        text = f"{actor} unblocked the concept {code(target)}"
    elif action == "settings":
        text = f"{actor} changed settings: {code(detail)}"
    else:
        text = f"{actor} {action} {code(target) if target else ''} {code(detail) if detail else ''}"
    return f"{when} {text.strip()}"


def settings_text(
    settings: db.GuildSettings, default_threshold: float, image_threshold: float
) -> str:
    role = (
        f"<@&{settings.moderator_role_id}>"
        if settings.moderator_role_id is not None
        else "none (Manage Messages only)"
    )
    if settings.concept_threshold is None:
        threshold = f"{default_threshold:.2f} (default)"
    else:
        threshold = f"{settings.concept_threshold:.2f}"
    return "\n".join(
        [
            f"**Moderator role**: {role}",
            f"**Concept threshold** (prompts): {threshold}; higher refuses fewer prompts",
            f"**Image check**: {settings.image_check_mode} "
            f"(images flagged at similarity {image_threshold:.2f} or more)",
        ]
    )


# ---- the cog -----------------------------------------------------------------------------------


class ModerationCog(commands.Cog):
    block = app_commands.Group(
        name="block",
        description="Blocked prompt terms and concepts in this server (moderators)",
        default_permissions=MODERATOR_PERMISSIONS,
        guild_only=True,
    )
    block_concept = app_commands.Group(
        name="concept",
        description="Blocked concepts: prompts close in meaning are refused",
        parent=block,
    )

    def __init__(
        self,
        bot: "ImagineBot",
        embedder: ConceptEmbedder,
        policy: ConceptPolicy,
        image_check: ConceptImageCheck,
    ) -> None:
        self.bot = bot
        self.embedder = embedder
        self.policy = policy
        self.image_check = image_check

    async def cog_load(self) -> None:
        self.bot.policy.add(self.policy)
        self.bot.scheduler.image_check = self.image_check

    async def cog_unload(self) -> None:
        if self.policy in self.bot.policy.policies:
            self.bot.policy.policies.remove(self.policy)
        if self.bot.scheduler.image_check is self.image_check:
            self.bot.scheduler.image_check = None

    @property
    def conn(self) -> aiosqlite.Connection:
        return self.bot.conn

    async def interaction_check(self, interaction: discord.Interaction[Any]) -> bool:
        """Moderators only, checked on every call (not only hidden by Discord)."""
        if interaction.guild_id is None:
            raise NotModerator(NOT_IN_A_SERVER)
        settings = await db.get_guild_settings(self.conn, interaction.guild_id)
        if is_moderator(caller_of(interaction), settings.moderator_role_id):
            return True
        command = interaction.command.qualified_name.split()[0] if interaction.command else "this"
        log.info("user %s refused /%s: not a moderator", interaction.user.id, command)
        raise NotModerator(not_moderator_message(command, settings.moderator_role_id))

    async def _reply(self, interaction: discord.Interaction[Any], content: str) -> None:
        if interaction.response.is_done():
            await interaction.edit_original_response(content=content)
        else:
            await interaction.response.send_message(content, ephemeral=True)

    async def _reply_embed(
        self, interaction: discord.Interaction[Any], title: str, description: str
    ) -> None:
        embed = discord.Embed(title=title, description=description, color=render.COLOR_QUEUED)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    # ---- /block ------------------------------------------------------------------------------

    @block.command(name="add", description="Refuse prompts that contain a word or phrase")
    @app_commands.describe(
        term="The word or phrase; case, accents, look-alike letters and spacing tricks are seen through",
        substring="Also match inside longer words (default: whole words only)",
    )
    async def block_add(
        self,
        interaction: discord.Interaction,
        term: app_commands.Range[str, 1, 100],
        substring: bool = False,
    ) -> None:
        assert interaction.guild_id is not None
        mode = "substring" if substring else "word"
        try:
            normalized = MatchTerm(term, mode).normalized
        except ValueError as error:
            await self._reply(interaction, f"That term cannot be blocked: {error}")
            return
        try:
            await db.add_blocked_term(
                self.conn,
                interaction.guild_id,
                term.strip(),
                normalized,
                match_mode=mode,
                actor_id=interaction.user.id,
            )
        except db.AlreadyExists as error:
            await self._reply(interaction, f"Nothing changed: {error}.")
            return
        how = "anywhere, also inside longer words" if substring else "as a whole word"
        await self._reply(
            interaction,
            f"Blocked {code(term)} ({how}). Prompts containing it are refused privately and "
            "logged in /modlog.",
        )

    @block.command(name="remove", description="Stop refusing a blocked word or phrase")
    @app_commands.describe(term="The blocked word or phrase, as listed by /block list")
    async def block_remove(
        self, interaction: discord.Interaction, term: app_commands.Range[str, 1, 100]
    ) -> None:
        assert interaction.guild_id is not None
        try:
            normalized = normalize_term(term)
        except ValueError as error:
            await self._reply(interaction, f"That is not a blockable term: {error}")
            return
        removed = await db.remove_blocked_term(
            self.conn, interaction.guild_id, normalized, actor_id=interaction.user.id
        )
        if removed is None:
            await self._reply(interaction, f"{code(term)} is not blocked here; see /block list.")
            return
        await self._reply(interaction, f"Unblocked {code(removed.term)}.")

    @block.command(name="list", description="The blocked words, phrases and concepts here")
    async def block_list(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        terms = await db.list_blocked_terms(self.conn, interaction.guild_id)
        concepts = await db.list_blocked_concepts(self.conn, interaction.guild_id)
        lines = [
            f"{code(row.term, 100)}" + (" (substring)" if row.match_mode == "substring" else "")
            for row in terms
        ] or ["No blocked terms. Add one with /block add."]
        if concepts:
            lines.append("")
            lines.append(f"**Concepts** ({len(concepts)}): see /block concept list")
        await self._reply_embed(interaction, f"Blocked terms ({len(terms)})", join_lines(lines))

    # ---- /block concept ------------------------------------------------------------------------

    @block_concept.command(name="add", description="Refuse prompts close in meaning to a concept")
    @app_commands.describe(
        concept="Describe what to block in a few words, e.g. 'graphic violence and gore'"
    )
    async def concept_add(
        self, interaction: discord.Interaction, concept: app_commands.Range[str, 1, 200]
    ) -> None:
        assert interaction.guild_id is not None
        text = " ".join(concept.split())
        if not text:
            await self._reply(interaction, "Describe the concept in a few words.")
            return
        # Embedding waits for the GPU thread: answer "thinking" first.
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            [vector] = await self.embedder.embed([text], max_wait=CONCEPT_EMBED_TIMEOUT)
        except EmbeddingUnavailable as error:
            log.warning("could not embed a concept: %s", error)
            await self._reply(
                interaction, "The GPU could not embed the concept just now; try again shortly."
            )
            return
        try:
            await db.add_blocked_concept(
                self.conn,
                interaction.guild_id,
                text,
                vector.tolist(),
                self.embedder.model,
                actor_id=interaction.user.id,
            )
        except db.AlreadyExists as error:
            await self._reply(interaction, f"Nothing changed: {error}.")
            return
        threshold = await self.policy.threshold(interaction.guild_id)
        await self._reply(
            interaction,
            f"Blocked the concept {code(text)}. Prompts whose CLIP meaning is at least "
            f"{threshold:.2f} similar to it are refused (change it with /modsettings "
            "concept_threshold).",
        )

    @block_concept.command(name="remove", description="Stop refusing prompts close to a concept")
    @app_commands.describe(concept="The concept, as listed by /block concept list")
    async def concept_remove(
        self, interaction: discord.Interaction, concept: app_commands.Range[str, 1, 200]
    ) -> None:
        assert interaction.guild_id is not None
        removed = await db.remove_blocked_concept(
            self.conn, interaction.guild_id, " ".join(concept.split()), actor_id=interaction.user.id
        )
        if removed is None:
            await self._reply(
                interaction, f"{code(concept)} is not blocked here; see /block concept list."
            )
            return
        await self._reply(interaction, f"Unblocked the concept {code(removed.text)}.")

    @block_concept.command(name="list", description="The blocked concepts here")
    async def concept_list(self, interaction: discord.Interaction) -> None:
        assert interaction.guild_id is not None
        rows = await db.list_blocked_concepts(self.conn, interaction.guild_id)
        threshold = await self.policy.threshold(interaction.guild_id)
        lines = [code(row.text) for row in rows] or [
            "No blocked concepts. Add one with /block concept add."
        ]
        lines += ["", f"Prompts at least {threshold:.2f} similar to one of these are refused."]
        await self._reply_embed(interaction, f"Blocked concepts ({len(rows)})", join_lines(lines))

    # ---- /limits ------------------------------------------------------------------------------

    @app_commands.command(name="limits", description="Show or set this server's queue limits")
    @app_commands.describe(
        jobs_per_hour="Pictures one user may ask for per hour (0: none)",
        waiting_per_user="Pictures one user may have waiting or painting at once (0: none)",
        waiting_per_guild="Pictures this whole server may have waiting or painting (0: none)",
        reset="Put all three back to the defaults",
    )
    @app_commands.default_permissions(manage_messages=True)
    @app_commands.guild_only()
    async def limits(
        self,
        interaction: discord.Interaction,
        jobs_per_hour: app_commands.Range[int, 0, 10000] | None = None,
        waiting_per_user: app_commands.Range[int, 0, 10000] | None = None,
        waiting_per_guild: app_commands.Range[int, 0, 10000] | None = None,
        reset: bool = False,
    ) -> None:
        assert interaction.guild_id is not None
        changes: dict[str, Any] = {}
        if reset:
            changes = dict.fromkeys(("jobs_per_hour", "waiting_per_user", "waiting_per_guild"))
        for name, value in (
            ("jobs_per_hour", jobs_per_hour),
            ("waiting_per_user", waiting_per_user),
            ("waiting_per_guild", waiting_per_guild),
        ):
            if value is not None:
                changes[name] = value
        found = await self._change_settings(interaction, changes)
        if found is None:
            return
        settings, changed = found
        title = "Limits updated" if changed else "Limits in this server"
        text = limits_text(settings, db.DEFAULT_LIMITS, self.bot.settings.global_queue_cap)
        await self._reply_embed(interaction, title, text)

    # ---- /ban /unban /purge ------------------------------------------------------------------

    @app_commands.command(name="ban", description="Stop a user from using the bot here")
    @app_commands.describe(user="Who to ban", reason="Why (shown to them when they try)")
    @app_commands.default_permissions(manage_messages=True)
    @app_commands.guild_only()
    async def ban(
        self,
        interaction: discord.Interaction,
        user: discord.User,
        reason: app_commands.Range[str, 1, 300] | None = None,
    ) -> None:
        assert interaction.guild_id is not None
        if user.id == interaction.user.id:
            await self._reply(interaction, "You cannot ban yourself.")
            return
        await db.ban_user(
            self.conn, interaction.guild_id, user.id, actor_id=interaction.user.id, reason=reason
        )
        # The ban is committed first, so no new job of theirs can slip in before the purge.
        cancelled = await db.cancel_user_jobs(
            self.conn,
            interaction.guild_id,
            user.id,
            include_running=True,
            actor_id=interaction.user.id,
        )
        await self._reply(
            interaction,
            f"Banned <@{user.id}> from the bot here; {_pictures(len(cancelled))} cancelled.",
        )
        await self._show_cancelled(cancelled, interaction.user.id)

    @app_commands.command(name="unban", description="Let a banned user use the bot here again")
    @app_commands.describe(user="Who to unban")
    @app_commands.default_permissions(manage_messages=True)
    @app_commands.guild_only()
    async def unban(self, interaction: discord.Interaction, user: discord.User) -> None:
        assert interaction.guild_id is not None
        lifted = await db.unban_user(
            self.conn, interaction.guild_id, user.id, actor_id=interaction.user.id
        )
        if lifted:
            await self._reply(interaction, f"Unbanned <@{user.id}>.")
        else:
            await self._reply(interaction, f"<@{user.id}> was not banned here.")

    @app_commands.command(name="purge", description="Cancel a user's waiting pictures")
    @app_commands.describe(
        user="Whose pictures to cancel", include_running="Also stop the one painting now"
    )
    @app_commands.default_permissions(manage_messages=True)
    @app_commands.guild_only()
    async def purge(
        self, interaction: discord.Interaction, user: discord.User, include_running: bool = False
    ) -> None:
        assert interaction.guild_id is not None
        cancelled = await db.cancel_user_jobs(
            self.conn,
            interaction.guild_id,
            user.id,
            include_running=include_running,
            actor_id=interaction.user.id,
        )
        await self._reply(interaction, f"Cancelled {_pictures(len(cancelled))} of <@{user.id}>.")
        await self._show_cancelled(cancelled, interaction.user.id)

    async def _show_cancelled(self, jobs: list[db.Job], by: int) -> None:
        """Stop the running one and mark the others' messages "cancelled" (after the answer,
        which must come within Discord's 3 seconds)."""
        if not jobs:
            return
        try:
            await self.bot.jobs.cancelled_elsewhere(jobs, by=by)
        except Exception:
            log.exception("could not update the messages of %d cancelled job(s)", len(jobs))

    # ---- /modlog -----------------------------------------------------------------------------

    @app_commands.command(name="modlog", description="Recent moderator actions and refused prompts")
    @app_commands.describe(count="How many entries (newest first)", kind="Which entries")
    @app_commands.choices(
        kind=[
            app_commands.Choice(name="everything", value="all"),
            app_commands.Choice(name="refused prompts and flagged pictures", value="refused"),
            app_commands.Choice(name="moderator actions", value="actions"),
        ]
    )
    @app_commands.default_permissions(manage_messages=True)
    @app_commands.guild_only()
    async def modlog(
        self,
        interaction: discord.Interaction,
        count: app_commands.Range[int, 1, MODLOG_MAX] = 10,
        kind: str | None = None,
    ) -> None:
        assert interaction.guild_id is not None
        refused = ("refused_prompt", FLAGGED_ACTION)
        actions = {
            "refused": refused,
            "actions": (
                "ban",
                "unban",
                "purge",
                "block_term",
                "unblock_term",
                "block_concept",
                "unblock_concept",
                "settings",
            ),
        }.get(kind or "all")
        entries = await db.recent_modlog(
            self.conn, interaction.guild_id, limit=count, actions=actions
        )
        lines = [modlog_line(entry) for entry in entries] or ["Nothing logged yet."]
        await self._reply_embed(interaction, "Moderation log", join_lines(lines))

    # ---- /modsettings ------------------------------------------------------------------------

    @app_commands.command(
        name="modsettings", description="Moderator role, concept threshold and image check"
    )
    @app_commands.describe(
        moderator_role="Members with this role may use the moderator commands",
        concept_threshold="Similarity (0-1) at which a prompt counts as a blocked concept; higher refuses fewer",
        image_check="Check finished pictures against the blocked concepts",
        reset="Put one setting back to its default",
    )
    @app_commands.choices(
        image_check=[
            app_commands.Choice(name="off", value="off"),
            app_commands.Choice(name="post flagged pictures as spoilers", value="spoiler"),
            app_commands.Choice(name="withhold flagged pictures", value="withhold"),
        ],
        reset=[
            app_commands.Choice(name="moderator role (none)", value="moderator_role_id"),
            app_commands.Choice(name="concept threshold", value="concept_threshold"),
            app_commands.Choice(name="image check (off)", value="image_check_mode"),
        ],
    )
    @app_commands.default_permissions(manage_messages=True)
    @app_commands.guild_only()
    async def modsettings(
        self,
        interaction: discord.Interaction,
        moderator_role: discord.Role | None = None,
        concept_threshold: app_commands.Range[float, 0.0, 1.0] | None = None,
        image_check: str | None = None,
        reset: str | None = None,
    ) -> None:
        assert interaction.guild_id is not None
        changes: dict[str, Any] = {}
        if reset is not None:
            changes[reset] = None
        if moderator_role is not None:
            changes["moderator_role_id"] = moderator_role.id
        if concept_threshold is not None:
            changes["concept_threshold"] = concept_threshold
        if image_check is not None:
            changes["image_check_mode"] = image_check
        if "moderator_role_id" in changes and not may_change_moderator_role(caller_of(interaction)):
            await self._reply(interaction, MODERATOR_ROLE_REFUSAL)
            return
        found = await self._change_settings(interaction, changes)
        if found is None:
            return
        settings, changed = found
        title = "Settings updated" if changed else "Moderation settings"
        text = settings_text(settings, self.policy.default_threshold, self.image_check.threshold)
        await self._reply_embed(interaction, title, text)

    async def _change_settings(
        self, interaction: discord.Interaction, changes: dict[str, Any]
    ) -> tuple[db.GuildSettings, bool] | None:
        """Apply ``changes`` to the guild's settings (or just read them when there are none).
        Returns the settings and whether anything changed; None after telling the moderator
        why a value was refused."""
        assert interaction.guild_id is not None
        if not changes:
            return await db.get_guild_settings(self.conn, interaction.guild_id), False
        try:
            settings = await db.set_guild_settings(
                self.conn, interaction.guild_id, actor_id=interaction.user.id, **changes
            )
        except ValueError as error:
            await self._reply(interaction, f"Nothing changed: {error}.")
            return None
        return settings, True


def _pictures(count: int) -> str:
    return "1 picture" if count == 1 else f"{count} pictures"


async def setup(bot: "ImagineBot") -> None:
    # The embeddings of blocked concepts are tied to the CLIP model that made them.
    model = bot.worker.describe().get("perceptor") or "clip"
    embedder = ConceptEmbedder(bot.worker, model)
    policy = ConceptPolicy(bot.conn, embedder)
    image_check = ConceptImageCheck(
        bot.conn,
        bot.worker,
        # An operator setting when the bot's Settings offers one; the documented default else.
        threshold=bot.settings.image_check_threshold,
        global_mode=bot.settings.image_check_global,
    )
    await bot.add_cog(ModerationCog(bot, embedder, policy, image_check))
