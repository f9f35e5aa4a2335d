"""Soak: the whole bot under a long mixed load with faults injected, and what it held.

    python benchmarks/soak.py            # 500 /imagine from 100 users over 10 minutes, faults
    python benchmarks/soak.py --quick    # the same in about two minutes (60 jobs, 20 users)
    python benchmarks/soak.py --jobs 200 --users 50 --minutes 4 --kills 3 --seed 7

Loopback only. The fake Discord (tests/fakediscord) runs in this process; the bot runs as its
own process, `python -m bot` as an operator starts it (through benchmarks/soak_bot.py, which
adds one test-only fault: a prompt with its marker hangs inside a step), with tiny random
models (IMAGINE_MODELS=tiny) and few steps so a CPU keeps up. The users send /imagine, press
Re-roll and Cancel, and ask /rank, at random moments spread over the run. Meanwhile, one after
another at random moments, the soak injects:

- kill -9 of the bot (--kills times), then starts it again and checks the jobs resume;
- a job whose worker thread hangs inside a step (the job time limit must fail it with a
  reason, and the worker must go on with a fresh thread, no restart);
- 429 storms and 500/502 storms on the bot's REST calls;
- the gateway dropped (the bot must RESUME) and the session invalidated (a fresh IDENTIFY);
- the disk full: the bot's RLIMIT_FSIZE is lowered to 0 bytes for a few seconds (prlimit on
  the running process: a real OS limit, every file write fails with EFBIG, PNGs included);
- the database locked: another process's sqlite3 connection holds BEGIN EXCLUSIVE for longer
  than the bot's busy timeout;
- with --ray, a Ray painter process killed with SIGKILL (off by default: Ray is heavy for a
  2-core machine).

Then it waits for every job to end and checks each accepted job: done and delivered, failed
with a reason the user was shown, or cancelled. Anything else is lost, and the exit status is
1. It prints the load held, the resources of the bot process (RSS, open files, database size:
start after warm-up, max, end), acknowledgement latency as Discord sees it, and per fault:
injected, survived, jobs lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import random
import resource
import signal
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve()
REPO = SCRIPT.parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from benchmarks.soak_bot import HANG_MARK  # noqa: E402

STARTUP_TIMEOUT = 300.0  # a cold start imports torch and builds the tiny models
JOB_TIMEOUT = 20.0  # IMAGINE_JOB_TIMEOUT for the soak: a tiny job paints in about a second
HANG_GRACE = 10.0  # the worker's default grace before it abandons a stuck thread
DB_LOCK_SECONDS = 8.0  # longer than the bot's 5 s busy timeout
DISK_FULL_SECONDS = 6.0  # longer than the PNG save's own retries (0.5 + 2 s)
TERMINAL = ("done", "failed", "cancelled")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def custom_ids(components: list[dict[str, Any]]) -> list[str]:
    """Every custom_id in a message's component tree."""
    found: list[str] = []
    for component in components or []:
        if component.get("custom_id"):
            found.append(component["custom_id"])
        found.extend(custom_ids(component.get("components", [])))
    return found


def is_final(message: Any) -> bool:
    ids = message.custom_ids()
    return any(a.filename.startswith("imagine-") for a in message.attachments) and any(
        i.endswith(":reroll") for i in ids
    )


# ---- the plan ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Plan:
    jobs: int
    users: int
    minutes: float
    kills: int
    seed: int
    ray: bool
    drain_minutes: float
    faults: tuple[str, ...] = ()  # empty: every fault (kill9 follows --kills)
    steps: tuple[int, int] = (3, 8)
    channels: int = 5

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0


@dataclasses.dataclass
class Fault:
    """One kind of fault: how often it was injected and survived, and when it was active."""

    name: str
    injected: int = 0
    survived: int = 0
    windows: list[tuple[float, float]] = dataclasses.field(default_factory=list)
    watch: set[int] = dataclasses.field(default_factory=set)  # jobs that must come through
    notes: list[str] = dataclasses.field(default_factory=list)
    lost: int = 0
    acks_missed: int = 0  # commands sent meanwhile that got no answer within Discord's 3 s


OTHER_FAULTS = (
    "hang",
    "storm429",
    "storm5xx",
    "gateway_resume",
    "gateway_identify",
    "disk_full",
    "db_locked",
)
FAULT_LABELS = {
    "kill9": "kill -9 of the bot, restarted",
    "hang": "worker thread hangs in a step",
    "storm429": "429 storm on REST calls",
    "storm5xx": "500/502 storm on REST calls",
    "gateway_resume": "gateway dropped (RESUME)",
    "gateway_identify": "session invalidated (IDENTIFY)",
    "disk_full": "disk full (RLIMIT_FSIZE 0)",
    "db_locked": "database locked (EXCLUSIVE)",
    "ray_actor": "Ray painter killed (-9)",
}


# ---- the bot process ---------------------------------------------------------------------------


