"""Run the fake on its own: `python -m tests.fakediscord --port 8123`.

Prints the URLs to give a bot (DISCORD_API_BASE, DISCORD_GATEWAY_URL) and the token it must
use, then serves until interrupted. /_fake/state, /_fake/slash and /_fake/click (see
control.py) let you act as a user from outside.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import sys

from .server import FakeDiscord


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tests.fakediscord", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed)")
    parser.add_argument(
        "--token", default="fake-bot-token", help="the bot token the client must use"
    )
    parser.add_argument(
        "--no-ack-deadline",
        action="store_true",
        help="do not refuse interaction callbacks that come after Discord's 3 s",
    )
    parser.add_argument("--verbose", action="store_true", help="log every gateway event and call")
    return parser.parse_args(argv)


async def serve(args: argparse.Namespace) -> None:
    fake = FakeDiscord(
        token=args.token, interaction_ack_timeout=None if args.no_ack_deadline else 3.0
    )
    await fake.start(args.host, args.port)
    # One JSON line first, for scripts; then the same for people.
    print(
        json.dumps({"api_base": fake.api_base, "gateway_url": fake.gateway_url, "port": fake.port})
    )
    print(f"DISCORD_API_BASE={fake.api_base}")
    print(f"DISCORD_GATEWAY_URL={fake.gateway_url}")
    print("DISCORD_TOKEN=<the --token value>")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await fake.stop()


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO)
    asyncio.run(serve(args))


if __name__ == "__main__":
    main()
