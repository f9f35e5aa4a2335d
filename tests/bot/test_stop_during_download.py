"""A stop (SIGTERM, as `docker stop` sends) while the first model download runs ends
`python -m bot` at once and cleanly: exit code 0, one log line, no traceback, and no
half-downloaded file where the weights belong."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.misbehaving_server import MisbehavingServer, serving

REPO = Path(__file__).resolve().parents[2]
STARTUP_TIMEOUT = 180.0  # a cold start imports torch before it asks for the weights
STOP_TIMEOUT = 30.0  # far below the download's own 60 s read timeout


@pytest.fixture
def server() -> Iterator[MisbehavingServer]:
    yield from serving()


@pytest.mark.slow
def test_sigterm_during_the_first_download_exits_cleanly(
    server: MisbehavingServer, tmp_path: Path
) -> None:
    # 2 MiB announced in full, 1 MiB sent, then the body stalls until the test ends.
    server.files["/open_clip_model.safetensors"] = b"\0" * (2 << 20)
    server.plans["/open_clip_model.safetensors"] = ["hold"]
    cache = tmp_path / "cache"
    models = tmp_path / "models.toml"
    models.write_text(
        f'cache_dir = "{cache}"\n'
        "download = true\n"
        "[[clip]]\n"
        'model = "ViT-B-32"\n'
        f'pretrained = "{server.url("/open_clip_model.safetensors")}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "IMAGINE_"))}
    env.update(
        DISCORD_TOKEN="not-a-real-token",
        # Never reached: the stop comes before the bot connects.
        DISCORD_API_BASE="http://127.0.0.1:9/api/v10",
        DISCORD_GATEWAY_URL="ws://127.0.0.1:9/gateway",
        IMAGINE_DB=str(tmp_path / "imagine.db"),
        IMAGINE_OUTPUT_DIR=str(tmp_path / "outputs"),
        IMAGINE_MODELS=str(models),
        IMAGINE_GENERATORS="pixels",
        IMAGINE_DEVICE="cpu",
    )
    log_path = tmp_path / "bot.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bot"], cwd=REPO, env=env, stdout=log, stderr=log
        )
    try:
        waited = 0.0
        while not server.held.wait(0.5):  # the request, or the bot's early exit
            waited += 0.5
            if process.poll() is not None or waited > STARTUP_TIMEOUT:
                pytest.fail(f"the bot never asked for the weights:\n{log_path.read_text()}")
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=STOP_TIMEOUT)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    output = log_path.read_text()
    assert code == 0, output
    assert "stopped while the models were loading" in output
    assert "Traceback" not in output
    # Only the weights file itself would be used; a .part (or a lock) next to it never is.
    used = [p for p in cache.rglob("*") if p.name.endswith("open_clip_model.safetensors")]
    assert used == [], f"a half-downloaded file would be used: {used}"
