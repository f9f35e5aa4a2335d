"""The bot as benchmarks/soak.py runs it: exactly `python -m bot` (same settings from the
environment, same start-up, same worker), plus one test-only fault that lives here and not in
the product: a job whose prompt contains HANG_MARK hangs inside its first step, as a stuck
kernel or a download that never ends would. Ordinary prompts paint as usual.

    python benchmarks/soak_bot.py     # with DISCORD_* / IMAGINE_* set, as for `python -m bot`
"""

from __future__ import annotations

import dataclasses
import sys
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

HANG_MARK = "soak-hang-in-a-step"
# How long a hung step blocks. Longer than the soak's job time limit plus the worker's grace,
# so the worker must abandon the thread; bounded, so the stuck thread ends by itself later.
HANG_SECONDS = 120.0


def install_hang_fault() -> None:
    """Wrap the engine's generate(): the worker looks it up when it runs a job, so every job
    goes through the wrapper; only prompts with HANG_MARK are changed."""
    from generation import engine

    real_generate = engine.generate

    def generate(request: Any, store: Any, control: Any) -> Any:
        if HANG_MARK in request.prompt:
            inner = control.between_steps

            def stuck_step() -> None:
                if inner is not None:
                    inner()
                threading.Event().wait(HANG_SECONDS)  # never set: blocks like a hung kernel

            control = dataclasses.replace(control, between_steps=stuck_step)
        return real_generate(request, store, control)

    engine.generate = generate


def main() -> int:
    import bot.__main__ as bot_main

    install_hang_fault()
    return bot_main.main([])


if __name__ == "__main__":
    sys.exit(main())
