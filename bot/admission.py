"""Admission: may this request become a job? A small pipeline, each step able to refuse.

1. ``check_request`` (the engine's own validation of sizes, steps, prompt syntax, generator);
2. the prompt policy (``PromptPolicy.check_prompt``): blocked terms here; the moderation
   extension adds concept checks by wrapping or replacing the policy (see ``PolicyChain``);
3. the database's atomic ``create_job``: bans and the guild's limits are checked and the row
   is inserted in one transaction, so two commands at the same instant cannot both slip
   under a limit.

Every refusal is a ``Refused`` exception carrying a ``Refusal`` whose ``message`` is written for
the user (shown ephemerally). A policy refusal also names the ``rule`` that matched; the rule is
recorded for moderators and never shown to anyone else, and the message never repeats the
blocked term.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import aiosqlite

import db
from bot.coalesce import NextRead
from bot.moderation.terms import BlockedTerm as MatchTerm
from bot.moderation.terms import find_blocked
from bot.refusals import RefusalLog
from db import Job, JobSpec
from generation.errors import BadRequest
from generation.request import GenerationRequest, check_request

log = logging.getLogger(__name__)

# What GenerationRequest uses when the job row leaves guidance_scale unset.
_DEFAULT_GUIDANCE = GenerationRequest.__dataclass_fields__["guidance_scale"].default


@dataclass(frozen=True)
class Refusal:
    """Why a request was not admitted. ``message`` is for the user; ``rule`` (e.g.
    ``"term:<normalized>"``) is for the moderators' log only."""

    message: str
    rule: str | None = None


class Refused(Exception):
    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal

    @property
    def message(self) -> str:
        return self.refusal.message


class PromptPolicy(Protocol):
    async def check_prompt(self, guild_id: int | None, prompt: str) -> Refusal | None: ...


BLOCKED_MESSAGE = (
    "Your prompt contains a word or phrase that this server's moderators have blocked, so no "
    "picture was made. Rephrase it and try again."
)
GLOBALLY_BLOCKED_MESSAGE = (
    "Your prompt contains a word or phrase that this bot does not paint anywhere, so no "
    "picture was made. Rephrase it and try again."
)


class BlockedTermsPolicy:
    """Refuses prompts that contain one of the guild's blocked terms (through the moderation
    matcher, which sees through case, accents, look-alike letters, spacing and digit swaps).

    The term list is read for every prompt, so a term blocked a moment ago applies at once;
    prompts of a burst share reads (``NextRead``) instead of queueing one read each."""

    def __init__(self, conn: aiosqlite.Connection) -> None:
        self._conn = conn
        self._reads: NextRead[int, list[MatchTerm]] = NextRead(self._read_terms)

    async def _read_terms(self, guild_id: int) -> list[MatchTerm]:
        rows = await db.list_blocked_terms(self._conn, guild_id)
        return [MatchTerm(row.normalized, row.match_mode) for row in rows]  # type: ignore[arg-type]

    async def terms(self, guild_id: int) -> list[MatchTerm]:
        return await self._reads.get(guild_id)

    async def check_prompt(self, guild_id: int | None, prompt: str) -> Refusal | None:
        # The guild's terms, then the operator's global ones (db.GLOBAL_SCOPE), which apply
        # everywhere, direct messages included.
        scopes = [(db.GLOBAL_SCOPE, GLOBALLY_BLOCKED_MESSAGE)]
        if guild_id is not None:
            scopes.insert(0, (guild_id, BLOCKED_MESSAGE))
        for scope, message in scopes:
            terms = await self.terms(scope)
            if not terms:
                continue
            # Off the loop: compiling a guild's list for the first time takes a few hundred
            # milliseconds for hundreds of terms, and a long hostile prompt some ms more.
            hit = await asyncio.to_thread(find_blocked, prompt, terms)
            if hit is not None:
                return Refusal(message, rule=f"term:{hit.normalized}")
        return None


