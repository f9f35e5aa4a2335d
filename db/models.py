"""Frozen dataclasses that the db functions take and return.

Times are UNIX seconds as floats. Discord ids (users, guilds, channels, messages) are ints;
``guild_id`` is None for a job asked for in a direct message.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

JOB_KINDS = ("imagine", "reroll", "variation")
JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")
WAITING_STATUSES = ("queued", "running")
FINISHED_STATUSES = ("done", "failed", "cancelled")
MATCH_MODES = ("word", "substring")
IMAGE_CHECK_MODES = ("off", "spoiler", "withhold")
# The operator's rules for the whole bot (direct messages included) are stored like a guild's,
# under this guild id, which no Discord guild has.
GLOBAL_SCOPE = 0

# Discord interaction tokens stay valid for 15 minutes after the interaction was created.
TOKEN_LIFETIME = 15 * 60.0
# Stop using a token this long before it dies: an edit sent at 14:59 may arrive after 15:00.
TOKEN_MARGIN = 30.0


@dataclass(frozen=True)
class JobSpec:
    """What a caller asks for: who, where, and every parameter that decides the picture.

    The parameter fields mirror ``generation.GenerationRequest`` (this package may not import
    it); ``extra`` holds any further parameter as JSON-able values so nothing is lost if the
    engine grows a field before the schema does.
    """

    user_id: int
    guild_id: int | None
    channel_id: int | None
    prompt: str
    seed: int
    steps: int = 250
    width: int = 256
    height: int = 256
    generator: str = "vqgan"
    cutn: int = 32
    cut_pow: float = 1.0
    learning_rate: float | None = None
    optimizer: str = "adam"
    init_image: str | None = None
    init_weight: float = 0.0
    image_prompts: tuple[str, ...] = ()
    noise_prompts: tuple[tuple[int, float], ...] = ()
    guidance_scale: float | None = None
    skip_steps: int = 0
    kind: str = "imagine"
    parent_job_id: int | None = None
    # A dict is not hashable: leave it out of __hash__ (it still takes part in ==).
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        # Lists from callers become tuples so the spec stays hashable-ish and immutable.
        object.__setattr__(self, "image_prompts", tuple(self.image_prompts))
        object.__setattr__(
            self, "noise_prompts", tuple((int(s), float(w)) for s, w in self.noise_prompts)
        )
        object.__setattr__(self, "extra", dict(self.extra))

    def replace(self, **changes: Any) -> JobSpec:
        return dataclasses.replace(self, **changes)

    def check(self) -> None:
        """Raise ValueError for values the jobs table cannot hold. The engine's
        ``check_request`` does the finer checks (sizes, weights, known generators)."""
        if self.kind not in JOB_KINDS:
            raise ValueError(f"job kind must be one of {', '.join(JOB_KINDS)}, not {self.kind!r}")
        if not self.prompt.strip():
            raise ValueError("the prompt is empty; describe the picture you want")
        for name in ("steps", "width", "height", "cutn"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of 1 or more, not {value!r}")
        if not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be a whole number from 0 to 2**63-1, not {self.seed!r}")
        if not isinstance(self.skip_steps, int) or self.skip_steps < 0:
            raise ValueError(f"skip_steps must be 0 or more, not {self.skip_steps!r}")
        if self.kind != "imagine" and self.parent_job_id is None:
            raise ValueError(f"a {self.kind} job needs the parent_job_id it was made from")
        if not all(isinstance(p, str) for p in self.image_prompts):
            raise ValueError("image_prompts must be a list of file paths (strings)")
        try:
            json.dumps(self.extra)
        except (TypeError, ValueError) as error:
            raise ValueError(f"extra parameters must be JSON values: {error}") from None


@dataclass(frozen=True)
class Job:
    """One row of the jobs table."""

    id: int
    kind: str
    parent_job_id: int | None
    user_id: int
    guild_id: int | None
    channel_id: int | None
    status: str
    # generation parameters (see JobSpec)
    prompt: str
    seed: int
    steps: int
    width: int
    height: int
    generator: str
    cutn: int
    cut_pow: float
    learning_rate: float | None
    optimizer: str
    init_image: str | None
    init_weight: float
    image_prompts: tuple[str, ...]
    noise_prompts: tuple[tuple[int, float], ...]
    guidance_scale: float | None
    skip_steps: int
    extra: Mapping[str, Any] = field(hash=False)
    # lifecycle
    created_at: float
    started_at: float | None
    finished_at: float | None
    attempts: int  # how many times a worker took it (more than 1 after a restart)
    error: str | None
    output_path: str | None
    clip_score: float | None
    cancelled_by: int | None
    # progress
    last_step: int
    total_steps: int | None
    progress_at: float | None
    # Discord message details
    interaction_id: int | None
    # A credential for 15 minutes: kept out of repr() so a logged job never leaks it.
    interaction_token: str | None = field(repr=False)
    token_expires_at: float | None
    application_id: int | None
    reply_message_id: int | None
    channel_message_id: int | None
    # Delivery of the finished picture (migration 0003): None, 'pending', 'delivered',
    # 'undelivered'; the image check's verdict; when the retention sweep deleted the output.
    delivery: str | None = None
    delivery_attempts: int = 0
    image_verdict: str | None = None
    expired_at: float | None = None
    # When the bot stopped trying to deliver the picture (migration 0004); it is kept.
    delivery_gave_up_at: float | None = None
    # /imagine count:N (migration 0006): the rows of one request share group_id (its first
    # row's id) and are numbered group_index 0..group_size-1; None for a single picture.
    group_id: int | None = None
    group_index: int | None = None
    group_size: int = 1
    # The copy sent to the requester's DMs (migration 0007): None (not asked, or not tried
    # yet), 'sent', 'closed' (their DMs refuse the bot), 'failed'.
    dm_delivery: str | None = None

    @property
    def wants_dm(self) -> bool:
        """The requester asked for the picture in their DMs too (/imagine dm, or /dms)."""
        return bool(self.extra.get("dm")) and self.guild_id is not None

    @property
    def in_group(self) -> bool:
        """One of several pictures asked for together (delivered in one reply)."""
        return self.group_id is not None

    @property
    def waiting(self) -> bool:
        """Queued or running."""
        return self.status in WAITING_STATUSES

    @property
    def finished(self) -> bool:
        return self.status in FINISHED_STATUSES

    @property
    def duration(self) -> float | None:
        """Seconds from the (last) start to the end, once finished after running."""
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at

    def token_usable(self, now: float | None = None, margin: float = TOKEN_MARGIN) -> bool:
        """True while the interaction token can still edit the reply (with a safety margin)."""
        if self.interaction_token is None or self.token_expires_at is None:
            return False
        return (time.time() if now is None else now) < self.token_expires_at - margin

    def to_spec(self, **changes: Any) -> JobSpec:
        """The spec that made this job, with ``changes`` applied (a re-roll: new seed, kind
        'reroll', parent_job_id=this id, user_id=the presser)."""
        spec = JobSpec(
            user_id=self.user_id,
            guild_id=self.guild_id,
            channel_id=self.channel_id,
            prompt=self.prompt,
            seed=self.seed,
            steps=self.steps,
            width=self.width,
            height=self.height,
            generator=self.generator,
            cutn=self.cutn,
            cut_pow=self.cut_pow,
            learning_rate=self.learning_rate,
            optimizer=self.optimizer,
            init_image=self.init_image,
            init_weight=self.init_weight,
            image_prompts=self.image_prompts,
            noise_prompts=self.noise_prompts,
            guidance_scale=self.guidance_scale,
            skip_steps=self.skip_steps,
            kind=self.kind,
            parent_job_id=self.parent_job_id,
            extra=self.extra,
        )
        return spec.replace(**changes) if changes else spec


@dataclass(frozen=True)
class QueueEntry:
    """A waiting job and its place: 1 = the next job a worker takes, None while running."""

    job: Job
    position: int | None


@dataclass(frozen=True)
class QueueStats:
    queued: int
    running: int
    done: int
    failed: int
    cancelled: int
    users: int  # users who ever submitted a job


@dataclass(frozen=True)
class GeneratorTiming:
    """Input for an ETA: how long recent finished jobs of one generator took."""

    generator: str
    samples: int
    mean_seconds: float  # per job
    mean_seconds_per_step: float


@dataclass(frozen=True)
class HistoryEntry:
    """One finished job of a user, for /history."""

    job_id: int
    kind: str
    guild_id: int | None
    prompt: str
    seed: int
    steps: int
    width: int
    height: int
    generator: str
    clip_score: float | None
    created_at: float
    finished_at: float
    output_path: str | None


@dataclass(frozen=True)
class User:
    id: int
    first_seen: float
    last_seen: float
    jobs_submitted: int
    # Fairness bookkeeping: the serve counter when a job of this user was last taken.
    last_served_seq: int | None


@dataclass(frozen=True)
class Limits:
    """Queue limits of one guild. 0 means "none allowed" (moderators pausing the bot)."""

    jobs_per_hour: int = 20
    waiting_per_user: int = 3
    waiting_per_guild: int = 25


DEFAULT_LIMITS = Limits()


@dataclass(frozen=True)
class UserLimits:
    """Limits on one user across every guild and DM together (an operator setting): without
    them a user in many servers gets each server's quota once per server."""

    jobs_per_hour: int = 60
    waiting: int = 10


