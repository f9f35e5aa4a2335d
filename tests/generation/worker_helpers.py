"""Stand-ins for the GPU worker's tests: a store that loads nothing and generators that step,
hold or hang on Events the test controls."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from PIL import Image

from generation.errors import BadRequest
from generation.request import GenerationResult, Progress

TIMEOUT = 10  # the most a held step waits for the test to release it


class FakeStore:
    device = "cpu"
    is_tiny = True

    def get_or_load(self, key: str, loader: Callable[[], Any]) -> Any:
        return loader()

    def describe(self) -> str:
        return "fake-clip/random:1"


class SteppingGenerator:
    """Runs ``request.steps`` steps; each step may be held until the test releases it."""

    def __init__(self, hold_at: int | None = None) -> None:
        self.hold_at = hold_at
        self.reached_hold = threading.Event()
        self.release = threading.Event()
        self.steps_run: list[int] = []
        self.threads: set[str] = set()

    def __call__(self, request, store, control):
        self.threads.add(threading.current_thread().name)
        if request.prompt == "explode":
            raise KeyError("boom")
        if request.prompt == "bad":
            raise BadRequest("width 250 is not a multiple of 16")
        image = Image.new("RGB", (request.width, request.height), (request.seed % 256, 0, 0))
        for i in range(request.steps):
            control.check(i)
            self.steps_run.append(i)
            if self.hold_at == i:
                self.reached_hold.set()
                assert self.release.wait(TIMEOUT)
            step = i + 1
            if control.wants_progress(step, request.steps, request.progress_every):
                control.on_progress(Progress(step, request.steps, 1.0 / step, image, 0.01 * step))
        return GenerationResult(
            image=image,
            request=request,
            steps_done=request.steps,
            elapsed=0.1,
            loss=0.5,
            clip_score=0.25,
            metadata={"prompt": request.prompt, "seed": str(request.seed)},
        )


class HangingGenerator(SteppingGenerator):
    """``prompt == "hang"``: blocks inside a step and ignores cancel (a download that never
    ends) until ``let_go`` is set or ``hold`` seconds pass; other prompts step as usual."""

    def __init__(self, let_go: threading.Event | None = None, hold: float = TIMEOUT * 3) -> None:
        super().__init__()
        self.hanging = threading.Event()
        self.let_go = let_go or threading.Event()
        self.hold = hold
        self.hung = 0

    def __call__(self, request, store, control):
        if request.prompt == "hang":
            self.hung += 1
            self.hanging.set()
            self.let_go.wait(self.hold)
        return super().__call__(request, store, control)
