"""bot.moderation is pure logic: the cogs call it, and it must not pull in the heavy layers."""

from __future__ import annotations

import subprocess
import sys


def test_moderation_imports_neither_discord_nor_torch_nor_the_database() -> None:
    # A fresh interpreter, so modules imported by other tests do not hide an import; whatever
    # the bot package itself imports is not held against bot.moderation.
    code = (
        "import sys, bot\n"
        "before = set(sys.modules)\n"
        "import bot.moderation, bot.moderation.concept_eval\n"
        "added = {name.split('.')[0] for name in set(sys.modules) - before}\n"
        "print(sorted(added & {'discord', 'torch', 'db', 'aiosqlite', 'generation'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"
