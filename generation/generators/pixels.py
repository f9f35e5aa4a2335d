"""Pixels + CLIP: optimise the image's pixels themselves until CLIP sees the prompt.

The simplest generator there is, and one that needs no weights beyond CLIP. Each pixel is the
sigmoid of a free parameter, so the image always stays in [0, 1] and no value ever gets stuck
at a clamp. Raw pixels let CLIP find high-frequency patterns it likes more than people do; the
``fourier`` generator parameterises the same image in a smoother basis.

It has no section of its own in the models TOML: it uses the perceptor and the request only.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from generation.guidance import ClipGuide, batched_losses
from generation.images import load_image, pil_to_tensor, tensor_to_pil
from generation.loop import make_optimizer, report, torch_generator
from generation.models import ModelStore
from generation.request import GenerationRequest, GenerationResult, RunControl
from generation.steps import run_alone

NAME = "pixels"
DEFAULT_LR = 0.05
# Standard deviation of the random starting logits: a faint, grey-centred noise.
INIT_NOISE = 0.5
# Keeps logit() finite for pure black and pure white pixels of an init image.
EPS = 1e-3


def check(request: GenerationRequest, store: ModelStore) -> None:
    """Any size the request allows works; load CLIP now so a missing weight fails first."""
    store.perceptor()


def batch_key(request: GenerationRequest, store: ModelStore) -> Hashable:
    """Jobs of one size share a step (their pixels stack into one batch)."""
    return (NAME, request.width, request.height)


def run(request: GenerationRequest, store: ModelStore, control: RunControl) -> GenerationResult:
    return run_alone(sys.modules[__name__], request, store, control)


@dataclass(eq=False)
class State:
    """One job's part of a batch: its prompts, logits, optimiser and random generator."""

    request: GenerationRequest
    control: RunControl
    generator: torch.Generator
    guide: ClipGuide
    logits: torch.Tensor  # [1, 3, H, W], the parameters this job optimises
    optimizer: torch.optim.Optimizer
    started: float
    steps_done: int = 0
    total: int = 0
    last_loss: float = float("nan")


def start(request: GenerationRequest, store: ModelStore, control: RunControl) -> State:
    device = store.device
    generator = torch_generator(request.seed, device)

    # 1. Text, image and noise prompts are embedded once, for every CLIP model.
    guide = ClipGuide.from_request(request, store.perceptor(), generator)

    # 2. Starting logits: the init image's, or random noise from the seed.
    shape = (1, 3, request.height, request.width)
    if request.init_image:
        pixels = pil_to_tensor(load_image(request.init_image), (request.width, request.height)).to(
            device
        )  # [1, 3, H, W]
        logits = torch.logit(pixels.clamp(EPS, 1 - EPS))
    else:
        logits = torch.randn(shape, generator=generator, device=device) * INIT_NOISE
    logits = logits.detach().clone().requires_grad_(True)  # [1, 3, H, W]
    optimizer = make_optimizer(request.optimizer, [logits], request.learning_rate or DEFAULT_LR)
    return State(
        request, control, generator, guide, logits, optimizer, time.perf_counter(), 0, request.steps
    )


def step(states: Sequence[State], store: ModelStore, shared: dict[str, Any]) -> None:
    """One step for every job: one CLIP pass over all their cutouts."""
    # 3. Each image is the sigmoid of its logits: always in [0, 1].
    images = torch.sigmoid(torch.cat([s.logits for s in states]))  # [B, 3, H, W]
    # 4. Score each with its own prompts and step each job's logits with its own optimiser
    #    (loss i depends on logits i alone).
    losses = batched_losses([s.guide for s in states], images)  # [B]
    for s in states:
        s.optimizer.zero_grad(set_to_none=True)
    losses.sum().backward()
    for s in states:
        s.optimizer.step()
    # 5. Progress with the image each job's step scored.
    for i, (s, loss) in enumerate(zip(states, losses.detach().tolist(), strict=True)):
        s.last_loss = loss
        s.steps_done += 1
        report(s.control, s.request, s.steps_done, loss, images[i : i + 1].detach(), s.started)


def finish(state: State, store: ModelStore) -> GenerationResult:
    # 6. The final image, from the logits after the last step.
    with torch.no_grad():
        final = torch.sigmoid(state.logits)
        score = state.guide.similarity(final)
    return GenerationResult(
        image=tensor_to_pil(final),
        request=state.request,
        steps_done=state.steps_done,
        elapsed=time.perf_counter() - state.started,
        loss=state.last_loss,
        clip_score=score,
        metadata={"parameterisation": "sigmoid pixels"},
    )
