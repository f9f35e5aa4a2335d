"""The bot's settings: one frozen object, built in ``main()`` from the environment and an
optional TOML file, never at import time.

Precedence: environment variable > TOML file (named by ``IMAGINE_CONFIG``) > default. The TOML
file is flat; its keys are the field names below (``api_base = "..."``, ``edit_interval = 3``)
or the environment names (``DISCORD_API_BASE = "..."``).

The bot token is a secret: it is hidden from ``repr``, and ``RedactingFilter`` scrubs it (and
interaction tokens inside webhook URLs) from every log record.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

from bot.attachments import DISCORD_CDN_ORIGINS, check_origin
from bot.moderation.image_check import DEFAULT_IMAGE_THRESHOLD
from generation.workers import RAY_MISSING

DEFAULT_API_BASE = "https://discord.com/api/v10"
DEFAULT_GATEWAY_URL = "wss://gateway.discord.gg/"
# Square first (it is the default), then aspect ratios. Every side is a multiple of 16 so the
# VQGAN generators (downsampling factor 16) take all of them.
DEFAULT_SIZES = ("256x256", "384x384", "512x512", "384x256", "256x384", "448x256", "256x448")


class SettingsError(ValueError):
    """A setting is missing or has a value the bot cannot use; the message says which and how
    to fix it."""


@dataclass(frozen=True)
class Settings:
    """Everything an operator can set. Field names double as TOML keys."""

    token: str = field(repr=False)
    api_base: str = DEFAULT_API_BASE
    gateway_url: str = DEFAULT_GATEWAY_URL
    db_path: Path = Path("data/imagine.db")
    output_dir: Path = Path("data/outputs")
    # "tiny", a TOML file, or None for the engine's built-in defaults.
    models: str | None = None
    # "cuda", "cuda:1", "cpu"; None lets the engine choose.
    device: str | None = None
    # Guilds to sync the slash commands to (instant); empty = global sync (up to an hour).
    guild_ids: tuple[int, ...] = ()
    # Progress edits: at most one per message every edit_interval seconds, and at most
    # channel_edit_limit edits per channel_edit_window seconds across all messages of a channel
    # (Discord allows about 5 per 5 s; one slot is left for other messages of the bot).
    edit_interval: float = 3.0
    channel_edit_limit: int = 4
    channel_edit_window: float = 5.0
    # Interaction tokens live 15 minutes; the bot stops using one token_margin seconds early
    # and continues in a channel message.
    token_lifetime: float = 15 * 60.0
    token_margin: float = 30.0
    # Attachments: bytes downloaded at most, pixels decoded at most (decompression bombs).
    max_attachment_bytes: int = 8 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    # Defaults for /imagine options the user leaves out. What the operator does not set comes
    # from the models file's [defaults] (steps, size, cutn, generator), as in the CLI.
    default_steps: int = 250
    max_steps: int = 1000
    sizes: tuple[str, ...] = DEFAULT_SIZES
    default_cutn: int = 32
    # The generators users may pick, the first being the default. load_settings fills it from
    # the models file when IMAGINE_GENERATORS is not set; empty here means every generator.
    generators: tuple[str, ...] = ()
    progress_every: int = 10
    # Whole-bot queue cap; a restart puts a job back at most max_attempts times.
    global_queue_cap: int = 200
    max_attempts: int = 3
    # CPU niceness of the GPU worker's thread (Linux): on a busy CPU the event loop (answers,
    # heartbeats) goes first and the painting waits a little. 0 leaves it as it is.
    worker_niceness: int = 10
    # The moderation image check: CLIP image-to-text similarity at or above which a finished
    # picture counts as showing a blocked concept. Image-text similarities run far lower than
    # text-text ones, hence a threshold of its own (see bot/moderation/image_check.py).
    image_check_threshold: float = DEFAULT_IMAGE_THRESHOLD
    # How the operator's global blocked concepts (python -m bot.operator block-concept) treat a
    # finished picture everywhere, direct messages included: off, spoiler or withhold.
    image_check_global: str = "withhold"
    # Delivery: the final edit is tried final_edit_attempts times (with backoff) before the
    # picture counts as undelivered; it is sent again after redeliver_after seconds, then
    # twice as long each time up to 15 minutes, and at every start of the bot.
    final_edit_attempts: int = 8
    redeliver_after: float = 30.0
    # Tries of delivering a picture before the bot stops and tells its user to fetch it with
    # /repost (about two hours with the doubling pauses); the file is kept.
    redeliver_attempts: int = 12
    # Retention of attachments and finished pictures: an hourly sweep deletes files older than
    # retention_days, then the oldest until all take at most retention_max_gb (0: no limit).
    retention_days: float = 30.0
    retention_max_gb: float = 20.0
    # Retention of database rows (the same hourly sweep): finished jobs older than
    # job_rows_days and moderation log entries older than modlog_days are deleted (0: keep).
    # Interaction tokens are cleared once the picture is delivered or the token has expired.
    job_rows_days: float = 90.0
    modlog_days: float = 365.0
    # Refused prompts recorded in the moderation log per user per hour; more refusals are
    # still refused, only not logged one by one (a flood cannot fill the log).
    refusals_logged_per_hour: int = 20
    # Limits on one user across all servers and DMs together (the servers' own /limits apply
    # per server): jobs per hour and jobs waiting or running at once.
    user_jobs_per_hour: int = 60
    user_waiting: int = 10
    # Commands in direct messages: off by default (no server's moderators see them). When on,
    # the operator's global bans, blocked terms and concepts apply there.
    allow_dms: bool = False
    # Where attachments may be downloaded from (scheme://host[:port]): Discord's CDN over https.
    # Tests add the fake Discord's address; widening it in production lets users point the bot
    # at any server.
    attachment_origins: tuple[str, ...] = DISCORD_CDN_ORIGINS
    # Who paints: "local" (one GPU thread in this process) or "ray" (ray_workers actors, each
    # asking Ray for ray_gpus GPUs, 0 = CPU workers; ray_address: a cluster to join, None starts
    # a local one). See docs/scaling.md.
    workers: str = "local"
    ray_address: str | None = None
    ray_workers: int = 1
    ray_gpus: float = 1.0
    # Seconds a job may paint before it is stopped (a stuck download or kernel must not hold a
    # worker forever); a 1000-step 512 px VQGAN picture takes minutes on a GPU.
    job_timeout: float = 3600.0
    # Jobs one painter (the local GPU thread, or each Ray painter) paints together in one step
    # (continuous batching; vqgan, clipgen and pixels jobs of one size). 0: 4 on a GPU, 1 on a
    # CPU, where a batch only makes each job slower. 1: one job at a time.
    batch_size: int = 0
    # /rank answers per user per minute (each is a CLIP call on a worker).
    rank_per_minute: int = 6
    log_level: str = "INFO"
    # A file the bot rewrites every few seconds for a container's HEALTHCHECK
    # (`python -m bot.health` reads it); None: no heartbeat file.
    health_file: Path | None = None

    def __post_init__(self) -> None:
        if not self.token or not self.token.strip():
            raise SettingsError(
                "DISCORD_TOKEN is not set: put the bot token from the Discord developer portal "
                "in the DISCORD_TOKEN environment variable"
            )
        for name in ("edit_interval", "channel_edit_window", "token_lifetime"):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be above 0, not {getattr(self, name)}")
        for name in (
            "channel_edit_limit",
            "max_attachment_bytes",
            "max_image_pixels",
            "default_steps",
            "max_steps",
            "progress_every",
            "global_queue_cap",
            "max_attempts",
            "final_edit_attempts",
        ):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be 1 or more, not {getattr(self, name)}")
        if not -1.0 <= self.image_check_threshold <= 1.0:
            raise SettingsError(
                f"image_check_threshold must be between -1 and 1, not {self.image_check_threshold}"
            )
        if self.image_check_global not in ("off", "spoiler", "withhold"):
            raise SettingsError(
                f"image_check_global must be off, spoiler or withhold, not "
                f"{self.image_check_global!r}"
            )
        for name in ("redeliver_attempts", "user_jobs_per_hour", "user_waiting"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be 1 or more, not {getattr(self, name)}")
        for name in ("job_rows_days", "modlog_days", "refusals_logged_per_hour"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be 0 or more, not {getattr(self, name)}")
        if self.redeliver_after <= 0:
            raise SettingsError(f"redeliver_after must be above 0, not {self.redeliver_after}")
        for name in ("retention_days", "retention_max_gb"):
            if getattr(self, name) < 0:
                raise SettingsError(
                    f"{name} must be 0 (no limit) or more, not {getattr(self, name)}"
                )
        for origin in self.attachment_origins:
            try:
                check_origin(origin)
            except ValueError as error:
                raise SettingsError(f"attachment_origins: {error}") from None
        if not 0 <= self.worker_niceness <= 19:
            raise SettingsError(f"worker_niceness must be 0 to 19, not {self.worker_niceness}")
        self._check_workers()
        if self.token_margin < 0 or self.token_margin >= self.token_lifetime:
            raise SettingsError("token_margin must be 0 or more and below token_lifetime")
        if self.default_steps > self.max_steps:
            raise SettingsError(
                f"default_steps ({self.default_steps}) is above max_steps ({self.max_steps})"
            )
        if not self.sizes:
            raise SettingsError("sizes is empty; give at least one size like 256x256")
        for size in self.sizes:
            parse_size(size)
        self._check_generation_options()

    def _check_generation_options(self) -> None:
        if not isinstance(logging.getLevelName(self.log_level.upper()), int):
            raise SettingsError(
                f"log_level must be one of DEBUG, INFO, WARNING, ERROR, CRITICAL, not "
                f"{self.log_level!r}"
            )
        if self.default_cutn < 1:
            raise SettingsError(f"default_cutn must be 1 or more, not {self.default_cutn}")
        from generation.generators import generator_names

        known = generator_names()
        unknown = [name for name in self.generators if name not in known]
        if unknown:
            raise SettingsError(
                f"generators names {', '.join(map(repr, unknown))}, which this bot does not "
                f"have; choose from {', '.join(known)}"
            )

    def _check_workers(self) -> None:
        if self.workers not in ("local", "ray"):
            raise SettingsError(f"IMAGINE_WORKERS must be local or ray, not {self.workers!r}")
        if self.ray_workers < 1 or self.rank_per_minute < 1:
            raise SettingsError("ray_workers and rank_per_minute must be 1 or more")
        if self.ray_gpus < 0:
            raise SettingsError(f"ray_gpus must be 0 (CPU workers) or more, not {self.ray_gpus}")
        if self.job_timeout <= 0:
            raise SettingsError(f"job_timeout must be above 0 seconds, not {self.job_timeout}")
        if not 0 <= self.batch_size <= 64:
            raise SettingsError(
                f"batch_size must be 0 (4 on a GPU, 1 on a CPU) to 64, not {self.batch_size}"
            )
        if self.workers == "ray" and importlib.util.find_spec("ray") is None:
            raise SettingsError(RAY_MISSING)

    @property
    def input_dir(self) -> Path:
        """Where downloaded attachments are kept, so a job can be rebuilt after a restart."""
        return self.output_dir / "inputs"

    @property
    def default_size(self) -> tuple[int, int]:
        return parse_size(self.sizes[0])


def parse_size(text: str) -> tuple[int, int]:
    """ "384x256" -> (384, 256)."""
    match = re.fullmatch(r"\s*(\d{1,5})\s*[xX×]\s*(\d{1,5})\s*", text)
    if match is None:
        raise SettingsError(f"size {text!r} is not WIDTHxHEIGHT, e.g. 256x256")
    return int(match.group(1)), int(match.group(2))


# Environment name -> field name. The names in DESIGN.md first, then the bot's own.
ENV_NAMES: dict[str, str] = {
    "DISCORD_TOKEN": "token",
    "DISCORD_API_BASE": "api_base",
    "DISCORD_GATEWAY_URL": "gateway_url",
    "IMAGINE_DB": "db_path",
    "IMAGINE_OUTPUT_DIR": "output_dir",
    "IMAGINE_MODELS": "models",
    "IMAGINE_DEVICE": "device",
    "IMAGINE_GUILD_IDS": "guild_ids",
    "IMAGINE_EDIT_INTERVAL": "edit_interval",
    "IMAGINE_CHANNEL_EDIT_LIMIT": "channel_edit_limit",
    "IMAGINE_CHANNEL_EDIT_WINDOW": "channel_edit_window",
    "IMAGINE_TOKEN_LIFETIME": "token_lifetime",
    "IMAGINE_TOKEN_MARGIN": "token_margin",
    "IMAGINE_MAX_ATTACHMENT_BYTES": "max_attachment_bytes",
    "IMAGINE_MAX_IMAGE_PIXELS": "max_image_pixels",
    "IMAGINE_DEFAULT_STEPS": "default_steps",
    "IMAGINE_DEFAULT_CUTN": "default_cutn",
    "IMAGINE_GENERATORS": "generators",
    "IMAGINE_MAX_STEPS": "max_steps",
    "IMAGINE_SIZES": "sizes",
    "IMAGINE_PROGRESS_EVERY": "progress_every",
    "IMAGINE_GLOBAL_QUEUE_CAP": "global_queue_cap",
    "IMAGINE_MAX_ATTEMPTS": "max_attempts",
    "IMAGINE_WORKER_NICENESS": "worker_niceness",
    "IMAGINE_IMAGE_CHECK_THRESHOLD": "image_check_threshold",
    "IMAGINE_FINAL_EDIT_ATTEMPTS": "final_edit_attempts",
    "IMAGINE_REDELIVER_AFTER": "redeliver_after",
    "IMAGINE_REDELIVER_ATTEMPTS": "redeliver_attempts",
    "IMAGINE_IMAGE_CHECK_GLOBAL": "image_check_global",
    "IMAGINE_JOB_ROWS_DAYS": "job_rows_days",
    "IMAGINE_MODLOG_DAYS": "modlog_days",
    "IMAGINE_REFUSALS_LOGGED_PER_HOUR": "refusals_logged_per_hour",
    "IMAGINE_USER_JOBS_PER_HOUR": "user_jobs_per_hour",
    "IMAGINE_USER_WAITING": "user_waiting",
    "IMAGINE_RETENTION_DAYS": "retention_days",
    "IMAGINE_RETENTION_MAX_GB": "retention_max_gb",
    "IMAGINE_ALLOW_DMS": "allow_dms",
    "IMAGINE_ATTACHMENT_ORIGINS": "attachment_origins",
    "IMAGINE_WORKERS": "workers",
    "IMAGINE_RAY_ADDRESS": "ray_address",
    "IMAGINE_RAY_WORKERS": "ray_workers",
    "IMAGINE_RAY_GPUS": "ray_gpus",
    "IMAGINE_JOB_TIMEOUT": "job_timeout",
    "IMAGINE_BATCH_SIZE": "batch_size",
    "IMAGINE_RANK_PER_MINUTE": "rank_per_minute",
    "IMAGINE_LOG_LEVEL": "log_level",
    "IMAGINE_HEALTH_FILE": "health_file",
}
_FIELD_TYPES: dict[str, str] = {f.name: str(f.type) for f in fields(Settings)}


def _convert(name: str, value: Any, source: str) -> Any:
    """Turn a TOML value or an environment string into the field's type."""
    kind = _FIELD_TYPES[name]
    try:
        if kind == "Path":
            return Path(str(value)).expanduser()
        if kind == "Path | None":
            text = str(value).strip()
            return Path(text).expanduser() if text else None
        if kind == "int":
            if isinstance(value, bool):
                raise ValueError
            return int(value)
        if kind == "bool":
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind == "float":
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind.startswith("tuple"):
            items = value.split(",") if isinstance(value, str) else list(value)
            items = [str(item).strip() for item in items if str(item).strip()]
            return tuple(int(i) for i in items) if "int" in kind else tuple(items)
        if kind == "str | None":
            text = str(value).strip()
            return text or None
        return str(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{source} must be {kind}, not {value!r}") from None


def load_settings(
    environ: Mapping[str, str] | None = None, config_path: str | Path | None = None
) -> Settings:
    """Build the settings from ``environ`` (default ``os.environ``) and the TOML file named by
    ``config_path`` or ``IMAGINE_CONFIG``. Raises SettingsError with a fixable message."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_path if config_path is not None else env.get("IMAGINE_CONFIG")
    if path:
        try:
            with open(path, "rb") as file:
                table = tomllib.load(file)
        except FileNotFoundError:
            raise SettingsError(f"IMAGINE_CONFIG names {path}, which does not exist") from None
        except tomllib.TOMLDecodeError as error:
            raise SettingsError(f"{path} is not valid TOML: {error}") from None
        for key, value in table.items():
            name = ENV_NAMES.get(key, key)
            if name not in _FIELD_TYPES:
                known = ", ".join(sorted(_FIELD_TYPES))
                raise SettingsError(f"{path}: unknown setting {key!r}; known settings: {known}")
            values[name] = _convert(name, value, f"{key} in {path}")
    for env_name, name in ENV_NAMES.items():
        raw = env.get(env_name)
        if raw is not None and raw != "":
            values[name] = _convert(name, raw, env_name)
    if not values.get("token"):
        raise SettingsError(
            "DISCORD_TOKEN is not set: put the bot token from the Discord developer portal "
            "in the DISCORD_TOKEN environment variable"
        )
    return Settings(**with_models_defaults(values))


def with_models_defaults(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` plus what the models file (``models``) says for settings the operator left
    unset: its [defaults] steps, size and cutn, and the generators it offers (see
    ModelsConfig.offered_generators)."""
    from generation.errors import BadRequest
    from generation.generators import generator_names
    from generation.models_config import ModelsConfig

    try:
        config = ModelsConfig.load(values.get("models"))
    except BadRequest as error:
        raise SettingsError(f"IMAGINE_MODELS: {error}") from None
    filled = dict(values)
    where = f"in the [defaults] of {config.source}"
    for key, name in (("steps", "default_steps"), ("cutn", "default_cutn")):
        if name not in filled and key in config.defaults:
            filled[name] = _convert(name, config.defaults[key], f"{key} {where}")
    if "sizes" not in filled and "size" in config.defaults:
        size = str(config.defaults["size"])
        size = f"{size}x{size}" if size.isdigit() else size
        parse_size(size)
        filled["sizes"] = (size, *(s for s in DEFAULT_SIZES if s != size))
    if "generators" not in filled:
        filled["generators"] = config.offered_generators(generator_names())
    return filled


# Interaction tokens sit in webhook and callback URLs: /webhooks/<app id>/<token>/...,
# /interactions/<id>/<token>/callback. They are short-lived secrets; keep them out of logs too.
_URL_TOKEN = re.compile(r"(/(?:webhooks|interactions)/\d+/)[A-Za-z0-9_.\-]+")
# ... and in gateway payloads that discord.py logs at DEBUG: 'token': '...' / "token": "...".
_KEYED_TOKEN = re.compile(r"""(['"](?:token|interaction_token)['"]\s*:\s*['"])[^'"]+""")


class RedactingFilter(logging.Filter):
    """Replaces the bot token and interaction tokens in log records with [REDACTED]."""

    def __init__(self, *secrets: str) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if s)

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        text = _URL_TOKEN.sub(r"\1[REDACTED]", text)
        return _KEYED_TOKEN.sub(r"\1[REDACTED]", text)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = self.redact(message)
        if record.exc_info and record.exc_info[1] is not None:
            # Format the traceback now so it can be scrubbed as well.
            formatted = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self.redact(formatted)
            record.exc_info = None
        if cleaned != message or record.args:
            record.msg = cleaned
            record.args = None
        return True