class BotProcess:
    """Starts the bot, restarts it whenever it exits (after a kill -9 or on its own), and says
    when it is up (identified on the fake's gateway)."""

    def __init__(self, fake: Any, env: dict[str, str], log_path: Path) -> None:
        self.fake = fake
        self.env = env
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.up = asyncio.Event()
        self.down = asyncio.Event()  # set from an exit until the next process is up
        self.started = asyncio.Event()  # a process exists (its pid can be sampled)
        self.expected_kills = 0
        self.unexpected_exits: list[int | None] = []
        self.starts = 0
        self.start_seconds: list[float] = []
        self.stopping = False
        self._task: asyncio.Task[None] | None = None
        self._log = log_path.open("ab")

    @property
    def pid(self) -> int | None:
        return None if self.proc is None or self.proc.returncode is not None else self.proc.pid

    def run(self) -> None:
        self._task = asyncio.create_task(self._supervise())

    async def _supervise(self) -> None:
        while not self.stopping:
            mark = self.fake.mark()
            began = time.monotonic()
            # The bot's output goes through a pipe (copied to the log here): a disk-full fault
            # on the bot process must not also stop the soak from reading what it says.
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable,
                str(SCRIPT.with_name("soak_bot.py")),
                cwd=REPO,
                env=self.env,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            self.starts += 1
            self.started.set()
            copier = asyncio.create_task(self._copy_output(self.proc))
            ready = asyncio.ensure_future(
                self.fake.wait_for_ready(since=mark, timeout=STARTUP_TIMEOUT)
            )
            exited = asyncio.ensure_future(self.proc.wait())
            await asyncio.wait({ready, exited}, return_when=asyncio.FIRST_COMPLETED)
            if ready.done() and not ready.cancelled() and ready.exception() is None:
                self.start_seconds.append(time.monotonic() - began)
                self.down.clear()
                self.up.set()
            else:
                ready.cancel()
            code = await exited
            self.up.clear()
            self.down.set()
            self.started.clear()
            await copier
            if self.expected_kills > 0 and code == -signal.SIGKILL:
                self.expected_kills -= 1
            elif not self.stopping:
                self.unexpected_exits.append(code)
                self._log.write(f"\n[soak] the bot exited by itself with {code}\n".encode())

    async def _copy_output(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            self._log.write(line)
        self._log.flush()

    def kill9(self) -> None:
        assert self.proc is not None and self.proc.returncode is None
        self.expected_kills += 1
        self.proc.send_signal(signal.SIGKILL)

    async def stop(self) -> int | None:
        """SIGTERM (a graceful stop, as docker stop sends) and wait for the supervisor."""
        self.stopping = True
        code = None
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                code = await asyncio.wait_for(self.proc.wait(), 60)
            except TimeoutError:
                self.proc.kill()
                code = await self.proc.wait()
        if self._task is not None:
            await self._task
        self._log.close()
        return code


# ---- reading the database (another process's connection, as an operator's tools would) ------


JOB_COLUMNS = (
    "id, kind, status, error, interaction_id, delivery, created_at, started_at, finished_at, "
    "attempts, reply_message_id, channel_message_id, output_path, prompt, user_id, expired_at"
)


def read_jobs(db_path: Path) -> dict[int, dict[str, Any]]:
    """Every job row (a read in WAL mode never waits for the bot's writes)."""
    if not db_path.exists():
        return {}
    con = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)
    try:
        con.row_factory = sqlite3.Row
        rows = con.execute(f"SELECT {JOB_COLUMNS} FROM jobs").fetchall()
    except sqlite3.OperationalError:
        return {}  # not migrated yet
    finally:
        con.close()
    return {row["id"]: dict(row) for row in rows}


def hold_exclusive_lock(db_path: Path, seconds: float) -> float:
    """BEGIN EXCLUSIVE from another connection, held ``seconds``; returns how long it waited
    to get the lock (run in a thread)."""
    con = sqlite3.connect(db_path, timeout=60, isolation_level=None)
    try:
        asked = time.monotonic()
        con.execute("BEGIN EXCLUSIVE")
        waited = time.monotonic() - asked
        time.sleep(seconds)  # holding the lock is the fault itself
        con.execute("ROLLBACK")
    finally:
        con.close()
    return waited


def db_bytes(db_path: Path) -> int:
    total = 0
    for suffix in ("", "-wal", "-shm"):
        path = Path(str(db_path) + suffix)
        with contextlib.suppress(FileNotFoundError):
            total += path.stat().st_size
    return total


def png_ok(path: str) -> bool:
    from PIL import Image

    try:
        with Image.open(path) as image:
            image.verify()
    except Exception:  # noqa: BLE001 - any failure means the file is not a whole PNG
        return False
    return True


