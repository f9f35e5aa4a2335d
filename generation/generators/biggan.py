"""Big Sleep: steer BigGAN-deep with CLIP by optimising its latents and class vectors.

As in Big Sleep (lucidrains/big-sleep, after Ryan Murdock's notebook), every layer of the
generator gets its own input: one 128-d latent for the first linear layer and one per residual
block, each with its own 1000-way class vector (the sigmoid of free logits, or a differentiable
top-k with a temperature). Adam moves latents and class logits; regularisers keep the latents
looking like the normal noise BigGAN was trained on and the class vectors close to one class.
The picture shown (progress and result) comes from an exponential moving average of the
latents and class logits, which is steadier than the inputs of any one step. Unlike Big Sleep's,
the average starts at zero and is divided by its total weight (as Adam debiases its moments), so
the first pictures already follow the optimisation instead of lagging ~1/(1 - decay) steps.

Truncation (BigGAN's truncation trick, ``truncation`` in the models TOML) acts on the latents as
in BigGAN: they start as ``truncation`` times a normal distribution truncated to [-2, 2] (as
``pytorch_pretrained_biggan.truncated_noise_sample`` draws them), every step keeps them inside
``truncation * [-2, 2]``, and the latent regulariser pulls them toward that distribution's
spread. The batch norms use the statistics BigGAN recorded for the same truncation. Lower
truncation: more typical, less varied pictures.

BigGAN makes square pictures of one size (128, 256 or 512, by model); other request sizes are
resampled from it (scaled to cover, centre-cropped). It has no encoder: init images are refused;
image prompts work.

The network is ``pytorch-pretrained-biggan``'s ``BigGAN``; its weights are plain state dicts,
read by ``generation.checkpoints`` (tensors only, no pickled code). Models and settings come
from the ``[generators.biggan]`` section of the models TOML:

    [generators.biggan]
    default = "deep_256"
    max_classes = 0          # 0: sigmoid class vectors; k > 0: differentiable top-k of k classes
    class_temperature = 2.0  # softmax temperature of the top-k
    ema_decay = 0.99         # of the latents shown
    truncation = 1.0         # BigGAN's truncation (0, 1] of the latents and batch-norm statistics

    [generators.biggan.models.deep_256]
    config = "biggan-deep-256.json"   # BigGANConfig JSON: path, hf:// or URL
    checkpoint = "..."                # state dict: path, hf://, URL, or "random"
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from generation.checkpoints import load_into, load_state_dict
from generation.errors import BadRequest, CheckpointError, WeightsNotFound
from generation.guidance import ClipGuide
from generation.images import tensor_to_pil
from generation.loop import make_optimizer, report, torch_generator
from generation.models import ModelStore
from generation.request import GenerationRequest, GenerationResult, RunControl

log = logging.getLogger(__name__)

NAME = "biggan"
DEFAULT_LR = 0.07  # Big Sleep's
# Big Sleep's starting point: unit normal latents, class logits around -3.9 (sigmoid ~0.02).
CLASS_LOGIT_MEAN, CLASS_LOGIT_STD = -3.9, 0.3
# Big Sleep weighs CLIP's cosine similarity by 100 against its regularisers; the shared
# spherical-distance loss has a similar slope per radian at the distances seen in practice.
CLIP_WEIGHT = 100.0
# Class regulariser: every class value but the largest is pushed toward 0, with this gain.
CLASS_GAIN = 50.0
# BigGAN's truncated normal: latents are drawn from N(0, 1) cut to [-BOUND, BOUND], then
# scaled by the truncation. Its standard deviation and excess kurtosis (scipy.stats.truncnorm
# (-2, 2); tests check them) are what the latent regulariser aims for.
TRUNCATION_BOUND = 2.0
TRUNCATED_STD = 0.8796256610342398
TRUNCATED_EXCESS_KURTOSIS = -0.6344632828703505
SETTINGS = {"max_classes": 0, "class_temperature": 2.0, "ema_decay": 0.99, "truncation": 1.0}
HOW_TO_GET = (
    "Download a BigGAN-deep state dict and its config.json (pytorch-pretrained-biggan's "
    "biggan-deep-256-pytorch_model.bin and biggan-deep-256-config.json, URLs in "
    "generation/configs/defaults.toml, or hf://osanseviero/BigGAN-deep-128/pytorch_model.bin), "
    "then set checkpoint = and config = to their paths under [generators.biggan.models.<name>] "
    "in your models TOML (IMAGINE_MODELS), or run once with network access so they download "
    "into the cache."
)


# --------------------------------------------------------------------------- loading


def load_model(store: ModelStore, name: str | None = None) -> nn.Module:
    """The BigGAN ``name`` from the models TOML (default: its ``default``), loaded once."""
    name, spec = store.config.named_model(
        NAME, name, label="BigGAN", needs="config and checkpoint", how_to_get=HOW_TO_GET
    )
    return store.get_or_load(f"biggan:{name}", lambda: _build(store, name, spec))


def _build(store: ModelStore, name: str, spec: dict[str, Any]) -> nn.Module:
    if "config" not in spec or "checkpoint" not in spec:
        raise WeightsNotFound(f"BigGAN {name!r} needs both config and checkpoint. {HOW_TO_GET}")
    config = store.resolve(spec["config"], what=f"BigGAN {name} config", how_to_get=HOW_TO_GET)
    model = build_from_json(config, seed=int(spec.get("seed", 0)))
    if spec["checkpoint"] != "random":
        path = store.resolve(
            spec["checkpoint"], what=f"BigGAN {name} checkpoint", how_to_get=HOW_TO_GET
        )
        load_into(model, load_state_dict(path), path.name)
    # eval(): spectral norm keeps its stored singular vectors instead of updating them.
    model = model.to(store.device).eval().requires_grad_(False)
    model.name = name  # its name in the models TOML, for metadata
    log.info("loaded BigGAN %s (%d px)", name, model.config.output_dim)
    return model


def build_from_json(path: Path, *, seed: int = 0) -> nn.Module:
    """A BigGAN with the architecture of a config.json (weights random, from ``seed``)."""
    from pytorch_pretrained_biggan import BigGAN, BigGANConfig

    try:
        config = BigGANConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
        config.layers = [(bool(up), int(c_in), int(c_out)) for up, c_in, c_out in config.layers]
        int(config.output_dim), int(config.z_dim), int(config.num_classes)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as error:
        raise CheckpointError(
            f"BigGAN config {path.name} is not a BigGANConfig JSON ({type(error).__name__}); "
            f"download it again"
        ) from None
    except (TypeError, ValueError) as error:
        raise CheckpointError(
            f"BigGAN config {path.name} has a malformed field ({error}); download it again"
        ) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BigGAN(config)
        # The unconditional batch norm's scale and shift are allocated uninitialised
        # (torch.Tensor(n)); published weights overwrite them, random models need values.
        bn = model.generator.bn
        nn.init.ones_(bn.weight)
        nn.init.zeros_(bn.bias)
    converge_spectral_norms(model)
    return model


def converge_spectral_norms(model: nn.Module, iterations: int = 50) -> None:
    """Run spectral norm's power iteration until its singular vectors settle. A fresh
    layer's vectors are random, and in eval mode they are never updated: its estimate of the
    largest singular value is then far too small, and random weights blow the activations up
    by orders of magnitude per layer. Published weights bring their own settled vectors."""
    from torch.nn.utils.spectral_norm import SpectralNorm

    with torch.no_grad():
        for module in model.modules():
            for hook in module._forward_pre_hooks.values():
                if isinstance(hook, SpectralNorm):
                    per_forward, hook.n_power_iterations = hook.n_power_iterations, iterations
                    hook.compute_weight(module, do_power_iteration=True)
                    hook.n_power_iterations = per_forward


def _settings(store: ModelStore) -> dict[str, float]:
    section = store.config.generator_section(NAME)
    settings = {key: section.get(key, value) for key, value in SETTINGS.items()}
    where = f"[generators.biggan] in {store.config.source}"
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in settings.values()):
        raise BadRequest(f"{where}: {', '.join(SETTINGS)} must be numbers")
    if settings["max_classes"] < 0 or settings["max_classes"] != int(settings["max_classes"]):
        raise BadRequest(f"{where}: max_classes must be 0 (sigmoid) or a whole number of classes")
    if not settings["class_temperature"] > 0:
        raise BadRequest(f"{where}: class_temperature must be above 0")
    if not 0 <= settings["ema_decay"] < 1:
        raise BadRequest(f"{where}: ema_decay must be at least 0 and below 1")
    if not 0 < settings["truncation"] <= 1:
        raise BadRequest(f"{where}: truncation must be above 0 and at most 1")
    return settings


# --------------------------------------------------------------------------- the network


def synthesize(
    model: nn.Module, latents: torch.Tensor, classes: torch.Tensor, truncation: float
) -> torch.Tensor:
    """BigGAN with its own input per layer: latents [L, Z] and class vectors [L, C], row 0 for
    the first linear layer and one row per residual block -> image [1, 3, S, S] in [0, 1]."""
    from pytorch_pretrained_biggan.model import GenBlock

    generator = model.generator
    conditions = torch.cat([latents, model.embeddings(classes)], dim=1)  # [L, Z + E]
    x = generator.gen_z(conditions[:1])  # [1, 16 * ch * 4 * 4], laid out as TF's NHWC
    x = x.view(1, 4, 4, -1).permute(0, 3, 1, 2).contiguous()  # [1, 16 * ch, 4, 4]
    row = 1
    for layer in generator.layers:
        if isinstance(layer, GenBlock):
            x = layer(x, conditions[row : row + 1], truncation)
            row += 1
        else:  # the self-attention layer takes no condition
            x = layer(x)
    x = generator.relu(generator.bn(x, truncation))
    x = generator.tanh(generator.conv_to_rgb(x)[:, :3])  # [1, 3, S, S] in [-1, 1]
    return (x + 1) / 2


def input_count(model: nn.Module) -> int:
    """How many (latent, class) rows the model takes: the first layer plus every block."""
    return len(model.config.layers) + 1


def differentiable_topk(logits: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """logits [L, C] -> [L, C] holding, for the k most likely classes of each row, their
    softmax probabilities (each taken after removing the ones before it), zero elsewhere.
    The gradient reaches the chosen classes' logits through the softmax."""
    picked = torch.zeros_like(logits)
    remaining = logits
    for _ in range(k):
        probabilities = torch.softmax(remaining / temperature, dim=-1)  # [L, C]
        values, index = probabilities.max(dim=-1, keepdim=True)  # [L, 1]
        picked = picked + torch.zeros_like(logits).scatter(-1, index, values)
        remaining = remaining.scatter(-1, index, float("-inf"))
    return picked


