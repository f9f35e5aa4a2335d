"""Settings: environment and TOML, precedence, clear errors, and the token kept secret."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.settings import (
    DEFAULT_API_BASE,
    RedactingFilter,
    Settings,
    SettingsError,
    load_settings,
    parse_size,
)

TOKEN = "MTIzNDU2Nzg5MDEyMzQ1Njc4.GhIjKl.very-secret-token-value_123"
REPO = Path(__file__).resolve().parents[2]


def test_defaults_and_design_names() -> None:
    settings = load_settings(
        {
            "DISCORD_TOKEN": TOKEN,
            "DISCORD_API_BASE": "http://127.0.0.1:9999/api/v10",
            "DISCORD_GATEWAY_URL": "ws://127.0.0.1:9999/gateway",
            "IMAGINE_DB": "/tmp/x/imagine.db",
            "IMAGINE_OUTPUT_DIR": "/tmp/x/out",
            "IMAGINE_MODELS": "tiny",
        }
    )
    assert settings.token == TOKEN
    assert settings.api_base == "http://127.0.0.1:9999/api/v10"
    assert settings.gateway_url == "ws://127.0.0.1:9999/gateway"
    assert settings.db_path == Path("/tmp/x/imagine.db")
    assert settings.output_dir == Path("/tmp/x/out")
    assert settings.input_dir == Path("/tmp/x/out/inputs")
    assert settings.models == "tiny"
    assert load_settings({"DISCORD_TOKEN": TOKEN}).api_base == DEFAULT_API_BASE


def test_token_never_in_repr_or_str() -> None:
    settings = load_settings({"DISCORD_TOKEN": TOKEN})
    assert TOKEN not in repr(settings)
    assert TOKEN not in str(settings)
    assert "very-secret" not in f"{settings!r}"


def test_missing_token_is_a_clear_error() -> None:
    with pytest.raises(SettingsError, match="DISCORD_TOKEN"):
        load_settings({})
    with pytest.raises(SettingsError, match="DISCORD_TOKEN"):
        load_settings({"DISCORD_TOKEN": ""})


def test_toml_file_and_env_precedence(tmp_path: Path) -> None:
    config = tmp_path / "bot.toml"
    config.write_text(
        'DISCORD_TOKEN = "from-file"\n'
        "edit_interval = 1.5\n"
        'sizes = ["64x64", "96x64"]\n'
        "guild_ids = [1, 2]\n"
        'IMAGINE_DB = "/data/file.db"\n'
    )
    settings = load_settings({"IMAGINE_CONFIG": str(config), "IMAGINE_DB": "/env/wins.db"})
    assert settings.token == "from-file"
    assert settings.edit_interval == 1.5
    assert settings.sizes == ("64x64", "96x64")
    assert settings.default_size == (64, 64)
    assert settings.guild_ids == (1, 2)
    assert settings.db_path == Path("/env/wins.db")


def test_env_lists_and_numbers() -> None:
    settings = load_settings(
        {
            "DISCORD_TOKEN": TOKEN,
            "IMAGINE_GUILD_IDS": "11, 22",
            "IMAGINE_SIZES": "64x64,128x64",
            "IMAGINE_MAX_ATTACHMENT_BYTES": "1024",
            "IMAGINE_TOKEN_LIFETIME": "90",
            "IMAGINE_TOKEN_MARGIN": "5",
        }
    )
    assert settings.guild_ids == (11, 22)
    assert settings.sizes == ("64x64", "128x64")
    assert settings.max_attachment_bytes == 1024
    assert settings.token_lifetime == 90.0


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGINE_EDIT_INTERVAL": "soon"}, "IMAGINE_EDIT_INTERVAL must be float"),
        ({"IMAGINE_EDIT_INTERVAL": "0"}, "edit_interval must be above 0"),
        ({"IMAGINE_SIZES": "big"}, "WIDTHxHEIGHT"),
        ({"IMAGINE_DEFAULT_STEPS": "900", "IMAGINE_MAX_STEPS": "100"}, "above max_steps"),
        ({"IMAGINE_CHANNEL_EDIT_LIMIT": "0"}, "channel_edit_limit must be 1 or more"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({"DISCORD_TOKEN": TOKEN, **env})


def test_unknown_toml_key_and_missing_file(tmp_path: Path) -> None:
    config = tmp_path / "bot.toml"
    config.write_text('DISCORD_TOKEN = "x"\nedit_intervall = 2\n')
    with pytest.raises(SettingsError, match="unknown setting 'edit_intervall'"):
        load_settings({"IMAGINE_CONFIG": str(config)})
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings({"IMAGINE_CONFIG": str(tmp_path / "nope.toml")})


def test_parse_size() -> None:
    assert parse_size("384x256") == (384, 256)
    assert parse_size(" 64 × 96 ") == (64, 96)
    with pytest.raises(SettingsError):
        parse_size("64")


def test_redacting_filter_scrubs_token_and_interaction_tokens(
    caplog: pytest.LogCaptureFixture,
) -> None:
    logger = logging.getLogger("test.redact")
    redactor = RedactingFilter(TOKEN)
    logger.addFilter(redactor)
    try:
        with caplog.at_level(logging.DEBUG, logger="test.redact"):
            logger.info("logging in with %s", TOKEN)
            logger.debug(
                "PATCH http://x/api/v10/webhooks/123/aW50ZXJhY3Rpb246dG9rZW4/messages/@original"
            )
            logger.debug("WebSocket Event: {'t': 'INTERACTION_CREATE', 'd': {'token': 'c2VjcmV0'}}")
            try:
                raise RuntimeError(f"failed with token {TOKEN}")
            except RuntimeError:
                logger.exception("boom")
    finally:
        logger.removeFilter(redactor)
    text = caplog.text
    assert TOKEN not in text
    assert "aW50ZXJhY3Rpb246dG9rZW4" not in text
    assert "c2VjcmV0" not in text
    assert text.count("[REDACTED]") >= 4
    assert "/webhooks/123/[REDACTED]/messages/@original" in text


def test_settings_is_frozen() -> None:
    settings = load_settings({"DISCORD_TOKEN": TOKEN})
    with pytest.raises(AttributeError):
        settings.token = "other"  # type: ignore[misc]
    assert isinstance(settings, Settings)


def test_python_m_bot_without_token_exits_2_with_one_line(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISCORD_TOKEN", "IMAGINE_CONFIG")}
    result = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "DISCORD_TOKEN" in lines[0]
