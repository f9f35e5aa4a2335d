"""SIREN + CLIP (as in Deep Daze): the image is a small network that maps each pixel's
coordinates to its colour, and CLIP trains the network.

A SIREN (Sitzmann et al., "Implicit Neural Representations with Periodic Activation Functions",
2020) is a multilayer perceptron whose activations are sines, sin(w0 * (W x + b)). Its
initialisation keeps every layer's output distributed the same way however deep the network
is, which lets it represent fine detail; the network's smoothness gives the pictures their
flowing look. It needs no weights beyond CLIP: the network starts random, from the seed.

With an init image, the network's output is added to the image's pre-activation (logit) and its
output layer starts at zero, so the first step shows the init image exactly and the network
learns a change to it.

Optional keys in the models TOML:

    [generators.siren]
    layers = 16        # sine layers (plus one linear output layer)
    hidden = 256       # width of every hidden layer
    w0 = 30.0          # frequency of the sines (higher: finer detail)
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import nn

from generation.errors import BadRequest
from generation.guidance import ClipGuide
from generation.images import load_image, pil_to_tensor, tensor_to_pil
from generation.loop import make_optimizer, report, torch_generator
from generation.models import ModelStore
from generation.request import GenerationRequest, GenerationResult, RunControl

NAME = "siren"
# Deep Daze's learning rate: SIRENs with w0 = 30 diverge at the rates pixels take.
DEFAULT_LR = 1e-5
EPS = 1e-3


@dataclass(frozen=True)
class SirenSettings:
    layers: int = 16
    hidden: int = 256
    w0: float = 30.0


# The tiny preset: a network small enough that a test run takes well under a second on a CPU.
TINY_SETTINGS = SirenSettings(layers=3, hidden=32, w0=30.0)


class Siren(nn.Module):
    """coordinates [N, 2] in [-1, 1] -> values [N, 3] (unbounded; the caller squashes them)."""

    def __init__(
        self, settings: SirenSettings, generator: torch.Generator, *, zero_output: bool = False
    ) -> None:
        super().__init__()
        self.w0 = settings.w0
        device = generator.device
        sizes = [2] + [settings.hidden] * settings.layers
        self.hidden = nn.ModuleList(
            nn.Linear(n_in, n_out, device=device)
            for n_in, n_out in zip(sizes, sizes[1:], strict=False)
        )
        self.output = nn.Linear(settings.hidden, 3, device=device)
        with torch.no_grad():
            for index, layer in enumerate(self.hidden):
                n_in = layer.in_features
                # The first layer spans [-1, 1] inputs across several periods; later layers are
                # scaled so that w0 * (W x) stays distributed as the paper derives.
                bound = 1 / n_in if index == 0 else math.sqrt(6 / n_in) / self.w0
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
            # zero_output: the network starts as exactly 0 (the init image, unchanged); the
            # output layer's gradient is not zero, so it learns from the first step.
            bound = 0.0 if zero_output else math.sqrt(6 / settings.hidden) / self.w0
            self.output.weight.uniform_(-bound, bound, generator=generator)
            self.output.bias.zero_()

    def forward(self, coordinates: torch.Tensor) -> torch.Tensor:
        x = coordinates  # [N, 2]
        for layer in self.hidden:
            x = torch.sin(self.w0 * layer(x))  # [N, hidden]
        return self.output(x)  # [N, 3]


def coordinate_grid(height: int, width: int, device: torch.device) -> torch.Tensor:
    """[H*W, 2] (x, y) pixel centres; the longer side spans [-1, 1] and the shorter keeps the
    aspect ratio, so a wide image is not a stretched square one."""
    longest = max(height, width)
    ys = (torch.arange(height, device=device) * 2 + 1 - height) / longest
    xs = (torch.arange(width, device=device) * 2 + 1 - width) / longest
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")  # [H, W] each
    return torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)


def settings_for(store: ModelStore) -> SirenSettings:
    """[generators.siren] from the models TOML, over the defaults (tiny ones for the tiny
    preset)."""
    base = TINY_SETTINGS if store.is_tiny else SirenSettings()
    section = store.config.generator_section(NAME)
    try:
        settings = SirenSettings(
            layers=int(section.get("layers", base.layers)),
            hidden=int(section.get("hidden", base.hidden)),
            w0=float(section.get("w0", base.w0)),
        )
    except (TypeError, ValueError):
        settings = None
    if settings is None or not (
        1 <= settings.layers <= 64 and 1 <= settings.hidden <= 4096 and settings.w0 > 0
    ):
        raise BadRequest(
            f"[generators.siren] in {store.config.source} needs layers from 1 to 64, hidden from "
            f"1 to 4096 and w0 above 0"
        )
    return settings


def check(request: GenerationRequest, store: ModelStore) -> None:
    """Check the network settings and load CLIP now, so a missing weight fails first."""
    settings_for(store)
    store.perceptor()


def run(request: GenerationRequest, store: ModelStore, control: RunControl) -> GenerationResult:
    device = store.device
    generator = torch_generator(request.seed, device)
    settings = settings_for(store)
    height, width = request.height, request.width

    # 1. Text, image and noise prompts are embedded once, for every CLIP model.
    guide = ClipGuide.from_request(request, store.perceptor(), generator)

    # 2. The network, initialised from the seed, and the pixel coordinates it is asked about.
    #    With an init image it learns an offset to the image's logits, starting from zero.
    network = Siren(settings, generator, zero_output=bool(request.init_image))
    coordinates = coordinate_grid(height, width, device)  # [H*W, 2]
    if request.init_image:
        pixels = pil_to_tensor(load_image(request.init_image), (width, height)).to(device)
        base = torch.logit(pixels.clamp(EPS, 1 - EPS))  # [1, 3, H, W]
    else:
        base = torch.zeros(1, 3, height, width, device=device)
    optimizer = make_optimizer(
        request.optimizer, network.parameters(), request.learning_rate or DEFAULT_LR
    )

    def synth() -> torch.Tensor:
        """The network's image [1, 3, H, W] in [0, 1]."""
        values = network(coordinates)  # [H*W, 3]
        offset = values.T.reshape(1, 3, height, width)
        return torch.sigmoid(base + offset)

    started = time.perf_counter()
    loss_value = float("nan")
    for step in range(request.steps):
        # 3. Stop here if the caller cancelled (within one step of the request).
        control.check(step)
        # 4. Ask the network for every pixel's colour.
        image = synth()  # [1, 3, H, W]
        # 5. Score the image with CLIP and train the network one step.
        loss = guide.loss(image)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        # 6. Progress with the image this step scored.
        report(control, request, step + 1, loss_value, image, started)

    # 7. The final image, from the network after the last step.
    with torch.no_grad():
        final = synth()
        score = guide.similarity(final)
    return GenerationResult(
        image=tensor_to_pil(final),
        request=request,
        steps_done=request.steps,
        elapsed=time.perf_counter() - started,
        loss=loss_value,
        clip_score=score,
        metadata={"siren": f"{settings.layers}x{settings.hidden}, w0 {settings.w0:g}"},
    )
