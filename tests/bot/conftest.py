"""Fixtures for end-to-end tests: the fake Discord, a tiny-model GPU worker, and the bot
running in this process against both."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

import db
from bot.client import ImagineBot
from bot.settings import Settings
from generation.worker import GpuWorker
from tests.fakediscord import FakeDiscord, StoredMessage, point_discord_py_at, running_client

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def make_settings(fake: FakeDiscord, tmp_path: Path, **changes: Any) -> Settings:
    """Fast settings for tests: tiny 64x64 pictures, few steps, quick edits."""
    values: dict[str, Any] = dict(
        token=fake.token,
        api_base=fake.api_base,
        gateway_url=fake.gateway_url,
        db_path=tmp_path / "imagine.db",
        output_dir=tmp_path / "outputs",
        models="tiny",
        sizes=("64x64", "96x64"),
        default_steps=12,
        max_steps=500,
        progress_every=2,
        edit_interval=0.15,
        channel_edit_limit=5,
        channel_edit_window=1.0,
        # The fake's CDN is plain http on localhost: allowed here only, never by default.
        attachment_origins=(fake.base_url,),
    )
    values.update(changes)
    return Settings(**values)


# The name other test modules import; a helper, not a test (pytest skips __test__ = False).
test_settings = make_settings
make_settings.__test__ = False  # type: ignore[attr-defined]


@dataclasses.dataclass
class Harness:
    fake: FakeDiscord
    bot: ImagineBot
    conn: Any
    settings: Settings
    submitted: dict[int, int] = dataclasses.field(default_factory=dict)
    _changed: asyncio.Condition = dataclasses.field(default_factory=asyncio.Condition)

    def __post_init__(self) -> None:
        def observer(interaction_id: int, job: db.Job) -> None:
            self.submitted[interaction_id] = job.id
            asyncio.ensure_future(self._notify())

        self.bot.jobs.on_submitted.append(observer)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def imagine(self, **options: Any) -> Any:
        """Run /imagine as the default member and wait for its acknowledgement."""
        member = options.pop("member", None)
        attachments = options.pop("attachments", None)
        handle = await self.fake.send_slash_command(
            "imagine", options, member=member, attachments=attachments
        )
        await handle.wait_for_callback()
        return handle

    async def job_of(self, handle: Any, *, limit: float = 30.0) -> db.Job:
        """The job created for an interaction (waits until the bot has stored its reply)."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: handle.id in self.submitted), limit
            )
        job = await db.get_job(self.conn, self.submitted[handle.id])
        assert job is not None
        return job

    async def wait_job_status(self, job_id: int, *statuses: str, limit: float = 60.0) -> db.Job:
        """Wait (on the scheduler's finish notifications, re-reading the row) for a status."""
        deadline = time.monotonic() + limit
        finished = self.bot.scheduler.on_job_finished
        changed = asyncio.Event()

        def observer(_job_id: int, _status: str) -> None:
            changed.set()

        finished.append(observer)
        try:
            while True:
                job = await db.get_job(self.conn, job_id)
                assert job is not None
                if job.status in statuses:
                    return job
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"job {job_id} is {job.status}, not {statuses}")
                changed.clear()
                try:
                    await asyncio.wait_for(changed.wait(), min(remaining, 1.0))
                except TimeoutError:
                    pass  # look at the row again: a status can change without a finish
        finally:
            finished.remove(observer)


def file_bytes(path: str | Path) -> bytes:
    """A file's bytes (tests read small files; a helper keeps the reads out of coroutines)."""
    return Path(path).read_bytes()


def is_file(path: str | Path) -> bool:
    return Path(path).is_file()


def has_file(prefix: str) -> Callable[[StoredMessage], bool]:
    def check(message: StoredMessage) -> bool:
        return any(a.filename.startswith(prefix) for a in message.attachments)

    return check


def is_final(message: StoredMessage) -> bool:
    ids = message.custom_ids()
    return has_file("imagine-")(message) and any(i.endswith(":reroll") for i in ids)


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeDiscord]:
    # Wall-clock time, so the fake's call times compare with the job rows' timestamps.
    fake = FakeDiscord(clock=time.time)
    await fake.start()
    restore = point_discord_py_at(fake)
    try:
        yield fake
    finally:
        restore()
        await fake.stop()


@pytest_asyncio.fixture
async def worker() -> AsyncIterator[GpuWorker]:
    worker = GpuWorker("tiny")
    await worker.start()
    try:
        yield worker
    finally:
        await worker.close()


@pytest.fixture
def settings_changes() -> dict[str, Any]:
    """Override in a test module (or parametrize) to change the bot's settings."""
    return {}


@pytest_asyncio.fixture
async def harness(
    fake: FakeDiscord, worker: GpuWorker, tmp_path: Path, settings_changes: dict[str, Any]
) -> AsyncIterator[Harness]:
    settings = make_settings(fake, tmp_path, **settings_changes)
    conn = await db.connect(settings.db_path)
    bot = ImagineBot(settings, conn, worker)
    try:
        async with running_client(bot, fake):
            await fake.wait_for_commands("imagine", "queue", "history", "info")
            yield Harness(fake=fake, bot=bot, conn=conn, settings=settings)
    finally:
        await conn.close()
    fake.assert_no_unknown_routes()
