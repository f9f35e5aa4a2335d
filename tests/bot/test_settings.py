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


def _cuda_usable() -> bool:
    """Whether torch sees a GPU (asked in a child process: the bot tests never import torch)."""
    probe = "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"
    return subprocess.run([sys.executable, "-c", probe], timeout=120).returncode == 0


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


# --------------------------------------------------------------------------- the models file


def test_the_models_files_defaults_apply_unless_the_operator_sets_them() -> None:
    tiny = load_settings({"DISCORD_TOKEN": TOKEN, "IMAGINE_MODELS": "tiny"})
    # What the CLI paints with IMAGINE_MODELS=tiny (generation/configs/tiny.toml [defaults]).
    assert (tiny.default_steps, tiny.default_size, tiny.default_cutn) == (50, (128, 128), 16)
    assert tiny.sizes[0] == "128x128" and "256x256" in tiny.sizes
    explicit = load_settings(
        {
            "DISCORD_TOKEN": TOKEN,
            "IMAGINE_MODELS": "tiny",
            "IMAGINE_DEFAULT_STEPS": "80",
            "IMAGINE_SIZES": "64x64,96x64",
            "IMAGINE_DEFAULT_CUTN": "8",
        }
    )
    assert (explicit.default_steps, explicit.default_size, explicit.default_cutn) == (
        80,
        (64, 64),
        8,
    )
    built_in = load_settings({"DISCORD_TOKEN": TOKEN})  # defaults.toml has no [defaults]
    assert (built_in.default_steps, built_in.default_size, built_in.default_cutn) == (
        250,
        (256, 256),
        32,
    )


def test_generators_default_to_what_the_models_file_configures(tmp_path: Path) -> None:
    # The built-in defaults list every published model; they offer their default generator.
    assert load_settings({"DISCORD_TOKEN": TOKEN}).generators == ("vqgan",)
    # A models file of the operator's own: its default generator, then every one it configures.
    models = tmp_path / "models.toml"
    models.write_text(
        '[defaults]\ngenerator = "diffusion"\nsize = 256\n[[clip]]\nmodel = "ViT-B-32"\n'
        '[generators.vqgan]\ndefault = "x"\n[generators.diffusion]\nmodel = "a/b"\n'
    )
    settings = load_settings({"DISCORD_TOKEN": TOKEN, "IMAGINE_MODELS": str(models)})
    assert settings.generators == ("diffusion", "vqgan") and settings.default_size == (256, 256)
    # The tiny preset's models cost nothing to load: every generator, its default first.
    tiny = load_settings({"DISCORD_TOKEN": TOKEN, "IMAGINE_MODELS": "tiny"}).generators
    assert tiny[0] == "vqgan" and {"pixels", "diffusion", "siren"} <= set(tiny)
    chosen = load_settings(
        {"DISCORD_TOKEN": TOKEN, "IMAGINE_MODELS": "tiny", "IMAGINE_GENERATORS": "pixels, vqgan"}
    )
    assert chosen.generators == ("pixels", "vqgan")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGINE_GENERATORS": "vqgan,dalle9"}, "'dalle9', which this bot does not have"),
        ({"IMAGINE_LOG_LEVEL": "LOUD"}, "log_level must be one of DEBUG"),
        ({"IMAGINE_MODELS": "/no/such/models.toml"}, "IMAGINE_MODELS: models file"),
        ({"IMAGINE_DEFAULT_CUTN": "0"}, "default_cutn must be 1 or more"),
    ],
)
def test_bad_generation_settings_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_settings({"DISCORD_TOKEN": TOKEN, **env})


def _run_bot(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("IMAGINE_", "DISCORD_"))}
    return subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=REPO,
        env={
            **keep,
            "DISCORD_TOKEN": TOKEN,
            "IMAGINE_DB": str(tmp_path / "imagine.db"),
            "IMAGINE_OUTPUT_DIR": str(tmp_path / "out"),
            "IMAGINE_CACHE_DIR": str(tmp_path / "cache"),
            # No route to Discord: the bot must stop before it would connect.
            "DISCORD_API_BASE": "http://127.0.0.1:9/api/v10",
            **env,
        },
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_python_m_bot_with_a_bad_log_level_exits_2_with_one_line(tmp_path: Path) -> None:
    result = _run_bot(tmp_path, IMAGINE_LOG_LEVEL="LOUD")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "log_level" in lines[0] and "LOUD" in lines[0]


def test_real_models_on_a_cpu_nobody_asked_for_stop_the_bot_with_one_line(tmp_path) -> None:
    if _cuda_usable():
        pytest.skip("a usable GPU is present: the bot would load the real models")
    result = _run_bot(tmp_path, IMAGINE_LOG_LEVEL="ERROR")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "IMAGINE_DEVICE=cpu" in lines[0] and "no usable CUDA GPU" in lines[0]
