"""CLIP-guided latent diffusion: a Stable Diffusion style model paints the prompt, and the
perceptor's CLIP loss on the decoded prediction steers it further.

Three diffusers/transformers parts, as in Stable Diffusion: a text encoder (``CLIPTextModel``)
turns the prompt into the UNet's conditioning; a ``UNet2DConditionModel`` denoises latents, with
classifier-free guidance (the prediction moved away from the unconditioned one by ``cfg_scale``);
an ``AutoencoderKL`` decodes latents into pixels. On top, at every step, the predicted clean
latents are decoded, the perceptor (the CLIP ensemble every generator uses, with cutouts, image
prompts, weights) scores the image, and the gradient of that loss with respect to the noisy
latents shifts the predicted noise (see generation/generators/diffusion.py for the formula: the
shift is in proportion to guidance_scale). An init image is encoded, noised to the level of the
first step that runs, and ``strength`` (the share of the schedule that runs) decides how much
of it is painted over; the default is img2img's usual 0.75.

The prompt's positive parts are the conditioning; its negative-weight parts become the
negative prompt of classifier-free guidance (and push away in the CLIP loss as well).

Keys of ``[generators.latent_diffusion]`` in the models TOML (all optional):

    model = "stable-diffusion-v1-5/stable-diffusion-v1-5"   # hub id or a local pipeline folder
                                # (unet/, vae/, text_encoder/, tokenizer/, scheduler/), or
                                # "random": random weights with the architectures below (default:
                                # the tiny ones; "tiny" is the same), for tests and benchmarks
    unet_config = "sd15-unet.json"                  # "random" only: relative to the TOML, or
    vae_config = "sd15-vae.json"                    # shipped in generation/configs
    text_encoder_config = "sd15-text-encoder.json"
    scheduler_config = "sd15-scheduler.json"
    scheduler = "ddim"          # "ddim" or "ddpm"
    eta = 0.0                   # DDIM's noise
    cfg_scale = 7.5             # classifier-free guidance (1: none)
    clamp_grad = 0.05           # cap on the RMS of the CLIP gradient at guidance scale 500,
                                # in proportion at other scales (0: no cap)
    grad_through_unet = false   # also back-propagate through the UNet (slower, more memory)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from generation.errors import BadRequest
from generation.generators.diffusion import (
    RANDOM,
    SCHEDULERS,
    TINY,
    check_supported,
    config_file,
    from_epsilon,
    from_pretrained,
    guidance_gradient,
    make_scheduler,
    model_name,
    predicted_original,
    resolve_spec,
    step_kwargs,
    to_epsilon,
)
from generation.guidance import ClipGuide
from generation.images import load_image, pil_to_tensor, tensor_to_pil
from generation.loop import clamp_with_grad, report, torch_generator
from generation.models import CONFIG_DIR, ModelStore
from generation.prompts import parse_prompts
from generation.request import (
    GenerationRequest,
    GenerationResult,
    RunControl,
    check_multiple,
    skipped_steps,
)

log = logging.getLogger(__name__)

NAME = "latent_diffusion"
DEFAULT_MODEL = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TINY_CONFIGS = {
    "unet": CONFIG_DIR / "tiny-latent-unet.json",
    "vae": CONFIG_DIR / "tiny-latent-vae.json",
    "text_encoder": CONFIG_DIR / "tiny-latent-text-encoder.json",
    "scheduler": CONFIG_DIR / "tiny-latent-scheduler.json",
}
DEFAULT_STRENGTH = 0.75  # share of the schedule run from a noised init image
HOW_TO_GET = (
    "Set model = under [generators.latent_diffusion] in your models TOML (IMAGINE_MODELS) to a "
    "folder saved by diffusers' StableDiffusionPipeline.save_pretrained (with unet/, vae/, "
    "text_encoder/, tokenizer/ and scheduler/), or to a Hugging Face Hub id such as "
    "stable-diffusion-v1-5/stable-diffusion-v1-5 and run once with network access so it "
    "downloads into the cache."
)

Tokenize = Callable[[list[str]], torch.Tensor]  # texts -> token ids [N, context]


@dataclass(frozen=True)
class LatentSettings:
    model: str
    configs: tuple[tuple[str, str], ...] = tuple((k, str(v)) for k, v in TINY_CONFIGS.items())
    scheduler: str = "ddim"
    eta: float = 0.0
    cfg_scale: float = 7.5
    clamp_grad: float = 0.05
    grad_through_unet: bool = False


@dataclass
class LatentModel:
    unet: nn.Module  # UNet2DConditionModel
    vae: nn.Module  # AutoencoderKL
    text_encoder: nn.Module  # transformers CLIPTextModel
    tokenize: Tokenize
    scheduler_config: dict[str, Any]
    name: str
    factor: int  # the VAE's downsampling: width and height must be multiples of it
    latent_scale: float  # the VAE's scaling_factor: latents the UNet sees = encoded * this


def settings_for(store: ModelStore) -> LatentSettings:
    """[generators.latent_diffusion] of the models TOML, over the defaults."""
    section = dict(store.config.generator_section(NAME))
    default = TINY if store.is_tiny else DEFAULT_MODEL
    try:
        settings = LatentSettings(
            model=resolve_spec(store, str(section.get("model", default))),
            configs=tuple(
                (part, config_file(store, section.get(f"{part}_config"), tiny))
                for part, tiny in TINY_CONFIGS.items()
            ),
            scheduler=str(section.get("scheduler", "ddim")),
            eta=float(section.get("eta", 0.0)),
            cfg_scale=float(section.get("cfg_scale", 7.5)),
            clamp_grad=float(section.get("clamp_grad", 0.05)),
            grad_through_unet=bool(section.get("grad_through_unet", False)),
        )
    except (TypeError, ValueError) as error:
        raise BadRequest(
            f"[generators.latent_diffusion] in {store.config.source}: {error}"
        ) from None
    if settings.scheduler not in SCHEDULERS:
        raise BadRequest(
            f"[generators.latent_diffusion] scheduler must be one of {', '.join(SCHEDULERS)}, "
            f"not {settings.scheduler!r}"
        )
    if not 0 <= settings.eta <= 1 or settings.clamp_grad < 0 or settings.cfg_scale < 0:
        raise BadRequest(
            "[generators.latent_diffusion] needs eta from 0 to 1, clamp_grad >= 0 and "
            "cfg_scale >= 0"
        )
    return settings


# --------------------------------------------------------------------------- loading


def load_model(store: ModelStore, settings: LatentSettings | None = None) -> LatentModel:
    """UNet, VAE, text encoder, tokenizer and scheduler settings, loaded once."""
    settings = settings or settings_for(store)
    return store.get_or_load(f"latent_diffusion:{settings}", lambda: _load(store, settings))


def _load(store: ModelStore, settings: LatentSettings) -> LatentModel:
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if settings.model in (TINY, RANDOM):
        configs = dict(settings.configs)
        with store.seeded_init(0):
            unet = UNet2DConditionModel.from_config(
                UNet2DConditionModel.load_config(configs["unet"])
            )
            vae = AutoencoderKL.from_config(AutoencoderKL.load_config(configs["vae"]))
            text_encoder = CLIPTextModel(CLIPTextConfig.from_json_file(configs["text_encoder"]))
        scheduler_config = dict(DDPMScheduler.load_config(configs["scheduler"]))
        tokenize = _open_clip_tokenize
    else:
        from transformers import CLIPTokenizer

        spec, what = settings.model, f"latent diffusion model {settings.model}"

        def part(cls: Any, subfolder: str) -> Any:
            return from_pretrained(cls, spec, subfolder, store, what=what, how_to_get=HOW_TO_GET)

        unet = part(UNet2DConditionModel, "unet")
        vae = part(AutoencoderKL, "vae")
        text_encoder = part(CLIPTextModel, "text_encoder")
        context = int(text_encoder.config.max_position_embeddings)
        tokenize = _hf_tokenize(part(CLIPTokenizer, "tokenizer"), context)
        scheduler_config = dict(part(DDPMScheduler, "scheduler").config)
    name = model_name(settings.model, dict(settings.configs)["unet"])
    check_supported(name, unet.config.in_channels, unet.config.out_channels, scheduler_config)
    unet, vae, text_encoder = (
        m.to(store.device).eval().requires_grad_(False) for m in (unet, vae, text_encoder)
    )
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    log.info("loaded latent diffusion %s (VAE factor %d)", name, factor)
    return LatentModel(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenize=tokenize,
        scheduler_config=scheduler_config,
        name=name,
        factor=factor,
        latent_scale=float(vae.config.scaling_factor),
    )


def _open_clip_tokenize(texts: list[str]) -> torch.Tensor:
    """The tiny model's tokenizer: CLIP's BPE vocabulary, which ships inside open_clip (the
    transformers tokenizer needs vocabulary files that only real checkpoints carry)."""
    import open_clip

    return open_clip.tokenize(texts, context_length=77)  # [N, 77]


def _hf_tokenize(tokenizer: Any, context: int) -> Tokenize:
    # A tokenizer saved without model_max_length reports an astronomically large one; the
    # text encoder's position table is the real limit.
    max_length = min(int(tokenizer.model_max_length), context)

    def tokenize(texts: list[str]) -> torch.Tensor:
        return tokenizer(
            texts,
            padding="max_length",
            max_length=max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids  # [N, context]

    return tokenize


# --------------------------------------------------------------------------- the generator


def check(request: GenerationRequest, store: ModelStore) -> None:
    """Loads the model (a missing one fails here, before any work) and checks the size."""
    model = load_model(store)
    check_multiple(request, model.factor, NAME)
    if request.skip_steps and not request.init_image:
        raise BadRequest("skip steps start from a noised init image: give an init image too")


def conditioning_texts(prompt: str) -> tuple[str, str]:
    """(positive, negative) text for the text encoder: the prompt's positive parts, and its
    negative-weight parts as the negative prompt."""
    parts = parse_prompts(prompt)
    positive = ", ".join(p.text for p in parts if p.weight > 0)
    negative = ", ".join(p.text for p in parts if p.weight < 0)
    return positive, negative


def run(request: GenerationRequest, store: ModelStore, control: RunControl) -> GenerationResult:
    settings = settings_for(store)
    model = load_model(store, settings)
    unet, vae = model.unet, model.vae
    device = store.device
    generator = torch_generator(request.seed, device)
    scheduler = make_scheduler(model.scheduler_config, settings.scheduler)
    prediction_type = scheduler.config.prediction_type
    alphas_cumprod = scheduler.alphas_cumprod.to(device)  # [T]

    def decode(latents: torch.Tensor) -> torch.Tensor:
        """latents [1, C, h, w] (UNet scale) -> image [1, 3, H, W] in [0, 1]."""
        with store.autocast():
            pixels = vae.decode(latents / model.latent_scale).sample.float()
        return clamp_with_grad((pixels + 1) / 2)

    # 1. Text, image and noise prompts are embedded once, for every CLIP model.
    guide = ClipGuide.from_request(request, store.perceptor(), generator)

    # 2. The text encoder's conditioning: [negative prompt, prompt], for classifier-free guidance.
    positive, negative = conditioning_texts(request.prompt)
    with torch.no_grad():
        tokens = model.tokenize([negative, positive]).to(device)  # [2, 77]
        conditioning = model.text_encoder(tokens).last_hidden_state  # [2, 77, C]

    # 3. The schedule: `steps` timesteps; with an init image the first 1 - strength of them
    #    are skipped.
    skipped = skipped_steps(request, DEFAULT_STRENGTH)
    scheduler.set_timesteps(request.steps, device=device)
    timesteps = scheduler.timesteps[skipped:]
    total = len(timesteps)

    # 4. The starting latents: noise, or the init image encoded and noised to the first level.
    shape = (
        1,
        unet.config.in_channels,
        request.height // model.factor,
        request.width // model.factor,
    )
    noise = torch.randn(shape, generator=generator, device=device)  # [1, C, h, w]
    if request.init_image:
        pixels = pil_to_tensor(load_image(request.init_image), (request.width, request.height)).to(
            device
        )  # [1, 3, H, W] in [0, 1]
        with torch.no_grad():
            encoded = vae.encode(pixels * 2 - 1).latent_dist.mean * model.latent_scale
        latents = scheduler.add_noise(encoded, noise, timesteps[:1])
    else:
        latents = noise * scheduler.init_noise_sigma

    started = time.perf_counter()
    loss_value = float("nan")
    for index, t in enumerate(timesteps):
        # 5. Stop here if the caller cancelled (within one step of the request).
        control.check(index)
        alpha_bar = alphas_cumprod[int(t)]

        # 6. The UNet's noise prediction with and without the prompt, combined (CFG).
        with torch.no_grad():
            doubled = scheduler.scale_model_input(torch.cat([latents, latents]), t)
            with store.autocast():
                output = unet(doubled, t, encoder_hidden_states=conditioning).sample.float()
            unconditioned, conditioned = output.chunk(2)  # [1, C, h, w] each
            output = unconditioned + settings.cfg_scale * (conditioned - unconditioned)
            eps = to_epsilon(output, latents, alpha_bar, prediction_type)

        # 7. CLIP loss of the decoded clean prediction, and its gradient on the noisy latents.
        with torch.enable_grad():
            x_t = latents.detach().requires_grad_(True)  # [1, C, h, w]
            if settings.grad_through_unet:
                with store.autocast():
                    own = unet(
                        scheduler.scale_model_input(x_t, t),
                        t,
                        encoder_hidden_states=conditioning[1:],
                    ).sample.float()
                eps_for_grad = to_epsilon(own, x_t, alpha_bar, prediction_type)
            else:
                eps_for_grad = eps
            image = decode(predicted_original(eps_for_grad, x_t, alpha_bar))  # [1, 3, H, W]
            loss = guide.loss(image)
            loss_value = float(loss.detach())
            if request.guidance_scale > 0:
                (loss_grad,) = torch.autograd.grad(loss, x_t)
                grad = guidance_gradient(loss_grad, request.guidance_scale, settings.clamp_grad)
            else:
                grad = torch.zeros_like(x_t)

        # 8. Shift the predicted noise along the gradient and let the scheduler step.
        guided_eps = eps + (1 - alpha_bar).sqrt() * grad
        guided_output = from_epsilon(guided_eps, latents, alpha_bar, prediction_type)
        latents = scheduler.step(
            guided_output,
            t,
            latents,
            generator=generator,
            **step_kwargs(settings.scheduler, settings.eta),
        ).prev_sample.detach()

        # 9. Progress with the clean image decoded at this step.
        report(control, request, index + 1, loss_value, image.detach(), started, total=total)

    # 10. The final latents, decoded, are the picture.
    with torch.no_grad():
        final = decode(latents)  # [1, 3, H, W]
        score = guide.similarity(final)
    return GenerationResult(
        image=tensor_to_pil(final),
        request=request,
        steps_done=total,
        elapsed=time.perf_counter() - started,
        loss=loss_value,
        clip_score=score,
        metadata={
            "latent_diffusion_model": model.name,
            "scheduler": settings.scheduler,
            "cfg_scale": f"{settings.cfg_scale:g}",
            "guidance_scale": f"{request.guidance_scale:g}",
            "skip_steps": str(skipped),
        },
    )
