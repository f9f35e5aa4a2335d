"""Admitting jobs: bans and limits checked and the row inserted under one write lock, for one
job (``create_job``) or for a burst of them in one transaction (``JobAdmitter``).

A burst of 200 /imagine would otherwise take 200 transactions in turn through the one database
thread, each with its BEGIN and COMMIT (and the WAL pages a commit writes). ``JobAdmitter`` is a
group commit: while one batch's transaction is in flight, the admissions that arrive wait and
then go together in the next one. Every caller is answered only once the transaction that holds
its row has committed, so "recorded before answered" holds as it did one job at a time.

Inside a batch the rows are admitted one after another under the same ``BEGIN IMMEDIATE``: each
one's limits are counted with the rows before it already inserted, so limits hold exactly as if
the jobs had come one by one. A row that is refused (a ban, a limit, a bad parent job) leaves
nothing behind (its writes are in a savepoint), and its error goes to its own caller only; the
others are committed.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass

import aiosqlite

from db._rows import fetch_all, fetch_job, job_from_row, now_or, placeholders
from db.errors import AdmissionRefused, UserBanned
from db.limits import check_limits
from db.models import (
    DEFAULT_GLOBAL_QUEUE_CAP,
    DEFAULT_LIMITS,
    NO_USER_LIMITS,
    GuildSettings,
    Job,
    JobSpec,
    Limits,
    UserLimits,
)
from db.moderation import fetch_ban
from db.settings import fetch_settings
from db.transaction import transaction

_SPEC_COLUMNS = (
    "kind",
    "parent_job_id",
    "user_id",
    "guild_id",
    "channel_id",
    "prompt",
    "seed",
    "steps",
    "width",
    "height",
    "generator",
    "cutn",
    "cut_pow",
    "learning_rate",
    "optimizer",
    "init_image",
    "init_weight",
    "image_prompts",
    "noise_prompts",
    "guidance_scale",
    "skip_steps",
    "extra",
)
_INSERT_COLUMNS = (*_SPEC_COLUMNS, "status", "created_at")
# RETURNING hands back the new row in the same hop to the database thread as the insert.
_INSERT = (
    f"INSERT INTO jobs ({', '.join(_INSERT_COLUMNS)}) VALUES ({placeholders(_INSERT_COLUMNS)})"
    " RETURNING *"
)
_COUNT_USER = (
    "INSERT INTO users (id, first_seen, last_seen, jobs_submitted) VALUES (?, ?, ?, 1)"
    " ON CONFLICT (id) DO UPDATE SET last_seen = excluded.last_seen,"
    " jobs_submitted = jobs_submitted + 1"
)


def _spec_values(spec: JobSpec) -> tuple[object, ...]:
    encoded = {
        "image_prompts": json.dumps(list(spec.image_prompts)),
        "noise_prompts": json.dumps([list(pair) for pair in spec.noise_prompts]),
        "extra": json.dumps(dict(spec.extra)),
    }
    return tuple(encoded.get(name, getattr(spec, name)) for name in _SPEC_COLUMNS)


@dataclass(frozen=True)
class Admit:
    """One job to admit; ``enforce_limits=False`` (e.g. for the bot's owner) skips the limits
    but never the ban."""

    spec: JobSpec
    enforce_limits: bool = True


Outcome = Job | AdmissionRefused | ValueError


async def admit_jobs(
    conn: aiosqlite.Connection,
    admits: Sequence[Admit],
    *,
    default_limits: Limits = DEFAULT_LIMITS,
    global_queue_cap: int = DEFAULT_GLOBAL_QUEUE_CAP,
    user_limits: UserLimits = NO_USER_LIMITS,
    now: float | None = None,
) -> list[Outcome]:
    """Admit and insert ``admits`` in order, in ONE ``BEGIN IMMEDIATE`` transaction; returns,
    once it has committed, each one's queued job or the error that refused it (``UserBanned``,
    ``LimitExceeded``, or ``ValueError`` for a spec the table cannot hold).

    Any other error (the disk, the database) rolls the whole transaction back and is raised:
    then no row of the batch was stored.
    """
    at = now_or(now)
    # Guild settings cannot change while this transaction holds the write lock: read once each.
    settings: dict[int | None, GuildSettings] = {}
    outcomes: list[Outcome] = []
    async with transaction(conn):
        for admit in admits:
            try:
                outcomes.append(
                    await _admit_one(
                        conn, admit, settings, default_limits, global_queue_cap, user_limits, at
                    )
                )
            except (AdmissionRefused, ValueError) as error:
                outcomes.append(error)
    return outcomes


async def _admit_one(
    conn: aiosqlite.Connection,
    admit: Admit,
    settings: dict[int | None, GuildSettings],
    default_limits: Limits,
    global_queue_cap: int,
    user_limits: UserLimits,
    at: float,
) -> Job:
    """Checks first, then the writes inside a savepoint: a row refused by a check has written
    nothing, and one whose insert fails (a parent job that does not exist) is undone alone
    while the batch's transaction goes on."""
    spec = admit.spec
    spec.check()
    ban = await fetch_ban(conn, spec.guild_id, spec.user_id)
    if ban is not None:
        raise UserBanned(spec.guild_id, spec.user_id, ban.reason)
    if admit.enforce_limits:
        if spec.guild_id not in settings:
            settings[spec.guild_id] = await fetch_settings(conn, spec.guild_id, default_limits)
        limits = settings[spec.guild_id].limits
        await check_limits(
            conn, spec.user_id, spec.guild_id, limits, global_queue_cap, at, 1, user_limits
        )
    await conn.execute("SAVEPOINT admit")
    try:
        await conn.execute(_COUNT_USER, (spec.user_id, at, at))  # jobs.user_id refers to it
        rows = await fetch_all(conn, _INSERT, (*_spec_values(spec), "queued", at))
    except sqlite3.IntegrityError as error:
        await conn.execute("ROLLBACK TO admit")
        await conn.execute("RELEASE admit")
        if spec.parent_job_id is not None and await fetch_job(conn, spec.parent_job_id) is None:
            raise ValueError(
                f"the job this {spec.kind} starts from (#{spec.parent_job_id}) does not exist"
            ) from None
        raise ValueError(f"the job could not be stored: {error}") from error
    await conn.execute("RELEASE admit")
    return job_from_row(rows[0])