class PolicyChain:
    """Runs policies in order; the first refusal wins. The moderation extension appends its
    concept policy with ``add``."""

    def __init__(self, policies: Sequence[PromptPolicy] = ()) -> None:
        self.policies: list[PromptPolicy] = list(policies)

    def add(self, policy: PromptPolicy) -> None:
        self.policies.append(policy)

    def invalidate(self, guild_id: int | None = None) -> None:
        """Tell every policy that keeps a cache that a guild's rules changed."""
        for policy in self.policies:
            invalidate = getattr(policy, "invalidate", None)
            if callable(invalidate):
                invalidate(guild_id)

    async def check_prompt(self, guild_id: int | None, prompt: str) -> Refusal | None:
        for policy in self.policies:
            refusal = await policy.check_prompt(guild_id, prompt)
            if refusal is not None:
                return refusal
        return None


def request_from_spec(spec: JobSpec | Job, *, progress_every: int = 10) -> GenerationRequest:
    """The engine request a job (or a job spec) stands for."""
    return GenerationRequest(
        prompt=spec.prompt,
        seed=spec.seed,
        steps=spec.steps,
        width=spec.width,
        height=spec.height,
        generator=spec.generator,
        cutn=spec.cutn,
        cut_pow=spec.cut_pow,
        learning_rate=spec.learning_rate,
        optimizer=spec.optimizer,
        init_image=spec.init_image,
        init_weight=spec.init_weight,
        image_prompts=tuple(spec.image_prompts),
        noise_prompts=tuple(spec.noise_prompts),
        guidance_scale=_DEFAULT_GUIDANCE if spec.guidance_scale is None else spec.guidance_scale,
        skip_steps=spec.skip_steps,
        # Kept in the row's extra parameters (the schema has no column for it).
        strength=_optional_float(spec.extra.get("strength")),
        progress_every=progress_every,
    )


def _optional_float(value: object) -> float | None:
    return None if value is None else float(value)  # type: ignore[arg-type]


@dataclass(frozen=True)
class BotLimits:
    """The operator's limits on what users may ask for, checked by the bot itself: Discord's
    option ranges are only a hint to the app (a modified client sends anything), and a re-roll
    or variation repeats an old job that may be above a limit lowered since.

    ``sizes`` empty: any size the engine takes."""

    max_steps: int | None = None
    sizes: tuple[tuple[int, int], ...] = ()
    max_prompt_chars: int = 1000
    # /imagine count: pictures of one prompt asked for at once.
    max_count: int = 4

    def check_count(self, count: int) -> None:
        """Raise Refused unless 1 <= count <= max_count."""
        if not 1 <= count <= self.max_count:
            raise Refused(
                Refusal(
                    f"count must be from 1 to {self.max_count} pictures on this bot, not "
                    f"{count}. Ask for fewer pictures."
                )
            )

    def check(self, spec: JobSpec) -> None:
        """Raise Refused with a message that says what to ask for instead."""
        again = spec.kind in ("reroll", "variation")
        if len(spec.prompt) > self.max_prompt_chars:
            raise Refused(
                Refusal(
                    f"The prompt has {len(spec.prompt)} characters; this bot takes at most "
                    f"{self.max_prompt_chars}. Shorten it and try again."
                )
            )
        if self.max_steps is not None and spec.steps > self.max_steps:
            if again:
                message = (
                    f"This picture was painted with {spec.steps} steps, more than this bot's "
                    f"limit of {self.max_steps} now, so it cannot be made again as it was. Run "
                    f"/imagine with steps:{self.max_steps} or fewer."
                )
            else:
                message = (
                    f"Steps must be from 1 to {self.max_steps} on this bot, not {spec.steps}. "
                    "Ask for fewer steps."
                )
            raise Refused(Refusal(message))
        size = (spec.width, spec.height)
        if self.sizes and size not in self.sizes:
            offered = ", ".join(f"{w}x{h}" for w, h in self.sizes)
            first = (
                f"This picture is {spec.width}x{spec.height}, a size this bot no longer offers"
                if again
                else f"The size {spec.width}x{spec.height} is not offered on this bot"
            )
            raise Refused(Refusal(f"{first}; choose one of: {offered}."))