def truncated_normal(
    shape: tuple[int, ...], truncation: float, generator: torch.Generator, device: torch.device
) -> torch.Tensor:
    """BigGAN's truncated latents: ``truncation`` times N(0, 1) cut to [-2, 2], drawn by
    inverting the normal CDF on the uniform draws of ``generator`` (same seed, same latents)."""
    bounds = torch.special.ndtr(torch.tensor([-TRUNCATION_BOUND, TRUNCATION_BOUND]))
    low, high = float(bounds[0]), float(bounds[1])
    uniform = torch.rand(shape, generator=generator, device=device) * (high - low) + low
    values = torch.special.ndtri(uniform).clamp(-TRUNCATION_BOUND, TRUNCATION_BOUND)
    return values * truncation


def latent_regulariser(latents: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
    """Big Sleep's pull toward the noise BigGAN expects, for latents [L, Z]: here the truncated
    normal of ``truncation`` (its spread, zero mean, a bounded mean square, no skew, its
    kurtosis) in every row."""
    target = TRUNCATED_STD * truncation
    std, mean = latents.std(dim=1), latents.mean(dim=1)  # [L]
    loss = (target - std).abs().mean() / truncation + mean.abs().mean() / truncation
    loss = loss + 4 * torch.clamp(latents.pow(2).mean() / target**2, min=1.0)
    z = (latents - mean[:, None]) / latents.var(dim=1, unbiased=False).sqrt()[:, None]  # [L, Z]
    skew = z.pow(3).mean(dim=1)  # [L]
    kurtosis = z.pow(4).mean(dim=1) - 3
    return loss + (skew.abs() + (kurtosis - TRUNCATED_EXCESS_KURTOSIS).abs()).mean()


def class_regulariser(classes: torch.Tensor) -> torch.Tensor:
    """Big Sleep's push toward a single class per row, for class vectors [L, C]: every value
    but the largest is driven to zero."""
    rest = torch.topk(classes, classes.shape[1] - 1, dim=1, largest=False).values  # [L, C-1]
    return (CLASS_GAIN * rest).pow(2).mean()


def fit_to_request(image: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """image [1, 3, S, S] -> [1, 3, height, width]: scaled to cover, then centre-cropped."""
    side = image.shape[-1]
    if (width, height) == (side, side):
        return image
    scale = max(width, height) / side
    size = (max(height, math.ceil(side * scale)), max(width, math.ceil(side * scale)))
    resized = F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=True)
    top, left = (size[0] - height) // 2, (size[1] - width) // 2
    return resized[:, :, top : top + height, left : left + width]


# --------------------------------------------------------------------------- the generator


def check(request: GenerationRequest, store: ModelStore) -> None:
    """Loads the model (missing weights fail here, before any work) and refuses init images."""
    _settings(store)
    if request.init_image:
        raise BadRequest(
            "the biggan generator cannot start from an init image (BigGAN has no encoder); "
            "give the picture as an image prompt instead"
        )
    load_model(store)


def run(request: GenerationRequest, store: ModelStore, control: RunControl) -> GenerationResult:
    model = load_model(store)
    settings = _settings(store)
    max_classes, truncation = int(settings["max_classes"]), float(settings["truncation"])
    decay = float(settings["ema_decay"])
    device = store.device
    generator = torch_generator(request.seed, device)
    rows, z_dim, num_classes = input_count(model), model.config.z_dim, model.config.num_classes

    def class_vectors(logits: torch.Tensor) -> torch.Tensor:
        """class logits [L, C] -> class vectors [L, C]"""
        if max_classes:
            return differentiable_topk(logits, max_classes, settings["class_temperature"])
        return torch.sigmoid(logits)

    def picture(latents: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        """latents [L, Z], class vectors [L, C] -> image [1, 3, height, width] in [0, 1]"""
        image = synthesize(model, latents, classes, truncation)
        return fit_to_request(image, request.width, request.height)

    def averaged_picture(step: int) -> torch.Tensor:
        """The picture of the debiased moving averages after ``step`` updates."""
        weight = 1 - decay**step
        return picture(averages[0] / weight, class_vectors(averages[1] / weight))

    # 1. Text, image and noise prompts are embedded once, for every CLIP model.
    guide = ClipGuide.from_request(request, store.perceptor(), generator)

    # 2. Starting inputs from the seed: a truncated latent and class logits for every layer,
    # and their moving averages (zero, with no weight yet).
    latents = truncated_normal((rows, z_dim), truncation, generator, device)  # [L, Z]
    bound = TRUNCATION_BOUND * truncation
    class_logits = torch.randn(rows, num_classes, generator=generator, device=device)  # [L, C]
    class_logits = class_logits * CLASS_LOGIT_STD + CLASS_LOGIT_MEAN
    latents.requires_grad_(True)
    class_logits.requires_grad_(True)
    averages = [torch.zeros_like(latents), torch.zeros_like(class_logits)]
    optimizer = make_optimizer(
        request.optimizer, [latents, class_logits], request.learning_rate or DEFAULT_LR
    )

    started = time.perf_counter()
    last_loss = torch.tensor(float("nan"), device=device)
    for step in range(request.steps):
        # 3. Stop here if the caller cancelled (within one step of the request).
        control.check(step)
        # 4. The picture from this step's inputs, scored by CLIP, plus the regularisers.
        classes = class_vectors(class_logits)  # [L, C]
        image = picture(latents, classes)  # [1, 3, H, W]
        loss = CLIP_WEIGHT * guide.loss(image)
        loss = loss + latent_regulariser(latents, truncation) + class_regulariser(classes)
        # 5. Step the inputs, keep the latents inside the truncation's range, and move the
        # averages toward them.
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            latents.clamp_(-bound, bound)
            for average, current in zip(averages, (latents, class_logits), strict=True):
                average.lerp_(current, 1 - decay)
        last_loss = loss.detach()
        # 6. Progress with the picture of the averaged inputs (one extra forward, only on
        # the steps that report).
        if control.wants_progress(step + 1, request.steps, request.progress_every):
            with torch.no_grad():
                shown = averaged_picture(step + 1)
            report(control, request, step + 1, last_loss, shown, started)

    # 7. The final picture, from the averaged inputs.
    with torch.no_grad():
        final = averaged_picture(request.steps)
        score = guide.similarity(final)
    return GenerationResult(
        image=tensor_to_pil(final),
        request=request,
        steps_done=request.steps,
        elapsed=time.perf_counter() - started,
        loss=float(last_loss),
        clip_score=score,
        metadata={
            "biggan": model.name,
            "parameterisation": (
                f"per-layer latents, {f'top-{max_classes}' if max_classes else 'sigmoid'} "
                f"classes, EMA {decay:g}, truncation {truncation:g}"
            ),
        },
    )
