"""Versioned schema migrations: ``db/migrations/NNNN_name.sql`` applied in order.

The schema version is SQLite's ``PRAGMA user_version`` (0 for a new file). Each pending
migration runs in its own ``BEGIN IMMEDIATE`` transaction together with the version bump, and
the version is read again once the write lock is held, so two processes starting at once apply
each migration exactly once. A migration is never edited once released: a change of schema is a
new file.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

import aiosqlite

from db.errors import SchemaError
from db.transaction import transaction

_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    def statements(self) -> list[str]:
        """The script cut into single statements (``execute`` runs one at a time, and
        ``executescript`` would commit the open transaction first)."""
        statements: list[str] = []
        buffer = ""
        *pieces, rest = self.sql.split(";")
        for piece in pieces:
            buffer += piece + ";"
            # complete_statement knows about quotes, comments and CREATE TRIGGER ... END, so a
            # ';' inside them does not end the statement. It is a pure parser, no database.
            if sqlite3.complete_statement(buffer):
                if _strip_comments(buffer).strip(" \t\r\n;"):
                    statements.append(buffer.strip())
                buffer = ""
        if _strip_comments(buffer + rest).strip(" \t\r\n;"):
            raise SchemaError(
                f"migration {self.version:04d}_{self.name} ends inside a statement; "
                "end every statement with ';'"
            )
        return statements


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())


def _read_packaged_migrations() -> list[Migration]:
    folder = resources.files("db") / "migrations"
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _NAME.match(entry.name)
        if match:
            found.append(
                Migration(int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8"))
            )
    found.sort(key=lambda m: m.version)
    return found


def check_sequence(migrations: Sequence[Migration]) -> None:
    """Versions must run 1, 2, 3, ... with no gap or duplicate."""
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise SchemaError(
                f"migration {migration.version:04d}_{migration.name} is out of sequence: "
                f"expected version {expected}; migration files must be numbered 0001, 0002, ..."
            )


def load_migrations() -> list[Migration]:
    """The migrations shipped in ``db/migrations``, in order (reads files: call it from a
    thread, or use ``migrate()`` which does)."""
    migrations = _read_packaged_migrations()
    if not migrations:
        raise SchemaError("no migration files found in db/migrations; the package is incomplete")
    check_sequence(migrations)
    return migrations


async def schema_version(conn: aiosqlite.Connection) -> int:
    async with conn.execute("PRAGMA user_version") as cursor:
        row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def migrate(conn: aiosqlite.Connection, migrations: Sequence[Migration] | None = None) -> int:
    """Apply the migrations above the database's version; returns the version reached.

    ``migrations`` defaults to the packaged files; tests pass a prefix of them to build an
    older database.
    """
    if migrations is None:
        migrations = await asyncio.to_thread(load_migrations)
    else:
        check_sequence(migrations)
    latest = len(migrations)
    if await schema_version(conn) == latest:
        return latest  # the usual start-up: nothing to do, no write lock taken
    for migration in migrations:
        async with transaction(conn):
            current = await schema_version(conn)
            if current >= migration.version:
                continue
            for statement in migration.statements():
                await conn.execute(statement)
            await conn.execute(f"PRAGMA user_version = {migration.version}")
    version = await schema_version(conn)
    if version > latest:
        raise SchemaError(
            f"the database is at schema version {version}, newer than this code knows "
            f"({latest}); run a newer version of the bot or restore a matching backup"
        )
    return version