class Admission:
    """The three steps above. ``admit`` runs all three and returns the queued job.
    ``precheck`` runs them without inserting, for a command that must do costly work first
    (download attachments): parameters, then bans and limits (read only), then the policy."""

    def __init__(
        self,
        conn: aiosqlite.Connection,
        policy: PromptPolicy,
        *,
        known_generators: tuple[str, ...] = (),
        global_queue_cap: int = db.DEFAULT_GLOBAL_QUEUE_CAP,
        user_limits: db.UserLimits = db.NO_USER_LIMITS,
        limits: BotLimits | None = None,
        refusals: RefusalLog | None = None,
    ) -> None:
        self._conn = conn
        self.policy = policy
        self.refusals = refusals
        self.limits = limits if limits is not None else BotLimits()
        self._known_generators = known_generators
        self._global_queue_cap = global_queue_cap
        # One user's limits across every server and DM (the operator's settings).
        self._user_limits = user_limits
        # A burst of commands commits its job rows together (group commit), each caller
        # answered once its own row is stored.
        self._admitter = db.JobAdmitter(
            conn, global_queue_cap=global_queue_cap, user_limits=user_limits
        )

    def check_parameters(self, spec: JobSpec) -> None:
        """Step 1: the bot's limits, then the engine's checks; raises Refused with its
        message."""
        self.limits.check(spec)
        try:
            spec.check()
            check_request(request_from_spec(spec), known_generators=self._known_generators)
        except (BadRequest, ValueError) as error:
            raise Refused(Refusal(_sentence(str(error)))) from None

    async def check_policy(self, spec: JobSpec) -> None:
        """Step 2: the prompt policy. A refusal is recorded for the guild's moderators."""
        refusal = await self.policy.check_prompt(spec.guild_id, spec.prompt)
        if refusal is None:
            return
        if refusal.rule is not None:
            try:
                if self.refusals is not None:
                    # At most so many rows per user per hour; the rest are only counted.
                    await self.refusals.record(
                        spec.guild_id, spec.user_id, spec.prompt, refusal.rule
                    )
                else:
                    await db.record_refused_prompt(
                        self._conn, spec.guild_id, spec.user_id, spec.prompt, refusal.rule
                    )
            except Exception:
                log.exception("could not record a refused prompt")
        raise Refused(refusal)

    async def check_standing(self, spec: JobSpec) -> None:
        """Bans and limits, read only (``create_job`` checks them again with the insert)."""
        try:
            await db.check_admissible(
                self._conn,
                spec,
                global_queue_cap=self._global_queue_cap,
                user_limits=self._user_limits,
            )
        except db.AdmissionRefused as error:
            raise Refused(Refusal(error.message)) from None

    async def precheck(self, spec: JobSpec) -> None:
        """Everything ``admit`` checks, nothing stored. Bans and limits come before the
        policy: a banned or limited user costs no download, no file and no embedding."""
        self.check_parameters(spec)
        await self.check_standing(spec)
        await self.check_policy(spec)

    async def admit_group(self, specs: Sequence[JobSpec]) -> list[Job]:
        """Several pictures of one prompt (``/imagine count:N``): checked like one job (the
        count too), each counted against the user's limits, all saved or none."""
        self.limits.check_count(len(specs))
        for spec in specs:
            self.check_parameters(spec)
        await self.check_policy(specs[0])
        try:
            return await db.admit_group(
                self._conn,
                specs,
                global_queue_cap=self._global_queue_cap,
                user_limits=self._user_limits,
            )
        except db.AdmissionRefused as error:
            raise Refused(Refusal(error.message)) from None
        except ValueError as error:
            raise Refused(Refusal(_sentence(str(error)))) from None

    async def admit(self, spec: JobSpec) -> Job:
        """Steps 1-3; the returned job is saved as ``queued``."""
        self.check_parameters(spec)
        await self.check_policy(spec)
        try:
            return await self._admitter.create_job(spec)
        except db.AdmissionRefused as error:
            raise Refused(Refusal(error.message)) from None


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return "The request is not valid."
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."
