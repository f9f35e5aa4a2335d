"""Fourier + CLIP: optimise the image in a smooth, colour-decorrelated Fourier basis.

Raw pixels give CLIP a free hand with high frequencies, and it fills the image with fine
patterns. Here the free parameters are the image's 2-D spectrum, scaled by 1/frequency, so a
step of the same size moves the coarse structure far more than the fine detail (natural images
have that 1/f spectrum too). The three channels of the inverse transform are mixed into RGB by
the square root of natural images' colour covariance, so a step changes luminance and colour
independently instead of pushing R, G and B against each other. A sigmoid keeps the result in
[0, 1]. This is the parameterisation of feature-visualisation work (Olah et al., "Feature
Visualization", Distill 2017), written here from its description.

Optional keys in the models TOML (it needs no weights beyond CLIP):

    [generators.fourier]
    decay = 1.0     # spectrum scale 1/f**decay: higher is smoother
"""

from __future__ import annotations

import time

import torch

from generation.errors import BadRequest
from generation.guidance import ClipGuide
from generation.images import load_image, pil_to_tensor, tensor_to_pil
from generation.loop import make_optimizer, report, torch_generator
from generation.models import ModelStore
from generation.request import GenerationRequest, GenerationResult, RunControl

NAME = "fourier"
DEFAULT_LR = 0.05
DEFAULT_DECAY = 1.0
# Standard deviation of the random starting spectrum (in units of the scaled basis).
INIT_NOISE = 0.5
EPS = 1e-3

# Square root of the colour covariance of natural images (from ImageNet statistics), columns
# scaled so the largest has unit norm: row i says how much each decorrelated channel adds to
# R, G or B. The first channel is luminance (all positive), the others colour contrasts.
COLOUR_SQRT_COVARIANCE = torch.tensor(
    [[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]]
)
COLOUR_MIX = COLOUR_SQRT_COVARIANCE / COLOUR_SQRT_COVARIANCE.norm(dim=0).max()


def check(request: GenerationRequest, store: ModelStore) -> None:
    """Any size the request allows works; check the decay setting and load CLIP now so a
    missing weight fails before any work."""
    _decay(store)
    store.perceptor()


def run(request: GenerationRequest, store: ModelStore, control: RunControl) -> GenerationResult:
    device = store.device
    generator = torch_generator(request.seed, device)
    height, width = request.height, request.width
    scale = spectrum_scale(height, width, _decay(store)).to(device)  # [H, W//2+1]
    mix = COLOUR_MIX.to(device)  # [3, 3]

    def synth(spectrum: torch.Tensor) -> torch.Tensor:
        """spectrum [1, 3, H, W//2+1, 2] -> image [1, 3, H, W] in [0, 1]."""
        return spectrum_to_image(spectrum, scale, mix, (height, width))

    # 1. Text, image and noise prompts are embedded once, for every CLIP model.
    guide = ClipGuide.from_request(request, store.perceptor(), generator)

    # 2. Starting spectrum: the init image's exact inverse, or random noise from the seed.
    if request.init_image:
        pixels = pil_to_tensor(load_image(request.init_image), (width, height)).to(device)
        spectrum = image_to_spectrum(pixels, scale, mix)
    else:
        shape = (1, 3, height, width // 2 + 1, 2)
        spectrum = torch.randn(shape, generator=generator, device=device) * INIT_NOISE
    spectrum = spectrum.detach().clone().requires_grad_(True)  # [1, 3, H, W//2+1, 2]
    optimizer = make_optimizer(request.optimizer, [spectrum], request.learning_rate or DEFAULT_LR)

    started = time.perf_counter()
    loss_value = float("nan")
    for step in range(request.steps):
        # 3. Stop here if the caller cancelled (within one step of the request).
        control.check(step)
        # 4. Spectrum -> decorrelated channels -> RGB -> sigmoid.
        image = synth(spectrum)  # [1, 3, H, W]
        # 5. Score it with CLIP and step the spectrum.
        loss = guide.loss(image)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        # 6. Progress with the image this step scored.
        report(control, request, step + 1, loss_value, image, started)

    # 7. The final image, from the spectrum after the last step.
    with torch.no_grad():
        final = synth(spectrum)
        score = guide.similarity(final)
    return GenerationResult(
        image=tensor_to_pil(final),
        request=request,
        steps_done=request.steps,
        elapsed=time.perf_counter() - started,
        loss=loss_value,
        clip_score=score,
        metadata={"parameterisation": f"fourier, decay {_decay(store):g}"},
    )


def spectrum_scale(height: int, width: int, decay: float) -> torch.Tensor:
    """[H, W//2+1] per-frequency scale 1/f**decay, normalised to unit RMS so white noise in
    the spectrum gives unit-variance pixels whatever the size."""
    fy = torch.fft.fftfreq(height)[:, None]  # [H, 1] cycles per pixel
    fx = torch.fft.rfftfreq(width)[None, :]  # [1, W//2+1]
    frequency = (fx**2 + fy**2).sqrt()
    # The zero frequency (the mean) gets the scale of the lowest real frequency, not infinity.
    scale = frequency.clamp(min=1.0 / max(height, width)).pow(-decay)
    return scale / scale.pow(2).mean().sqrt()


def spectrum_to_image(
    spectrum: torch.Tensor, scale: torch.Tensor, mix: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """spectrum [1, 3, H, W//2+1, 2] -> image [1, 3, H, W] in [0, 1]."""
    complex_spectrum = torch.view_as_complex(spectrum) * scale  # [1, 3, H, W//2+1]
    channels = torch.fft.irfft2(complex_spectrum, s=size, norm="ortho")  # [1, 3, H, W]
    rgb = torch.einsum("ij,bjhw->bihw", mix, channels)  # [1, 3, H, W]
    return torch.sigmoid(rgb)


def image_to_spectrum(pixels: torch.Tensor, scale: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
    """The exact inverse of spectrum_to_image: pixels [1, 3, H, W] in [0, 1] ->
    spectrum [1, 3, H, W//2+1, 2]."""
    rgb = torch.logit(pixels.clamp(EPS, 1 - EPS))
    channels = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(mix), rgb)  # [1, 3, H, W]
    complex_spectrum = torch.fft.rfft2(channels, norm="ortho") / scale  # [1, 3, H, W//2+1]
    return torch.view_as_real(complex_spectrum).contiguous()


def _decay(store: ModelStore) -> float:
    value = store.config.generator_section(NAME).get("decay", DEFAULT_DECAY)
    if not isinstance(value, int | float) or not 0 <= value <= 4:
        raise BadRequest(
            f"[generators.fourier] decay in {store.config.source} must be a number from 0 to 4, "
            f"not {value!r}"
        )
    return float(value)