def judge(job: dict[str, Any], message: Any) -> tuple[str | None, str | None]:
    """(why the job is lost, or None; why its user was not told how it ended, or None).

    Held: done with a whole PNG on disk and delivered, failed with a reason, or cancelled; and
    the job's message on Discord says so (the picture, "could not be made", "Cancelled")."""
    status = job["status"]
    if status not in TERMINAL:
        return f"still {status}", None
    if status == "failed" and not (job["error"] or "").strip():
        return "failed without a reason", None
    if status == "done" and job["delivery"] != "delivered":
        return f"done, delivery {job['delivery']}", None
    path = job["output_path"]
    if status == "done" and path and Path(path).exists() and not png_ok(path):
        return "done, but its PNG on disk is cut short", None
    told = message is not None and (
        (status == "done" and is_final(message))
        or (status == "failed" and "could not be made" in message.content)
        or (status == "cancelled" and message.content.startswith("Cancelled"))
    )
    if not told:
        return None, f"{status}: last message {getattr(message, 'content', None)!r}"
    return None, None


# ---- the soak ----------------------------------------------------------------------------------


class Soak:
    def __init__(self, plan: Plan, work: Path) -> None:
        self.plan = plan
        self.work = work
        self.rng = random.Random(plan.seed)
        self.db_path = work / "imagine.db"
        self.out_dir = work / "outputs"
        self.faults: dict[str, Fault] = {}
        self.job_handles: list[Any] = []  # interactions that make a job: /imagine, Re-roll
        self.imagine_handles: list[Any] = []
        self.rank_handles: list[Any] = []
        self.cancel_clicks: list[Any] = []
        self.hang_handles: list[Any] = []
        self.counts = {"imagine": 0, "reroll": 0, "cancel": 0, "rank": 0, "skipped": 0}
        self.send_errors: list[str] = []
        self.samples: list[dict[str, float]] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.load_started = 0.0
        self.load_seconds = 0.0

    # -- set-up ---------------------------------------------------------------------------------

    async def start(self) -> None:
        from tests.fakediscord import FakeDiscord

        # Wall-clock time, so the fake's times compare with the job rows' timestamps.
        self.fake = FakeDiscord(clock=time.time)
        self.channels = [self.fake.channel] + [
            self.fake.add_channel(f"art-{i}") for i in range(1, self.plan.channels)
        ]
        self.members = [self.fake.add_member(f"painter{i}") for i in range(self.plan.users)]
        self.fake.enforce_edit_rate_limit(5, 5.0)  # Discord's per-channel limit
        await self.fake.start()
        await self.raise_guild_limits()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "IMAGINE_"))}
        env.update(
            DISCORD_TOKEN=self.fake.token,
            DISCORD_API_BASE=self.fake.api_base,
            DISCORD_GATEWAY_URL=self.fake.gateway_url,
            IMAGINE_DB=str(self.db_path),
            IMAGINE_OUTPUT_DIR=str(self.out_dir),
            IMAGINE_MODELS="tiny",
            IMAGINE_SIZES="64x64",
            IMAGINE_DEFAULT_STEPS=str(self.plan.steps[0]),
            IMAGINE_PROGRESS_EVERY="2",
            IMAGINE_JOB_TIMEOUT=str(JOB_TIMEOUT),
            IMAGINE_GLOBAL_QUEUE_CAP="10000",
            IMAGINE_USER_JOBS_PER_HOUR="10000",
            IMAGINE_USER_WAITING="10",
            IMAGINE_RANK_PER_MINUTE="60",
            IMAGINE_ATTACHMENT_ORIGINS=self.fake.base_url,
            IMAGINE_LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        if self.plan.ray:
            env.update(IMAGINE_WORKERS="ray", IMAGINE_RAY_WORKERS="1", IMAGINE_RAY_GPUS="0")
        self.bot = BotProcess(self.fake, env, self.work / "bot.log")
        self.bot.run()
        await asyncio.wait_for(self.bot.up.wait(), STARTUP_TIMEOUT)
        await self.fake.wait_for_commands("imagine", "rank", timeout=60)

    async def raise_guild_limits(self) -> None:
        """An operator raises the guild's queue limits for a server this busy (the defaults
        allow 25 waiting jobs per guild)."""
        import db

        conn = await db.connect(self.db_path)
        try:
            await db.set_guild_settings(
                conn,
                self.fake.guild.id,
                actor_id=0,
                jobs_per_hour=10_000,
                waiting_per_user=10,
                waiting_per_guild=10_000,
            )
        finally:
            await conn.close()

    def fault(self, name: str) -> Fault:
        return self.faults.setdefault(name, Fault(name))

    def spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def jobs_now(self) -> dict[int, dict[str, Any]]:
        return await asyncio.to_thread(read_jobs, self.db_path)

    async def alive_jobs(self) -> set[int]:
        return {i for i, j in (await self.jobs_now()).items() if j["status"] not in TERMINAL}

    # -- the load -------------------------------------------------------------------------------

    def schedule(self) -> list[tuple[float, str]]:
        """When each user action happens: /imagine at random moments over the run, with one
        Re-roll per 10, one Cancel and one /rank per 20 mixed in."""
        plan = self.plan
        kinds = (
            ["imagine"] * plan.jobs
            + ["reroll"] * max(1, plan.jobs // 10)
            + ["cancel"] * max(1, plan.jobs // 20)
            + ["rank"] * max(1, plan.jobs // 20)
        )
        times = sorted(self.rng.uniform(0, plan.seconds) for _ in kinds)
        self.rng.shuffle(kinds)
        # The first moments are /imagine, so Re-roll and Cancel have something to act on.
        return list(zip(times, kinds, strict=True))

    async def run_load(self) -> None:
        loop = asyncio.get_running_loop()
        self.load_started = loop.time()
        for at, kind in self.schedule():
            delay = self.load_started + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.bot.up.wait()  # a user cannot reach a bot that is down
            self.spawn(self.act(kind))
        self.load_seconds = loop.time() - self.load_started

    async def act(self, kind: str) -> None:
        try:
            if kind == "reroll" and await self.reroll():
                return
            if kind == "cancel" and await self.cancel():
                return
            if kind == "rank":
                await self.rank()
                return
            await self.imagine()
        except Exception as error:  # noqa: BLE001 - counted and printed, the run goes on
            self.send_errors.append(f"{kind}: {type(error).__name__}: {error}"[:200])

    async def imagine(self, prompt: str | None = None, steps: int | None = None) -> Any:
        member = self.rng.choice(self.members)
        channel = self.rng.choice(self.channels)
        number = self.counts["imagine"]
        self.counts["imagine"] += 1
        handle = await self.fake.send_slash_command(
            "imagine",
            {
                "prompt": prompt or f"soak picture {number}: a lighthouse in a storm",
                "steps": steps or self.rng.randint(*self.plan.steps),
                "size": "64x64",
            },
            member=member,
            channel=channel,
        )
        self.job_handles.append(handle)
        if prompt is None:
            self.imagine_handles.append(handle)
        return handle

    async def reroll(self) -> bool:
        finals = [
            h
            for h in self.job_handles
            if h.original is not None and is_final(h.original) and h not in self.hang_handles
        ]
        if not finals:
            return False
        message = self.rng.choice(finals).original
        [custom_id] = [i for i in message.custom_ids() if i.endswith(":reroll")]
        try:
            click = await self.fake.click_button(message, custom_id, self.rng.choice(self.members))
        except ValueError:
            return False  # the button went away meanwhile
        self.counts["reroll"] += 1
        self.job_handles.append(click)
        return True

    async def cancel(self) -> bool:
        waiting = [
            h
            for h in self.job_handles[-30:]
            if h.original is not None
            and h not in self.hang_handles
            and any(i.endswith(":cancel") for i in h.original.custom_ids())
        ]
        if not waiting:
            return False
        handle = self.rng.choice(waiting)
        [custom_id] = [i for i in handle.original.custom_ids() if i.endswith(":cancel")]
        try:
            click = await self.fake.click_button(handle.original, custom_id, handle.member)
        except ValueError:
            return False  # it finished meanwhile
        self.counts["cancel"] += 1
        self.cancel_clicks.append(click)
        return True

    async def rank(self) -> None:
        from tests.fakediscord.tinybot import make_png

        colour = self.rng.choice([(220, 30, 30), (30, 200, 40), (40, 40, 220)])
        image = self.fake.make_attachment(make_png(32, 32, colour), "soak.png")
        handle = await self.fake.send_slash_command(
            "rank",
            {"image": image, "captions": "a red square | a green square | a blue square"},
            member=self.rng.choice(self.members),
            channel=self.rng.choice(self.channels),
        )
        self.counts["rank"] += 1
        self.rank_handles.append(handle)

    # -- resources ------------------------------------------------------------------------------

    async def sample(self) -> None:
        import psutil

        while True:
            pid = self.bot.pid
            if pid is not None and self.bot.up.is_set():
                try:
                    process = psutil.Process(pid)
                    with process.oneshot():
                        rss = process.memory_info().rss / 2**20
                        fds = process.num_fds()
                except psutil.Error:
                    pass
                else:
                    self.samples.append(
                        {
                            "t": time.monotonic(),
                            "pid": pid,
                            "rss": rss,
                            "fds": fds,
                            "db": await asyncio.to_thread(db_bytes, self.db_path) / 2**20,
                        }
                    )
            await asyncio.sleep(2.0)

    # -- the faults -----------------------------------------------------------------------------

    def fault_plan(self) -> list[tuple[float, str]]:
        # With --ray the jobs paint in Ray's processes, which soak_bot.py's hang does not reach.
        ray_default = tuple(f for f in OTHER_FAULTS if f != "hang") + ("ray_actor",)
        chosen = self.plan.faults or (ray_default if self.plan.ray else OTHER_FAULTS)
        names = ["kill9"] * self.plan.kills + [n for n in chosen if n not in ("kill9", "none")]
        if not names:
            return []
        self.rng.shuffle(names)
        # One slot each between 10% and 85% of the run, at a random moment inside its slot.
        span = 0.75 * self.plan.seconds / len(names)
        return [
            (0.10 * self.plan.seconds + span * (i + self.rng.uniform(0.0, 0.8)), name)
            for i, name in enumerate(names)
        ]

    async def run_faults(self) -> None:
        loop = asyncio.get_running_loop()
        for at, name in self.fault_plan():
            delay = self.load_started + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await self.bot.up.wait()
            fault = self.fault(name)
            fault.injected += 1
            began = time.time()
            fault.watch |= await self.alive_jobs()
            try:
                ok = await getattr(self, f"inject_{name}")(fault)
            except Exception as error:  # noqa: BLE001 - the fault was not survived
                fault.notes.append(f"{type(error).__name__}: {error}"[:300])
                ok = False
            # Jobs alive at any point of the window must come through too.
            fault.watch |= await self.alive_jobs()
            fault.windows.append((began, time.time()))
            if ok:
                fault.survived += 1

    async def painting_job(self, steps: int) -> dict[str, Any]:
        """A job that is painting right now: a longer /imagine, once the worker has taken it."""
        handle = await self.imagine(steps=steps)
        return await self.wait_job(
            lambda j: j["interaction_id"] == handle.id and j["status"] != "queued", limit=120
        )

    async def inject_kill9(self, fault: Fault) -> bool:
        exits_before = len(self.bot.unexpected_exits)
        job = await self.painting_job(steps=40)  # so that every kill interrupts a painting
        fault.watch.add(job["id"])
        fault.watch |= await self.alive_jobs()
        self.bot.kill9()
        await self.bot.down.wait()  # the supervisor saw the exit
        await asyncio.wait_for(self.bot.up.wait(), STARTUP_TIMEOUT)
        # Survived when it came back without exiting by itself; that the interrupted jobs
        # resumed and finished is checked at the end (fault.watch).
        return len(self.bot.unexpected_exits) == exits_before

    async def inject_hang(self, fault: Fault) -> bool:
        handle = await self.imagine(prompt=f"{HANG_MARK}: a clock that stops")
        self.hang_handles.append(handle)
        starts = self.bot.starts
        job = await self.wait_job(lambda j: j["interaction_id"] == handle.id, limit=60)
        fault.watch.add(job["id"])
        ended = await self.wait_job(
            lambda j: j["id"] == job["id"] and j["status"] in TERMINAL, limit=600
        )
        # Give the worker its grace to abandon the stuck thread, then a job must still paint.
        await asyncio.sleep(HANG_GRACE + 1.0)
        probe = await self.imagine()
        done = await self.wait_job(
            lambda j: j["interaction_id"] == probe.id and j["status"] in TERMINAL, limit=180
        )
        fault.notes.append(f"hung job ended {ended['status']}: {ended['error']!r}")
        return (
            ended["status"] == "failed"
            and bool(ended["error"])
            and done["status"] == "done"
            and self.bot.starts == starts  # no restart was needed
        )

    async def wait_job(self, match: Callable[[dict[str, Any]], bool], limit: float) -> dict:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            for job in (await self.jobs_now()).values():
                if match(job):
                    return job
            await asyncio.sleep(0.5)
        raise TimeoutError(f"no job matched within {limit:.0f} s")

    def bot_rest_call(self, call: Any) -> bool:
        return call.name in (
            "edit_webhook_message",
            "execute_webhook",
            "create_message",
            "edit_message",
        )

    async def inject_storm429(self, fault: Fault) -> bool:
        starts = self.bot.starts
        # Message writes (edits, followups, channel messages): what Discord rate-limits.
        rule = self.fake.rate_limit_next(self.bot_rest_call, count=40, retry_after=0.25)
        await self.fake.wait_until(lambda: rule.exhausted, timeout=300, what="the 429 storm")
        fault.notes.append(f"{len(rule.hits)} calls answered 429")
        return self.bot.starts == starts and self.bot.up.is_set()

    async def inject_storm5xx(self, fault: Fault) -> bool:
        starts = self.bot.starts
        hits = 0
        for status in (500, 502):
            # Message writes and interaction callbacks (Discord's 5xx hit both).
            rule = self.fake.server_error_next(
                lambda c: c.name == "interaction_callback" or self.bot_rest_call(c),
                count=15,
                status=status,
            )
            await self.fake.wait_until(lambda r=rule: r.exhausted, timeout=300, what="5xx")
            hits += len(rule.hits)
        fault.notes.append(f"{hits} calls answered 500/502")
        return self.bot.starts == starts and self.bot.up.is_set()

    async def inject_gateway_resume(self, fault: Fault) -> bool:
        mark = self.fake.mark()
        await self.fake.drop_gateway("abort")
        event = await self.fake.wait_for_resume(since=mark, timeout=120)
        fault.notes.append(f"resumed, {event.data.get('replayed')} frames replayed")
        return await self.answered_after()

    async def inject_gateway_identify(self, fault: Fault) -> bool:
        mark = self.fake.mark()
        self.bot.up.clear()  # interactions wait for the new session
        try:
            await self.fake.drop_gateway("invalid_session")
            await self.fake.wait_for_ready(since=mark, timeout=120)
        finally:
            if self.bot.pid is not None:
                self.bot.up.set()
        return await self.answered_after()

    async def answered_after(self) -> bool:
        """After a gateway fault, a new /imagine must be answered."""
        handle = await self.imagine()
        call = await handle.wait_for_callback(timeout=30)
        return bool(call.ok)

    async def inject_disk_full(self, fault: Fault) -> bool:
        starts = self.bot.starts
        log_before = (self.work / "bot.log").stat().st_size
        # A job paints now and finishes inside the window: its PNG is written to a full disk.
        job = await self.painting_job(steps=30)
        fault.watch.add(job["id"])
        pid = self.bot.pid
        assert pid is not None
        soft, hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))
        try:
            await asyncio.sleep(DISK_FULL_SECONDS)  # the fault lasts this long
        finally:
            with contextlib.suppress(ProcessLookupError):
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (soft, hard))
        await asyncio.sleep(3.0)  # let the log catch up
        text = (self.work / "bot.log").read_bytes()[log_before:].decode(errors="replace")
        ended = (await self.jobs_now())[job["id"]]
        fault.notes.append(
            f"'File too large' in the log {text.count('File too large')} times, "
            f"'disk I/O error' {text.count('disk I/O error')} times; the job painting then "
            f"ended {ended['status']} ({ended['error'] or 'no error'})"
        )
        return self.bot.starts == starts and self.bot.up.is_set()

    async def inject_db_locked(self, fault: Fault) -> bool:
        starts = self.bot.starts
        log_before = (self.work / "bot.log").stat().st_size
        holder = asyncio.create_task(
            asyncio.to_thread(hold_exclusive_lock, self.db_path, DB_LOCK_SECONDS)
        )
        await asyncio.sleep(1.0)
        during = await self.imagine()  # a user asks while the lock is held
        waited = await holder
        call = await during.wait_for_callback(timeout=30)
        await asyncio.sleep(3.0)
        text = (self.work / "bot.log").read_bytes()[log_before:].decode(errors="replace")
        fault.notes.append(
            f"lock taken after {waited:.1f} s, held {DB_LOCK_SECONDS:.0f} s; "
            f"'database is locked' in the log {text.count('database is locked')} times; "
            f"a command sent meanwhile answered {call.status}"
        )
        # Survived: the bot kept running (what the commands sent meanwhile got is counted in
        # the acks column, what became of their jobs at the end).
        return self.bot.starts == starts and self.bot.up.is_set()

    async def inject_ray_actor(self, fault: Fault) -> bool:
        import psutil

        pid = self.bot.pid
        assert pid is not None
        painters = [
            p
            for p in psutil.Process(pid).children(recursive=True)
            if any("Painter" in part or "GpuActor" in part for part in p.cmdline())
        ]
        if not painters:
            fault.notes.append("no Ray painter process found")
            return False
        painters[0].send_signal(signal.SIGKILL)
        probe = await self.imagine()
        done = await self.wait_job(
            lambda j: j["interaction_id"] == probe.id and j["status"] in TERMINAL, limit=300
        )
        return done["status"] == "done" and self.bot.up.is_set()

    # -- the end --------------------------------------------------------------------------------

    async def drain(self) -> bool:
        """Wait until every job has ended and every finished picture is delivered."""
        deadline = time.monotonic() + self.plan.drain_minutes * 60
        while time.monotonic() < deadline:
            jobs = await self.jobs_now()
            if jobs and all(
                j["status"] in TERMINAL and (j["status"] != "done" or j["delivery"] == "delivered")
                for j in jobs.values()
            ):
                return True
            await asyncio.sleep(1.0)
        return False

    def message_of(self, job: dict[str, Any], handles: dict[int, Any]) -> Any:
        for message_id in (job["channel_message_id"], job["reply_message_id"]):
            if message_id is not None and message_id in self.fake.messages:
                return self.fake.messages[message_id]
        handle = handles.get(job["interaction_id"])
        return None if handle is None else handle.original

    def account(self, jobs: dict[int, dict[str, Any]]) -> dict[str, Any]:
        handles = {h.id: h for h in self.job_handles}
        lost: dict[int, str] = {}
        not_told: dict[int, str] = {}
        # A picture shown from memory when its save failed is recorded as gone (expired_at),
        # so /repost and Variation say so; a missing file not recorded so is a defect.
        missing = [
            i
            for i, j in jobs.items()
            if j["status"] == "done" and not (j["output_path"] and Path(j["output_path"]).exists())
        ]
        no_file = [i for i in missing if jobs[i]["expired_at"] is None]
        from_memory = [i for i in missing if jobs[i]["expired_at"] is not None]
        for job_id, job in jobs.items():
            gone, untold = judge(job, self.message_of(job, handles))
            if gone is not None:
                lost[job_id] = gone
            elif untold is not None:
                not_told[job_id] = untold
        # A reply the user saw ("Queued", with the job's buttons) whose job is not in the
        # database would be lost too.
        by_interaction = {j["interaction_id"] for j in jobs.values()}
        acked_without_row = 0
        for handle in self.job_handles:
            message = handle.original
            if message is None or message.ephemeral:
                continue
            shown = {
                int(i.split(":")[1])
                for r in message.revisions
                for i in custom_ids(r.components)
                if i.startswith("job:")
            }
            acked_without_row += len(shown - set(jobs))
        unanswered = [h for h in self.job_handles if not h.acknowledged]
        unanswered_with_job = [h for h in unanswered if h.id in by_interaction]
        refused = [
            h
            for h in self.job_handles
            if h.acknowledged and h.id not in by_interaction and h.original is not None
        ]
        for fault in self.faults.values():
            fault.lost = sum(1 for j in fault.watch if j in lost or j in not_told)
            fault.acks_missed = sum(
                1
                for h in self.job_handles + self.rank_handles
                if any(a <= h.issued_at <= b for a, b in fault.windows)
                and (h.ack_latency is None or h.ack_latency > 3.0)
            )
        acks = [h.ack_latency for h in self.imagine_handles if h.ack_latency is not None]
        ranks_answered = sum(
            1
            for h in self.rank_handles
            if h.original is not None
            and (h.original.embeds or "try /rank again" in h.original.content)
        )
        return {
            "lost": lost,
            "not_told": not_told,
            "acked_without_row": acked_without_row,
            "unanswered": len(unanswered) - len(unanswered_with_job),
            "unanswered_with_job": len(unanswered_with_job),
            "refused": len(refused),
            "acks": acks,
            "late_acks": sum(1 for a in acks if a > 3.0),
            "ranks_answered": ranks_answered,
            "statuses": {s: sum(1 for j in jobs.values() if j["status"] == s) for s in TERMINAL},
            "kinds": {
                k: sum(1 for j in jobs.values() if j["kind"] == k)
                for k in ("imagine", "reroll", "variation")
            },
            "resumed": sum(1 for j in jobs.values() if j["attempts"] > 1),
            "jobs": len(jobs),
            "no_file": no_file,
            "from_memory": from_memory,
        }

    async def stop(self) -> int | None:
        for task in list(self.tasks):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 30)
        code = await self.bot.stop()
        await self.fake.stop()
        return code


