"""The bot end to end against the fake Discord with IMAGINE_WORKERS=ray: two CPU painters on a
local Ray cluster (a custom resource stands in for GPUs), tiny models."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

import db
from tests.bot.conftest import Harness, has_file, is_final

ray = pytest.importorskip("ray")

from generation.ray_pool import RayPool  # noqa: E402

pytestmark = pytest.mark.slow

RESOURCE = "imagine_test_painter"
START_TIMEOUT = 120.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[object]:
    ray.init(num_cpus=2, resources={RESOURCE: 2}, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest_asyncio.fixture
async def worker(cluster: object) -> AsyncIterator[RayPool]:
    """Replaces conftest's local GPU thread: the harness runs the bot on two Ray painters."""
    pool = RayPool("tiny", workers=2, gpus=0, resources={RESOURCE: 1})
    await asyncio.wait_for(pool.start(), START_TIMEOUT)
    try:
        yield pool
    finally:
        await pool.close()


@pytest.fixture
def settings_changes() -> dict[str, Any]:
    return {"workers": "ray", "ray_workers": 2, "ray_gpus": 0.0}


def final_revisions(message: Any) -> int:
    """How many states of the message showed a finished picture (a delivery)."""
    return sum(
        any(a.filename.startswith("imagine-") for a in revision.attachments)
        for revision in message.revisions
    )


async def test_two_users_paint_at_once_and_info_shows_the_workers(harness: Harness) -> None:
    fake = harness.fake
    bob = fake.add_member("bob")
    first = await harness.imagine(prompt="a lighthouse", steps=40, seed=1)
    second = await harness.imagine(prompt="a harbour", steps=40, seed=2, member=bob)
    await first.wait_for_original(has_file("progress-"), timeout=60)
    await second.wait_for_original(has_file("progress-"), timeout=60)
    # Both are painting at the same time, one per painter.
    assert sorted(harness.bot.scheduler.running_job_ids) == sorted(
        [(await harness.job_of(first)).id, (await harness.job_of(second)).id]
    )
    info = await fake.send_slash_command("info")
    embed = (await info.wait_for_callback()).json["data"]["embeds"][0]
    assert "**Workers**: 2 of 2 up, 2 busy (ray)" in embed["description"]
    for handle in (first, second):
        final = await handle.wait_for_original(is_final, timeout=120)
        job = await harness.wait_job_status((await harness.job_of(handle)).id, "done")
        assert final.attachment_data(0).startswith(b"\x89PNG") and job.attempts == 1


async def test_a_painter_killed_mid_job_resumes_the_job_and_delivers_it_once(
    harness: Harness,
) -> None:
    pool = harness.bot.worker
    assert isinstance(pool, RayPool)
    handle = await harness.imagine(prompt="survive a lost worker", steps=120, seed=9)
    job = await harness.job_of(handle)
    await handle.wait_for_original(has_file("progress-"), timeout=60)
    pid = pool.pid_running(job.id)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)

    final = await handle.wait_for_original(is_final, timeout=180)
    # The user was told it would resume, then saw it paint again and finish: once.
    assert any("Resumed after its worker was lost" in r.content for r in final.revisions)
    assert final_revisions(final) == 1
    done = await harness.wait_job_status(job.id, "done")
    assert done.attempts == 2
    assert await db.queue_position(harness.conn, job.id) is None
    await asyncio.wait_for(pool.wait_all_up(), START_TIMEOUT)
    assert pid not in pool.worker_pids()


# The local worker's end-to-end flows, run again here on the Ray painters (this module's
# ``worker`` fixture replaces conftest's).
from tests.bot.test_e2e_imagine import (  # noqa: E402
    test_cancel_refused_for_a_stranger_and_honoured_for_the_requester as test_cancel_on_ray,
)
from tests.bot.test_e2e_imagine import (  # noqa: E402
    test_imagine_acknowledges_fast_then_progress_then_final as test_imagine_on_ray,
)

__all__ = ["test_cancel_on_ray", "test_imagine_on_ray"]
