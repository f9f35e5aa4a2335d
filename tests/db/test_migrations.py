"""connect() and migrations: pragmas, idempotence, upgrading an older file, packaging."""

from __future__ import annotations

import asyncio
import fnmatch
import tomllib
from pathlib import Path

import aiosqlite
import pytest

import db
from db.migrate import Migration
from tests.db.helpers import GUILD, MOD, T0, make_spec

REPO = Path(__file__).resolve().parents[2]


async def _scalar(conn: aiosqlite.Connection, sql: str) -> object:
    async with conn.execute(sql) as cursor:
        row = await cursor.fetchone()
    assert row is not None
    return row[0]


async def _schema(conn: aiosqlite.Connection) -> list[tuple[str, str]]:
    async with conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%' ORDER BY name"
    ) as cursor:
        return [(row[0], row[1]) for row in await cursor.fetchall()]


async def test_connect_creates_folder_and_sets_pragmas(db_path: Path) -> None:
    assert not await asyncio.to_thread(db_path.parent.exists)
    conn = await db.connect(db_path, busy_timeout=2.5)
    try:
        assert await asyncio.to_thread(db_path.exists)
        assert await _scalar(conn, "PRAGMA journal_mode") == "wal"
        assert await _scalar(conn, "PRAGMA foreign_keys") == 1
        assert await _scalar(conn, "PRAGMA busy_timeout") == 2500
        assert await db.schema_version(conn) == len(db.load_migrations())
        async with conn.execute("SELECT 1 AS one") as cursor:
            row = await cursor.fetchone()
        assert row["one"] == 1  # rows are addressable by name
    finally:
        await conn.close()


async def test_migrate_twice_is_a_no_op(conn: aiosqlite.Connection) -> None:
    before = await _schema(conn)
    version = await db.schema_version(conn)
    await db.create_job(conn, make_spec(1), now=T0)

    assert await db.migrate(conn) == version
    # Forcing every migration through again (as if the quick check were skipped) still skips
    # each one under the write lock instead of failing on "table already exists".
    migrations = db.load_migrations()
    assert await db.migrate(conn, migrations) == version

    assert await _schema(conn) == before
    assert (await db.queue_stats(conn)).queued == 1


async def test_older_database_is_upgraded_keeping_its_rows(db_path: Path) -> None:
    migrations = db.load_migrations()
    assert len(migrations) >= 2, "this test needs a database one migration behind"

    # Build the file as the previous release left it: only the first migration applied.
    await asyncio.to_thread(db_path.parent.mkdir, parents=True)
    raw = await aiosqlite.connect(db_path, isolation_level=None)
    assert await db.migrate(raw, migrations[:1]) == 1
    await raw.execute(
        "INSERT INTO users (id, first_seen, last_seen, jobs_submitted) VALUES (1, ?, ?, 1)",
        (T0, T0),
    )
    await raw.execute(
        "INSERT INTO jobs (user_id, guild_id, channel_id, prompt, seed, steps, width, height,"
        " generator, cutn, cut_pow, optimizer, created_at)"
        " VALUES (1, ?, 5, 'an old fox', 7, 50, 64, 64, 'pixels', 8, 1.0, 'adam', ?)",
        (GUILD, T0),
    )
    async with raw.execute("SELECT name FROM sqlite_master WHERE name = 'bans'") as cursor:
        assert await cursor.fetchone() is None  # the old schema has no moderation tables
    await raw.close()

    conn = await db.connect(db_path)
    try:
        assert await db.schema_version(conn) == len(migrations)
        old_job = await db.get_job(conn, 1)
        assert old_job is not None and old_job.prompt == "an old fox" and old_job.status == "queued"
        await db.ban_user(conn, GUILD, 2, actor_id=MOD, now=T0)  # a table from the newer migration
        assert await db.is_banned(conn, GUILD, 2)
    finally:
        await conn.close()


async def test_database_newer_than_the_code_is_refused(db_path: Path) -> None:
    conn = await db.connect(db_path)
    await conn.execute("PRAGMA user_version = 99")
    await conn.close()
    with pytest.raises(db.SchemaError, match="newer than this code"):
        await db.connect(db_path)


async def test_migrations_must_be_numbered_in_sequence(conn: aiosqlite.Connection) -> None:
    gap = [Migration(1, "a", "SELECT 1;"), Migration(3, "c", "SELECT 1;")]
    with pytest.raises(db.SchemaError, match="out of sequence"):
        await db.migrate(conn, gap)


async def test_failed_migration_rolls_back_and_keeps_the_version() -> None:
    good = Migration(1, "good", "CREATE TABLE a (x INTEGER);")
    bad = Migration(2, "bad", "CREATE TABLE b (x INTEGER);\nINSERT INTO nowhere VALUES (1);")
    raw = await aiosqlite.connect(":memory:", isolation_level=None)
    try:
        with pytest.raises(aiosqlite.OperationalError, match="nowhere"):
            await db.migrate(raw, [good, bad])
        assert await db.schema_version(raw) == 1
        async with raw.execute("SELECT name FROM sqlite_master WHERE name = 'b'") as cursor:
            assert await cursor.fetchone() is None  # the half-applied migration left nothing
    finally:
        await raw.close()


def test_statement_splitting_respects_quotes_comments_and_triggers() -> None:
    sql = """
    -- a comment; with a semicolon
    CREATE TABLE t (x TEXT DEFAULT 'a;b');
    CREATE TRIGGER t_ins AFTER INSERT ON t BEGIN
        UPDATE t SET x = 'c;d' WHERE rowid = new.rowid;
    END;
    -- trailing comment
    """
    statements = Migration(1, "t", sql).statements()
    assert len(statements) == 2
    assert statements[0].endswith("DEFAULT 'a;b');")
    assert statements[1].startswith("CREATE TRIGGER") and statements[1].endswith("END;")


def test_unfinished_statement_in_a_migration_is_an_error() -> None:
    with pytest.raises(db.SchemaError, match="ends inside a statement"):
        Migration(1, "t", "CREATE TABLE t (x INTEGER);\nCREATE TABLE u (").statements()


def test_migration_files_are_declared_as_package_data() -> None:
    """An installed (non-editable) package must carry db/migrations/*.sql."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    patterns = config["tool"]["setuptools"]["package-data"]["db"]
    files = sorted(p.relative_to(REPO / "db").as_posix() for p in (REPO / "db").rglob("*.sql"))
    assert files, "no migration files"
    for name in files:
        assert any(fnmatch.fnmatch(name, pattern) for pattern in patterns), name
    assert [f"migrations/{m.version:04d}_{m.name}.sql" for m in db.load_migrations()] == files