def configure_logging(settings: Settings) -> RedactingFilter:
    """Log to stderr with the token filter on the handler (so records from every logger,
    discord.py's included, pass through it)."""
    redactor = RedactingFilter(settings.token)
    handler = logging.StreamHandler()
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    handler.addFilter(redactor)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.log_level.upper())
    # aiosqlite logs every statement with its parameters at DEBUG (interaction tokens among
    # them); its statements are not worth a debug log.
    logging.getLogger("aiosqlite").setLevel(max(logging.INFO, root.level))
    return redactor


# One line per setting for ``python -m bot --help`` (tests check that every field has one, so
# the help cannot fall behind the fields above).
SETTING_HELP: dict[str, str] = {
    "token": "the bot token from the Discord developer portal (required; never logged)",
    "api_base": "Discord's REST base URL (a REST proxy or a test server)",
    "gateway_url": "Discord's gateway websocket URL",
    "db_path": "the SQLite database file",
    "output_dir": "where finished pictures (and downloaded attachments, in inputs/) are kept",
    "models": "a models TOML file, or 'tiny' (built-in tiny random models for smoke runs)",
    "device": "cuda, cuda:1 or cpu (default: the engine chooses)",
    "guild_ids": "comma-separated guild ids to sync the commands to at once (default: global)",
    "edit_interval": "seconds between two edits of one job's message",
    "channel_edit_limit": "edits per channel_edit_window seconds across one channel's messages",
    "channel_edit_window": "the window of channel_edit_limit, in seconds",
    "token_lifetime": "seconds an interaction token lives (Discord: 15 minutes)",
    "token_margin": "stop using a token this many seconds before it dies",
    "max_attachment_bytes": "largest attachment downloaded, in bytes",
    "max_image_pixels": "largest attachment decoded, in pixels (decompression bombs)",
    "default_steps": "steps when /imagine leaves them out (default: the models file's)",
    "max_steps": "most steps a user may ask for (re-rolls of older pictures included)",
    "sizes": "comma-separated sizes users may pick, WIDTHxHEIGHT, the first the default",
    "default_cutn": "CLIP cutouts per step",
    "generators": "comma-separated generators users may pick, the first the default",
    "progress_every": "a progress frame every this many steps",
    "global_queue_cap": "jobs waiting in the whole bot at most",
    "max_attempts": "times a job is tried again after a restart or a lost worker",
    "worker_niceness": "CPU niceness of the painting thread, 0-19 (0 leaves it)",
    "image_check_threshold": "CLIP similarity from which a picture shows a blocked concept",
    "final_edit_attempts": "tries of a final edit before the picture counts as undelivered",
    "redeliver_after": "seconds before an undelivered picture is sent again (then doubling)",
    "redeliver_attempts": "tries of delivering a picture before the user is told to /repost it",
    "image_check_global": "off, spoiler or withhold: pictures near the operator's global concepts",
    "job_rows_days": "delete finished job rows older than this many days (0: keep)",
    "modlog_days": "delete moderation log entries older than this many days (0: keep)",
    "refusals_logged_per_hour": "refused prompts logged per user per hour (0: none)",
    "user_jobs_per_hour": "jobs one user may start per hour across all servers",
    "user_waiting": "jobs one user may have waiting or running across all servers",
    "retention_days": "delete pictures and attachments older than this (0: keep)",
    "retention_max_gb": "then delete the oldest until they take at most this (0: no limit)",
    "allow_dms": "take commands in direct messages (true/false)",
    "attachment_origins": "comma-separated scheme://host origins attachments may come from",
    "workers": "local (one GPU thread here) or ray",
    "ray_address": "a Ray cluster to join (default: start a local one)",
    "ray_workers": "Ray painters to start",
    "ray_gpus": "GPUs each Ray painter asks for (0: CPU painters)",
    "job_timeout": "seconds a job may paint before it is stopped",
    "batch_size": "jobs painted together in one step (0: 4 on a GPU, 1 on a CPU)",
    "rank_per_minute": "/rank answers per user per minute",
    "log_level": "DEBUG, INFO, WARNING, ERROR or CRITICAL",
    "health_file": "a heartbeat file for health checks (python -m bot.health reads it)",
}


def settings_help() -> str:
    """The settings as ``python -m bot --help`` lists them: environment name, TOML key,
    default and what it does, all read from the definitions above."""
    by_field = {name: env for env, name in ENV_NAMES.items()}
    lines = [
        "settings (environment variable, or the same key in the TOML file named by "
        "IMAGINE_CONFIG; the environment wins):",
    ]
    for item in fields(Settings):
        env = by_field.get(item.name, "")
        if item.name == "token":
            default = "required"
        elif item.default is not MISSING:
            value = item.default
            if isinstance(value, tuple):
                value = ",".join(map(str, value)) or "(none)"
            default = "(none)" if value is None else str(value)
        else:
            default = "(none)"
        lines.append(f"  {env or item.name:30} {item.name} = {default}")
        lines.append(f"      {SETTING_HELP.get(item.name, '(no description)')}")
    return "\n".join(lines)
