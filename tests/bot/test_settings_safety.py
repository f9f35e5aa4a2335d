"""Settings for delivery, retention, direct messages and attachment origins: defaults that are
safe in production, and a clear error for a bad value."""

from __future__ import annotations

import pytest

from bot.attachments import DISCORD_CDN_ORIGINS
from bot.settings import SettingsError, load_settings

BASE = {"DISCORD_TOKEN": "t"}


def test_defaults_are_the_safe_ones() -> None:
    settings = load_settings(BASE)
    assert settings.allow_dms is False
    assert settings.attachment_origins == DISCORD_CDN_ORIGINS
    assert all(o.startswith("https://") for o in settings.attachment_origins)
    assert (settings.retention_days, settings.retention_max_gb) == (30.0, 20.0)
    assert (settings.final_edit_attempts, settings.redeliver_after) == (8, 30.0)


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("0", False), ("on", True)])
def test_allow_dms_reads_yes_and_no(raw: str, expected: bool) -> None:
    assert load_settings({**BASE, "IMAGINE_ALLOW_DMS": raw}).allow_dms is expected


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("IMAGINE_ALLOW_DMS", "maybe", "IMAGINE_ALLOW_DMS must be bool"),
        ("IMAGINE_ATTACHMENT_ORIGINS", "https://cdn.example/path", "not an origin"),
        ("IMAGINE_ATTACHMENT_ORIGINS", "ftp://cdn.example", "not an origin"),
        ("IMAGINE_RETENTION_DAYS", "-1", "retention_days must be 0"),
        ("IMAGINE_REDELIVER_AFTER", "0", "redeliver_after must be above 0"),
        ("IMAGINE_FINAL_EDIT_ATTEMPTS", "0", "final_edit_attempts must be 1 or more"),
    ],
)
def test_bad_values_are_named(name: str, value: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({**BASE, name: value})