# The db layer enforces no cross-server limit unless the caller passes one (the bot does).
NO_USER_LIMITS = UserLimits(jobs_per_hour=10**9, waiting=10**9)
# The whole bot's queue (all guilds); an operator setting, not a guild one.
DEFAULT_GLOBAL_QUEUE_CAP = 200
MAX_LIMIT = 10_000


@dataclass(frozen=True)
class GuildSettings:
    guild_id: int | None
    moderator_role_id: int | None
    # Cosine similarity at or above which a prompt counts as a blocked concept; None when the
    # guild has not chosen one (the moderation policy then uses its calibrated default).
    concept_threshold: float | None
    image_check_mode: str  # 'off' | 'spoiler' | 'withhold'
    limits: Limits
    updated_by: int | None
    updated_at: float | None


@dataclass(frozen=True)
class Ban:
    guild_id: int
    user_id: int
    banned_by: int | None
    reason: str | None
    banned_at: float


@dataclass(frozen=True)
class BlockedTerm:
    id: int
    guild_id: int
    term: str  # as the moderator typed it
    normalized: str  # the caller's normalized form; unique per guild
    match_mode: str  # 'word' | 'substring'
    created_by: int | None
    created_at: float


@dataclass(frozen=True)
class BlockedConcept:
    id: int
    guild_id: int
    text: str
    embedding: tuple[float, ...]  # stored as float32 little-endian bytes
    model: str  # the model that made the embedding
    created_by: int | None
    created_at: float


@dataclass(frozen=True)
class ModlogEntry:
    """A moderator action or a refused prompt.

    ``action`` is e.g. 'ban', 'unban', 'block_term', 'unblock_term', 'block_concept',
    'unblock_concept', 'settings', 'purge', 'refused_prompt'. ``target`` is what it was done to
    (a user id as text, a term, a concept); for 'refused_prompt' it is the rule that matched
    and ``detail`` the prompt.
    """

    id: int
    guild_id: int | None
    actor_id: int | None
    action: str
    target: str | None
    detail: str | None
    at: float
