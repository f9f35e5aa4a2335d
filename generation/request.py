"""Plain values that cross between the engine and its callers (the bot, the CLI, benchmarks).

A ``GenerationRequest`` holds only plain values (paths, not tensors or PIL images), so the bot
can store it in its database and rebuild it after a restart.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from generation.errors import BadRequest, GenerationCancelled
from generation.prompts import parse_image_prompt, parse_prompts

MIN_SIDE = 32
MAX_SIDE = 1024
# A long VQGAN run is around 1000 steps; more than this is almost surely a typo, and it would
# hold the one GPU for hours.
MAX_STEPS = 5000
MAX_CUTN = 256
MAX_SEED = 2**63 - 1
OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass(frozen=True)
class GenerationRequest:
    """Everything that decides the picture. Same request + same device = same image."""

    prompt: str
    seed: int = 0
    steps: int = 250
    width: int = 256
    height: int = 256
    generator: str = "vqgan"
    cutn: int = 32
    cut_pow: float = 1.0
    # None: the generator's own default (VQGAN 0.1, pixels 0.05, ...).
    learning_rate: float | None = None
    optimizer: str = "adam"
    # Path of an image to start from, and how strongly to keep pulling toward it (0 = only start).
    init_image: str | None = None
    init_weight: float = 0.0
    # Image prompts as "path" or "path:weight" or "path:weight:stop".
    image_prompts: tuple[str, ...] = ()
    # Noise prompts: (seed, weight) pairs; a random embedding to steer toward or away from.
    noise_prompts: tuple[tuple[int, float], ...] = ()
    # Diffusion generators: strength of the CLIP gradient (the step it takes grows in
    # proportion to it), and how much of an init image is painted over. ``strength`` is the
    # share of the schedule that runs from the noised init image, as in img2img (0.1 keeps it
    # almost as it is, 1 paints over it entirely); None: the generator's default. ``skip_steps``
    # says the same as an exact count of skipped steps; give one or the other (skipped_steps).
    guidance_scale: float = 500.0
    skip_steps: int = 0
    strength: float | None = None
    # A progress image every this many steps (and always at the last step).
    progress_every: int = 10

    def replace(self, **changes: Any) -> GenerationRequest:
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Progress:
    """A snapshot handed to the progress callback every ``progress_every`` steps."""

    step: int  # steps done so far, 1-based
    total: int
    loss: float
    image: Image.Image
    elapsed: float  # seconds since the loop started

    @property
    def eta(self) -> float:
        """Seconds left, from the average step time so far."""
        if self.step <= 0:
            return float("nan")
        return self.elapsed / self.step * (self.total - self.step)


@dataclass(frozen=True)
class GenerationResult:
    image: Image.Image
    request: GenerationRequest
    steps_done: int
    elapsed: float
    loss: float
    # Cosine similarity between CLIP's embedding of the final image and of the prompt text
    # (weighted positive prompts), from the first perceptor model.
    clip_score: float | None
    # What goes into the PNG's text chunks (see generation.png).
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass
class RunControl:
    """How a running generator talks to its caller: cancellation, progress, and a hook that the
    worker uses to run short tasks (text embeddings for moderation) between steps.

    Generators call ``check(step)`` at the start of every step, so a cancel takes effect within
    one step.
    """

    cancel: threading.Event = field(default_factory=threading.Event)
    on_progress: Callable[[Progress], None] | None = None
    between_steps: Callable[[], None] | None = None

    def check(self, step: int) -> None:
        if self.between_steps is not None:
            self.between_steps()
        if self.cancel.is_set():
            raise GenerationCancelled(step)

    def wants_progress(self, step: int, total: int, every: int) -> bool:
        """True at every ``every``-th step and always at the last one."""
        return self.on_progress is not None and (step % max(every, 1) == 0 or step == total)


def check_request(request: GenerationRequest, *, known_generators: tuple[str, ...] = ()) -> None:
    """Reject values no generator can use, with a message the user can act on.

    Generator-specific checks (a size that must be a multiple of the VQGAN's factor, weights
    that are missing) happen in the generator, which knows its model.
    """
    prompts = parse_prompts(request.prompt)  # raises BadRequest for an empty prompt or bad weight
    image_prompts = [parse_image_prompt(spec) for spec in request.image_prompts]
    weights = [p.weight for p in prompts] + [p.weight for p in image_prompts]
    weights += [weight for _, weight in request.noise_prompts]
    if all(weight == 0 for weight in weights):
        # Nothing would steer the picture; an image prompt alone (text weight 0) is fine.
        raise BadRequest("every prompt has weight 0: give the text or an image prompt a weight")
    if known_generators and request.generator not in known_generators:
        raise BadRequest(
            f"unknown generator {request.generator!r}; choose one of {', '.join(known_generators)}"
        )
    if not 1 <= request.steps <= MAX_STEPS:
        raise BadRequest(f"steps must be between 1 and {MAX_STEPS}, not {request.steps}")
    for name, side in (("width", request.width), ("height", request.height)):
        if not MIN_SIDE <= side <= MAX_SIDE:
            raise BadRequest(f"{name} must be between {MIN_SIDE} and {MAX_SIDE} pixels, not {side}")
    if not 0 <= request.seed <= MAX_SEED:
        raise BadRequest(f"seed must be between 0 and {MAX_SEED}, not {request.seed}")
    if not 1 <= request.cutn <= MAX_CUTN:
        raise BadRequest(f"cutn must be between 1 and {MAX_CUTN}, not {request.cutn}")
    if not request.cut_pow > 0:
        raise BadRequest(f"cut_pow must be above 0, not {request.cut_pow}")
    if request.learning_rate is not None and not 0 < request.learning_rate <= 10:
        raise BadRequest(
            f"learning rate must be above 0 and at most 10, not {request.learning_rate}"
        )
    if request.optimizer not in OPTIMIZERS:
        raise BadRequest(
            f"unknown optimizer {request.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    if request.init_weight < 0:
        raise BadRequest(f"init weight must be 0 or more, not {request.init_weight}")
    if request.init_weight > 0 and request.init_image is None:
        raise BadRequest("an init weight needs an init image")
    if not 0 <= request.skip_steps < request.steps:
        raise BadRequest(
            f"skip steps must be at least 0 and below steps ({request.steps}), "
            f"not {request.skip_steps}"
        )
    if request.strength is not None:
        if request.init_image is None:
            raise BadRequest("strength says how much of an init image to repaint: give one too")
        if not 0 < request.strength <= 1:
            raise BadRequest(
                f"strength must be above 0 and at most 1 (0.1 keeps the init image almost as "
                f"it is, 1 paints over it), not {request.strength}"
            )
        if request.skip_steps:
            raise BadRequest("give strength or skip steps, not both: they say the same thing")
    if request.guidance_scale < 0:
        raise BadRequest(f"guidance scale must be 0 or more, not {request.guidance_scale}")
    if request.progress_every < 1:
        raise BadRequest(f"progress_every must be at least 1, not {request.progress_every}")


def skipped_steps(request: GenerationRequest, default_strength: float) -> int:
    """How many of the first schedule steps a diffusion generator skips: none without an init
    image; ``skip_steps`` when it is given; else the share ``1 - strength`` of them (the
    generator's ``default_strength`` when the request has none), leaving one step at least."""
    if request.init_image is None:
        return 0
    if request.skip_steps:
        return request.skip_steps
    strength = default_strength if request.strength is None else request.strength
    return request.steps - max(1, round(request.steps * strength))


def check_multiple(request: GenerationRequest, factor: int, generator: str) -> None:
    """Raise BadRequest unless width and height are multiples of ``factor``, naming the two
    nearest sizes that would work."""
    for name, side in (("width", request.width), ("height", request.height)):
        if side % factor:
            below = max(factor, side // factor * factor)
            above = below + factor
            raise BadRequest(
                f"{name} {side} is not a multiple of {factor}, which the {generator} generator "
                f"needs; use {below} or {above}"
            )