def resources_line(samples: list[dict[str, float]], key: str, unit: str, fmt: str) -> str:
    if not samples:
        return f"{key}: no samples"
    # Start: the first sample after warm-up (the first 10% of the run); end: the last one.
    warm = samples[max(0, len(samples) // 10)]
    values = [s[key] for s in samples]
    return (
        f"start {warm[key]:{fmt}} {unit}, max {max(values):{fmt}} {unit}, "
        f"end {samples[-1][key]:{fmt}} {unit}"
    )


def report(soak: Soak, result: dict[str, Any], drained: bool, stop_code: int | None) -> str:
    plan = soak.plan
    statuses = result["statuses"]
    acks = result["acks"]
    lost = result["lost"]
    not_told = result["not_told"]
    lines = [
        f"soak: {plan.jobs} /imagine from {plan.users} users over {plan.minutes:g} min "
        f"(seed {plan.seed}), bot restarted {soak.bot.starts - 1} times",
        "",
        "LOAD",
        f"  sent: /imagine {soak.counts['imagine']}, re-roll {soak.counts['reroll']}, "
        f"cancel {soak.counts['cancel']}, /rank {soak.counts['rank']} "
        f"(load phase {soak.load_seconds:.0f} s)",
        f"  accepted jobs: {result['jobs']} = done {statuses['done']} + failed with a reason "
        f"{statuses['failed']} + cancelled {statuses['cancelled']} + other "
        f"{result['jobs'] - sum(statuses.values())}",
        f"  resumed after a restart: {result['resumed']}; refused or failed at admission "
        f"(told why): {result['refused']}",
        f"  not acknowledged in time but recorded (told in the channel): "
        f"{result['unanswered_with_job']}; never answered, no job (sent as the bot died): "
        f"{result['unanswered']}",
        f"  /rank answered: {result['ranks_answered']} of {len(soak.rank_handles)}",
        f"  ack /imagine (as Discord sees it): p50 {1000 * percentile(acks, 50):.0f} ms, "
        f"p99 {1000 * percentile(acks, 99):.0f} ms, max {1000 * max(acks, default=0):.0f} ms "
        f"over {len(acks)}; later than 3 s: {result['late_acks']}",
        f"  all ended and delivered before the drain limit: {'yes' if drained else 'NO'}; "
        f"graceful stop exit status {stop_code}",
        "",
        f"RESOURCES (bot process, {len(soak.samples)} samples every 2 s)",
        "  RSS:        " + resources_line(soak.samples, "rss", "MiB", ".0f"),
        "  open files: " + resources_line(soak.samples, "fds", "", ".0f"),
        "  DB + WAL:   " + resources_line(soak.samples, "db", "MiB", ".2f"),
        f"  start-up to READY: {', '.join(f'{s:.0f}' for s in soak.bot.start_seconds)} s",
        "",
        "FAULTS",
        f"  {'fault':34} {'injected':>8} {'survived':>8} {'jobs lost':>9} {'acks > 3 s':>10}",
    ]
    for name, label in FAULT_LABELS.items():
        fault = soak.faults.get(name)
        if fault is None:
            continue
        lines.append(
            f"  {label:34} {fault.injected:>8} {fault.survived:>8} {fault.lost:>9} "
            f"{fault.acks_missed:>10}"
        )
    lines.append(
        f"  unexpected exits of the bot: {len(soak.bot.unexpected_exits)} "
        f"{soak.bot.unexpected_exits or ''}".rstrip()
    )
    for fault in soak.faults.values():
        for note in dict.fromkeys(fault.notes):
            lines.append(f"    {fault.name}: {note}")
    if soak.send_errors:
        lines.append(f"  user actions that raised: {len(soak.send_errors)}")
        lines.extend(f"    {e}" for e in soak.send_errors[:5])
    lines += [
        "",
        f"RESULT: jobs lost {len(lost) + result['acked_without_row']}, users not told "
        f"{len(not_told)}",
    ]
    if result["from_memory"]:
        lines.append(
            f"  delivered from memory (save failed; recorded as expired): jobs "
            f"{result['from_memory'][:10]}"
        )
    if result["no_file"]:
        lines.append(
            f"  defect: {len(result['no_file'])} done jobs delivered (from memory) whose row "
            f"names a PNG that is not on disk and not recorded as gone: jobs {result['no_file'][:10]}"
        )
    for job_id, why in list(lost.items())[:10]:
        lines.append(f"  lost job {job_id}: {why}")
    for job_id, why in list(not_told.items())[:10]:
        lines.append(f"  not told job {job_id}: {why}")
    return "\n".join(lines)


async def soak_main(plan: Plan, work: Path) -> int:
    soak = Soak(plan, work)
    await soak.start()
    sampler = asyncio.create_task(soak.sample())
    try:
        load = asyncio.create_task(soak.run_load())
        await asyncio.sleep(1.0)  # the fault plan's times count from the load's start
        await soak.run_faults()
        await load
        drained = await soak.drain()
        jobs = await soak.jobs_now()
    finally:
        sampler.cancel()
        stop_code = await soak.stop()
    result = soak.account(jobs)
    print(report(soak, result, drained, stop_code))
    print(f"(bot log and database: {work})")
    failed = result["lost"] or result["acked_without_row"] or result["not_told"]
    return 1 if failed or not drained else 0


def parse_args(argv: list[str] | None = None) -> Plan:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=None, help="/imagine commands (500)")
    parser.add_argument("--users", type=int, default=None, help="users sending them (100)")
    parser.add_argument("--minutes", type=float, default=None, help="length of the load (10)")
    parser.add_argument("--kills", type=int, default=None, help="kill -9 of the bot (5)")
    parser.add_argument("--quick", action="store_true", help="60 jobs, 20 users, 1.5 min")
    parser.add_argument("--ray", action="store_true", help="Ray painters, and kill one")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--faults",
        default="",
        help="comma-separated faults besides the kills, or none "
        f"(default all: {','.join(OTHER_FAULTS)})",
    )
    parser.add_argument("--drain-minutes", type=float, default=None, help="wait for the end")
    args = parser.parse_args(argv)
    quick = {"jobs": 60, "users": 20, "minutes": 1.5, "kills": 2, "drain_minutes": 5.0}
    full = {"jobs": 500, "users": 100, "minutes": 10.0, "kills": 5, "drain_minutes": 15.0}
    base = quick if args.quick else full
    values = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in base.items()}
    faults = tuple(f.strip() for f in args.faults.split(",") if f.strip())
    unknown = [f for f in faults if f not in FAULT_LABELS and f != "none"]
    if unknown:
        parser.error(f"unknown fault {unknown[0]!r}; choose from {', '.join(FAULT_LABELS)}")
    if "ray_actor" in faults and not args.ray:
        parser.error("the ray_actor fault needs --ray")
    return Plan(seed=args.seed, ray=args.ray, faults=faults, **values)


def main(argv: list[str] | None = None) -> int:
    plan = parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    return asyncio.run(soak_main(plan, work))


if __name__ == "__main__":
    sys.exit(main())