async def admit_group(
    conn: aiosqlite.Connection,
    specs: Sequence[JobSpec],
    *,
    enforce_limits: bool = True,
    default_limits: Limits = DEFAULT_LIMITS,
    global_queue_cap: int = DEFAULT_GLOBAL_QUEUE_CAP,
    user_limits: UserLimits = NO_USER_LIMITS,
    now: float | None = None,
) -> list[Job]:
    """Admit several pictures of one request (``/imagine count:N``) together or not at all, in
    ONE ``BEGIN IMMEDIATE`` transaction: each picture counts against the limits (a refusal says
    how many would fit now), each gets its own row, and the rows share ``group_id`` (the first
    row's id) with ``group_index`` 0..N-1. Raises ``UserBanned``, ``LimitExceeded`` or
    ``ValueError`` (then nothing was stored)."""
    if not specs:
        raise ValueError("a job group needs at least one picture")
    first = specs[0]
    if any((s.user_id, s.guild_id) != (first.user_id, first.guild_id) for s in specs):
        raise ValueError("the pictures of one group must be asked for by one user in one place")
    at = now_or(now)
    for spec in specs:
        spec.check()
    async with transaction(conn):
        ban = await fetch_ban(conn, first.guild_id, first.user_id)
        if ban is not None:
            raise UserBanned(first.guild_id, first.user_id, ban.reason)
        if enforce_limits:
            limits = (await fetch_settings(conn, first.guild_id, default_limits)).limits
            await check_limits(
                conn,
                first.user_id,
                first.guild_id,
                limits,
                global_queue_cap,
                at,
                len(specs),
                user_limits,
            )
        ids: list[int] = []
        for spec in specs:
            await conn.execute(_COUNT_USER, (spec.user_id, at, at))
            rows = await fetch_all(conn, _INSERT, (*_spec_values(spec), "queued", at))
            ids.append(int(rows[0]["id"]))
        for index, job_id in enumerate(ids):
            await conn.execute(
                "UPDATE jobs SET group_id = ?, group_index = ?, group_size = ? WHERE id = ?",
                (ids[0], index, len(ids), job_id),
            )
        rows = await fetch_all(
            conn, f"SELECT * FROM jobs WHERE id IN ({placeholders(ids)}) ORDER BY id", ids
        )
    return [job_from_row(row) for row in rows]


@dataclass
class _Waiting:
    admit: Admit
    answer: asyncio.Future[Job]


class JobAdmitter:
    """Group commit of admissions on one connection (see the module's docstring).

    ``create_job`` waits for the transaction that holds its row; ``transactions`` counts the
    transactions run and ``admitted`` the jobs they committed, so the grouping is observable.
    """

    def __init__(
        self,
        conn: aiosqlite.Connection,
        *,
        default_limits: Limits = DEFAULT_LIMITS,
        global_queue_cap: int = DEFAULT_GLOBAL_QUEUE_CAP,
        user_limits: UserLimits = NO_USER_LIMITS,
        max_batch: int = 100,
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be 1 or more, not {max_batch}")
        self._conn = conn
        self._default_limits = default_limits
        self._global_queue_cap = global_queue_cap
        self._user_limits = user_limits
        self._max_batch = max_batch
        self._waiting: list[_Waiting] = []
        self._committer: asyncio.Task[None] | None = None
        self.transactions = 0
        self.admitted = 0

    async def create_job(self, spec: JobSpec, *, enforce_limits: bool = True) -> Job:
        """Admit ``spec`` as ``db.create_job`` does; returns once its row is committed. A caller
        that is cancelled before its batch starts is left out of it; one cancelled later may
        still have its row committed (the job then runs, as any queued job)."""
        answer: asyncio.Future[Job] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(Admit(spec, enforce_limits), answer))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_batches())
        return await answer

    async def _commit_batches(self) -> None:
        batch: list[_Waiting] = []
        try:
            while self._waiting:
                batch = [w for w in self._waiting[: self._max_batch] if not w.answer.done()]
                del self._waiting[: self._max_batch]
                if batch:
                    await self._commit(batch)
                batch = []
        finally:
            # Cancelled (the bot is closing): whoever still waits gets the cancellation.
            for waiting in (*batch, *self._waiting):
                waiting.answer.cancel()
            self._waiting.clear()
            self._committer = None

    async def _commit(self, batch: list[_Waiting]) -> None:
        try:
            outcomes = await admit_jobs(
                self._conn,
                [w.admit for w in batch],
                default_limits=self._default_limits,
                global_queue_cap=self._global_queue_cap,
                user_limits=self._user_limits,
            )
        except Exception as error:  # nothing of the batch was stored: every caller hears why
            for waiting in batch:
                if not waiting.answer.done():
                    waiting.answer.set_exception(error)
            return
        self.transactions += 1
        for waiting, outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, Job):
                self.admitted += 1
                if not waiting.answer.done():
                    waiting.answer.set_result(outcome)
            elif not waiting.answer.done():
                waiting.answer.set_exception(outcome)
