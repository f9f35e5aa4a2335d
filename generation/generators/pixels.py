"""Pixels + CLIP: optimise the image's pixels themselves until CLIP sees the prompt.

The simplest generator there is, and one that needs no weights beyond CLIP. Each pixel is the
sigmoid of a free parameter, so the image always stays in [0, 1] and no value ever gets stuck
at a clamp. Raw pixels let CLIP find high-frequency patterns it likes more than people do; the
``fourier`` generator parameterises the same image in a smoother basis.

It has no section of its own in the models TOML: it uses the perceptor and the request only.
"""

from __future__ import annotations

import time

import torch

from generation.guidance import ClipGuide
from generation.images import load_image, pil_to_tensor, tensor_to_pil
from generation.loop import make_optimizer, report, torch_generator
from generation.models import ModelStore
from generation.request import GenerationRequest, GenerationResult, RunControl

NAME = "pixels"
DEFAULT_LR = 0.05
# Standard deviation of the random starting logits: a faint, grey-centred noise.
INIT_NOISE = 0.5
# Keeps logit() finite for pure black and pure white pixels of an init image.
EPS = 1e-3


def check(request: GenerationRequest, store: ModelStore) -> None:
    """Any size the request allows works; load CLIP now so a missing weight fails first."""
    store.perceptor()


def run(request: GenerationRequest, store: ModelStore, control: RunControl) -> GenerationResult:
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

    started = time.perf_counter()
    loss_value = float("nan")
    for step in range(request.steps):
        # 3. Stop here if the caller cancelled (within one step of the request).
        control.check(step)
        # 4. The image is the sigmoid of the logits: always in [0, 1].
        image = torch.sigmoid(logits)  # [1, 3, H, W]
        # 5. Score it with CLIP and step the logits.
        loss = guide.loss(image)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        # 6. Progress with the image this step scored.
        report(control, request, step + 1, loss_value, image, started)

    # 7. The final image, from the logits after the last step.
    with torch.no_grad():
        final = torch.sigmoid(logits)
        score = guide.similarity(final)
    return GenerationResult(
        image=tensor_to_pil(final),
        request=request,
        steps_done=request.steps,
        elapsed=time.perf_counter() - started,
        loss=loss_value,
        clip_score=score,
        metadata={"parameterisation": "sigmoid pixels"},
    )
