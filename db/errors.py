"""The exceptions the database layer raises.

Refusals (``UserBanned``, ``LimitExceeded``) carry a ``message`` written for the person who asked,
so the bot can show ``str(error)`` in an ephemeral reply as it is.
"""

from __future__ import annotations


class DatabaseError(Exception):
    """Base class of everything this package raises on purpose."""


class SchemaError(DatabaseError):
    """The database file or the migration files are not what this code expects."""


class JobNotFound(DatabaseError, LookupError):
    """No job has this id."""

    def __init__(self, job_id: int) -> None:
        super().__init__(f"no job with id {job_id}")
        self.job_id = job_id


class AlreadyExists(DatabaseError, ValueError):
    """The row to add is already there (a blocked term or concept); ``existing`` is that row."""

    def __init__(self, message: str, existing: object) -> None:
        super().__init__(message)
        self.existing = existing


class AdmissionRefused(DatabaseError):
    """A job was not created; ``message`` says why and what the user can do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UserBanned(AdmissionRefused):
    """The user is banned from the bot in this guild."""

    def __init__(self, guild_id: int | None, user_id: int, reason: str | None) -> None:
        # guild_id 0 is the operator's scope (db.GLOBAL_SCOPE): banned from the whole bot.
        text = "You are banned from using this bot" + (" in this server" if guild_id else "")
        text += f" ({reason})." if reason else "."
        super().__init__(text + " Ask a moderator if you think this is a mistake.")
        self.guild_id = guild_id
        self.user_id = user_id
        self.reason = reason


class LimitExceeded(AdmissionRefused):
    """A queue limit was hit.

    ``limit_name`` is one of ``jobs_per_hour``, ``waiting_per_user``, ``waiting_per_guild``,
    ``global_queue_cap``, ``user_jobs_per_hour``, ``user_waiting`` (the last two across guilds);
    ``limit_value`` the limit in force; ``retry_after`` the seconds until a new job would be
    admitted when that can be known (the hourly limits), else None.
    """

    def __init__(
        self, limit_name: str, limit_value: int, retry_after: float | None, message: str
    ) -> None:
        super().__init__(message)
        self.limit_name = limit_name
        self.limit_value = limit_value
        self.retry_after = retry_after
