"""`python -m tests.fakediscord` serves on its own and says where."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[2]


async def test_standalone_server_prints_its_urls_and_serves() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tests.fakediscord",
        "--port",
        "0",
        "--token",
        "standalone-token",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        first_line = await asyncio.wait_for(process.stdout.readline(), 20)
        urls = json.loads(first_line)
        assert urls["api_base"].endswith("/api/v10")
        assert urls["gateway_url"].startswith("ws://")
        headers = {"Authorization": "Bot standalone-token"}
        async with aiohttp.ClientSession(headers=headers) as session:
            async with session.get(f"{urls['api_base']}/users/@me") as response:
                assert response.status == 200
            base = urls["api_base"].removesuffix("/api/v10")
            async with session.get(f"{base}/_fake/state") as response:
                state = await response.json()
        assert state["global_commands"] == []
        assert state["calls"][0].startswith("#0 GET /users/@me")
    finally:
        process.terminate()
        assert await asyncio.wait_for(process.wait(), 10) == 0
