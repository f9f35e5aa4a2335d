"""CLIP-guided diffusion: a pixel-space diffusion model denoises an image, and at every step the
gradient of the CLIP loss on its predicted clean image steers the denoising toward the prompt.

A diffusion model trained without text (a diffusers ``UNet2DModel``) predicts, from a noisy image
x_t, the noise in it; from that follows its guess of the clean image x0. CLIP scores that guess
(with cutouts, like the VQGAN loop), and the gradient of the loss with respect to x_t shifts the
predicted noise, as classifier guidance does (Dhariwal & Nichol 2021, with CLIP as the
classifier):

    eps' = eps + sqrt(1 - alpha_bar_t) * guidance_scale * cap(grad_x_t(loss))

``cap`` scales the loss gradient down to an RMS of at most clamp_grad / 500, so one large CLIP
gradient early in the schedule cannot blow the sample apart, and the scale multiplies what is
left: the step is always in proportion to guidance_scale (at 500, the default, it is capped at an
RMS of clamp_grad; at 5000 at ten times that). Capping the scaled gradient instead would make
every scale above a small one give the same picture.

The scheduler (DDIM or DDPM from diffusers) then takes its usual step with eps'. An init image is
noised to the level of the first step that runs, and ``strength`` (as in img2img: the share of
the schedule that runs) decides how much of it is painted over. The default, 0.5, follows Disco
Diffusion's advice to skip about half the steps to keep an init image's shapes: on the linear
schedule of pixel models it leaves 0.28 of the image's amplitude, about what img2img's 0.75
leaves on Stable Diffusion's gentler schedule (0.24).

The default model is OpenAI's unconditional 256 px ImageNet model from guided-diffusion (the
prior of Disco Diffusion and of Crowson's CLIP-guided diffusion), an ADM UNet
(``generation.adm_unet``) that predicts 6 channels: the noise, and ``v``, which places the
variance of each step between the posterior variance and beta in log space ("learned sigma").
The guidance uses the noise. DDPM steps use the learned variance (diffusers' ``learned_range``);
DDIM has no variance to learn (eta sets its noise), so it uses the noise alone.

Keys of ``[generators.diffusion]`` in the models TOML (all optional):

    model = "openai_256_uncond"           # a [generators.diffusion.models.<name>] table; or an
                                          # ADM checkpoint (.pt state dict: a path, hf:// or
                                          # URL); or a hub id or local folder saved by diffusers;
                                          # or "random": random weights (tests, benchmarks) with
                                          # the architecture of unet_config / scheduler_config
                                          # (default: the tiny ones; "tiny" is the same)
    unet_config = "adm-256-uncond.json"   # ADM checkpoints and "random": relative to the TOML,
    scheduler_config = "adm-scheduler.json"  # or shipped in generation/configs (ADM JSONs
                                          # say "_class_name": "ADMUNet"; others are diffusers')

A named table holds ``checkpoint`` (or a diffusers ``model``) and may hold ``unet_config`` and
``scheduler_config``; the shipped defaults name ``openai_256_uncond`` and ``openai_512_uncond``
(sizes must then be multiples of 32 and 64).
    unet_subfolder = ""         # where config.json of the UNet is ("unet" for pipeline layouts)
    scheduler_subfolder = ""    # where scheduler_config.json is ("scheduler" for pipelines)
    scheduler = "ddim"          # "ddim" or "ddpm"
    eta = 0.0                   # DDIM's noise (0 deterministic, 1 like DDPM)
    clamp_grad = 0.05           # cap on the RMS of the guidance gradient at guidance scale
                                # 500, in proportion at other scales (0: no cap)
    grad_through_unet = true    # back-propagate through the UNet (better, ~3x the compute)

Hub weights are cached under the models file's cache_dir (``hub/``); ``.bin`` files are read by
diffusers with ``torch.load(weights_only=True)``, which builds only tensors. ADM ``.pt`` files
are plain state dicts, read by generation.checkpoints' allow-listing reader (tensors only).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from generation.adm_unet import ADMConfig, ADMUNet, is_adm_config
from generation.checkpoints import load_into, load_state_dict
from generation.errors import BadRequest, CheckpointError, WeightsNotFound
from generation.guidance import ClipGuide
from generation.images import load_image, pil_to_tensor, tensor_to_pil
from generation.loop import clamp_with_grad, report, torch_generator
from generation.models import CONFIG_DIR, ModelStore
from generation.models_config import is_remote
from generation.request import (
    GenerationRequest,
    GenerationResult,
    RunControl,
    check_multiple,
    skipped_steps,
)

log = logging.getLogger(__name__)

NAME = "diffusion"
# OpenAI's unconditional 256 px ImageNet model (guided-diffusion, MIT licence).
DEFAULT_MODEL = (
    "https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion_uncond.pt"
)
ADM_UNET = CONFIG_DIR / "adm-256-uncond.json"
ADM_SCHEDULER = CONFIG_DIR / "adm-scheduler.json"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".safetensors")
TINY = "tiny"
RANDOM = "random"
TINY_UNET = CONFIG_DIR / "tiny-diffusion-unet.json"
TINY_SCHEDULER = CONFIG_DIR / "tiny-diffusion-scheduler.json"
SCHEDULERS = ("ddim", "ddpm")
DEFAULT_STRENGTH = 0.5  # share of the schedule run from a noised init image (see above)
HOW_TO_GET = (
    "Set model = under [generators.diffusion] in your models TOML (IMAGINE_MODELS) to an ADM "
    "checkpoint such as 256x256_diffusion_uncond.pt (a path or its URL, see "
    "generation/configs/defaults.toml) with unet_config = its architecture JSON, or to a folder "
    "saved by diffusers (config.json + diffusion_pytorch_model.safetensors, and "
    "scheduler_config.json) or a Hugging Face Hub id such as google/ddpm-ema-church-256, and "
    "run once with network access so it downloads into the cache."
)


@dataclass(frozen=True)
class DiffusionSettings:
    model: str
    unet_config: str = str(TINY_UNET)
    scheduler_config: str = str(TINY_SCHEDULER)
    unet_subfolder: str = ""
    scheduler_subfolder: str = ""
    scheduler: str = "ddim"
    eta: float = 0.0
    clamp_grad: float = 0.05
    grad_through_unet: bool = True


@dataclass
class DiffusionModel:
    unet: nn.Module  # a diffusers UNet2DModel or an ADMUNet, frozen, on the store's device
    scheduler_config: dict[str, Any]  # a fresh scheduler is made per run: they hold state
    name: str  # for metadata
    factor: int  # width and height must be multiples of this


def settings_for(store: ModelStore) -> DiffusionSettings:
    """[generators.diffusion] of the models TOML, over the defaults; a model that names a
    [generators.diffusion.models.<name>] table takes that table's keys."""
    section = dict(store.config.generator_section(NAME))
    default = TINY if store.is_tiny else DEFAULT_MODEL
    spec = str(section.get("model", section.get("default", default)))
    named = section.get("models", {}).get(spec)
    if isinstance(named, dict):
        section.update(named)
        spec = str(named.get("checkpoint", named.get("model", "")))
    checkpoint = is_checkpoint(spec)
    unet_default = ADM_UNET if checkpoint else TINY_UNET
    scheduler_default = ADM_SCHEDULER if checkpoint else TINY_SCHEDULER
    try:
        settings = DiffusionSettings(
            model=resolve_spec(store, spec),
            unet_config=config_file(store, section.get("unet_config"), unet_default),
            scheduler_config=config_file(store, section.get("scheduler_config"), scheduler_default),
            unet_subfolder=str(section.get("unet_subfolder", "")),
            scheduler_subfolder=str(section.get("scheduler_subfolder", "")),
            scheduler=str(section.get("scheduler", "ddim")),
            eta=float(section.get("eta", 0.0)),
            clamp_grad=float(section.get("clamp_grad", 0.05)),
            grad_through_unet=bool(section.get("grad_through_unet", True)),
        )
    except (TypeError, ValueError) as error:
        raise BadRequest(f"[generators.diffusion] in {store.config.source}: {error}") from None
    if settings.scheduler not in SCHEDULERS:
        raise BadRequest(
            f"[generators.diffusion] scheduler must be one of {', '.join(SCHEDULERS)}, "
            f"not {settings.scheduler!r}"
        )
    if not 0 <= settings.eta <= 1 or settings.clamp_grad < 0:
        raise BadRequest("[generators.diffusion] needs eta from 0 to 1 and clamp_grad >= 0")
    return settings


# --------------------------------------------------------------------------- loading


def load_model(store: ModelStore, settings: DiffusionSettings | None = None) -> DiffusionModel:
    """The UNet and scheduler settings named by the models TOML, loaded once."""
    settings = settings or settings_for(store)
    return store.get_or_load(f"diffusion:{settings}", lambda: _load(store, settings))


def _load(store: ModelStore, settings: DiffusionSettings) -> DiffusionModel:
    from diffusers import DDPMScheduler, UNet2DModel

    if is_checkpoint(settings.model) or (
        settings.model in (TINY, RANDOM) and is_adm_config(settings.unet_config)
    ):
        unet = load_adm(store, settings)
        scheduler_config = dict(DDPMScheduler.load_config(settings.scheduler_config))
    elif settings.model in (TINY, RANDOM):
        with store.seeded_init(0):
            unet = UNet2DModel.from_config(UNet2DModel.load_config(settings.unet_config))
        scheduler_config = dict(DDPMScheduler.load_config(settings.scheduler_config))
    else:
        what = f"diffusion model {settings.model}"
        unet = from_pretrained(
            UNet2DModel, settings.model, settings.unet_subfolder, store, what=what
        )
        scheduler_config = dict(
            from_pretrained(
                DDPMScheduler, settings.model, settings.scheduler_subfolder, store, what=what
            ).config
        )
    name = model_name(settings.model, settings.unet_config)
    check_supported(
        name,
        unet.config.in_channels,
        unet.config.out_channels,
        scheduler_config,
        learned_variance_ok=True,
    )
    unet = unet.to(store.device).eval().requires_grad_(False)
    factor = 2 ** (len(unet.config.block_out_channels) - 1)
    log.info("loaded diffusion UNet %s (factor %d)", name, factor)
    return DiffusionModel(unet, scheduler_config, name, factor)


def load_adm(store: ModelStore, settings: DiffusionSettings) -> ADMUNet:
    """An ADM UNet of ``unet_config``'s architecture with the checkpoint's weights (a plain
    state dict, read tensors-only), or random ones for "tiny" / "random"."""
    try:
        config = ADMConfig.from_json(settings.unet_config)
    except (OSError, ValueError, TypeError) as error:
        raise CheckpointError(f"ADM UNet config {settings.unet_config}: {error}") from None
    with store.seeded_init(0):
        unet = ADMUNet(config)
    if settings.model in (TINY, RANDOM):
        return unet
    path = store.resolve(settings.model, what=f"diffusion model {settings.model}",
                         how_to_get=HOW_TO_GET)  # fmt: skip
    load_into(
        unet,
        load_state_dict(path),
        path.name,
        hint=f"unet_config ({Path(settings.unet_config).name}) must be the checkpoint's "
        f"architecture (adm-256-uncond.json or adm-512-uncond.json for OpenAI's models)",
    )
    return unet


def is_checkpoint(spec: str) -> bool:
    """A single weight file (a path, hf:// or URL), not a diffusers folder or hub id."""
    if spec.startswith("hf://"):
        return True
    if is_remote(spec):
        return True
    return spec.lower().endswith(CHECKPOINT_SUFFIXES) or Path(spec).expanduser().is_file()


def from_pretrained(
    cls: Any,
    spec: str,
    subfolder: str,
    store: ModelStore,
    *,
    what: str,
    how_to_get: str = HOW_TO_GET,
) -> Any:
    """``cls.from_pretrained`` from a local folder or a hub id (cached under the store's cache
    dir), turning "not there" into WeightsNotFound that says how to get it."""
    if not is_hub_id(spec):
        folder = Path(spec).expanduser() / subfolder
        if not folder.is_dir():
            raise WeightsNotFound(f"{what} not found: no folder {folder}. {how_to_get}")
    # diffusers and transformers both take these; an empty subfolder is left out.
    options: dict[str, Any] = {
        "cache_dir": str(store.cache_dir / "hub"),
        "local_files_only": not store.config.download,
    }
    if subfolder:
        options["subfolder"] = subfolder
    try:
        return cls.from_pretrained(spec, **options)
    except (OSError, ValueError) as error:
        raise WeightsNotFound(
            f"{what} could not be loaded ({type(error).__name__}: {str(error)[:200]}). {how_to_get}"
        ) from None


def config_file(store: ModelStore, value: Any, default: Path) -> str:
    """An architecture JSON for random weights: a path relative to the TOML file, else a file
    shipped in generation/configs; a missing one says which."""
    if value is None:
        return str(default)
    for candidate in (Path(store.config.path(str(value))), CONFIG_DIR / str(value)):
        if candidate.is_file():
            return str(candidate)
    raise WeightsNotFound(
        f"architecture file {value!r} (for random weights) not found next to "
        f"{store.config.source} or in {CONFIG_DIR}"
    )


def model_name(spec: str, config: str) -> str:
    """How the PNG metadata names the model: the hub id, the folder's name, "tiny", or
    "random <architecture file>"."""
    if spec == RANDOM:
        return f"random {Path(config).stem}"
    if spec == TINY or is_hub_id(spec):
        return spec
    if is_remote(spec):
        return spec.rstrip("/").rsplit("/", 1)[-1].split("?")[0]
    return Path(spec).name


def resolve_spec(store: ModelStore, spec: str) -> str:
    """A model spec from the TOML: "tiny", a hub id, or a local folder (relative paths are
    relative to the TOML file, and win over a hub id of the same spelling when they exist)."""
    if spec in (TINY, RANDOM) or is_remote(spec):
        return spec
    local = Path(store.config.path(spec))
    return str(local) if local.exists() or not is_hub_id(spec) else spec


def is_hub_id(spec: str) -> bool:
    """ "owner/name" that is not a local path."""
    if spec.startswith(("/", ".", "~")) or Path(spec).expanduser().exists():
        return False
    parts = spec.split("/")
    return len(parts) == 2 and all(parts)


PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


LEARNED_VARIANCE = ("learned", "learned_range")


def check_supported(
    name: str,
    in_channels: int,
    out_channels: int,
    scheduler_config: dict[str, Any],
    *,
    learned_variance_ok: bool = False,
) -> None:
    """Refuse, at load time, models whose output the guidance cannot interpret. With
    ``learned_variance_ok``, a model with twice the channels out (noise + variance) passes when
    its scheduler config says how to read the variance (variance_type learned_range)."""
    prediction_type = scheduler_config.get("prediction_type", "epsilon")
    if prediction_type not in PREDICTION_TYPES:
        raise CheckpointError(
            f"{name}: prediction type {prediction_type!r} is not supported; use a model that "
            f"predicts {', '.join(PREDICTION_TYPES)}"
        )
    learned = scheduler_config.get("variance_type") in LEARNED_VARIANCE
    if learned_variance_ok and out_channels == 2 * in_channels:
        if not learned or prediction_type != "epsilon":
            raise CheckpointError(
                f"{name} outputs {out_channels} channels (noise and variance): its scheduler "
                f'config needs variance_type "learned_range" and prediction_type "epsilon" '
                f"(generation/configs/adm-scheduler.json)"
            )
        return
    if out_channels != in_channels:
        raise CheckpointError(
            f"{name} outputs {out_channels} channels for {in_channels} in (a learned-variance "
            f"model); use one that predicts only the noise"
        )


def make_scheduler(config: dict[str, Any], kind: str) -> Any:
    from diffusers import DDIMScheduler, DDPMScheduler

    cls = DDIMScheduler if kind == "ddim" else DDPMScheduler
    # Keys the other scheduler class has and this one lacks only trigger a warning.
    return cls.from_config(config)


# --------------------------------------------------------------------------- guidance math


def to_epsilon(
    output: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The noise a model output implies, for each diffusers prediction type."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "sample":
        return (sample - alpha_bar.sqrt() * output) / (1 - alpha_bar).sqrt()
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * output + (1 - alpha_bar).sqrt() * sample
    raise BadRequest(f"unsupported prediction type {prediction_type!r} in the scheduler config")


def from_epsilon(
    eps: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor, prediction_type: str
) -> torch.Tensor:
    """The model output of ``prediction_type`` that implies noise ``eps`` (inverse of
    to_epsilon), so the scheduler can take its step with the guided noise."""
    if prediction_type == "epsilon":
        return eps
    original = predicted_original(eps, sample, alpha_bar)
    if prediction_type == "sample":
        return original
    if prediction_type == "v_prediction":
        return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * original
    raise BadRequest(f"unsupported prediction type {prediction_type!r} in the scheduler config")


def predicted_original(
    eps: torch.Tensor, sample: torch.Tensor, alpha_bar: torch.Tensor
) -> torch.Tensor:
    """x0 = (x_t - sqrt(1 - alpha_bar) * eps) / sqrt(alpha_bar)."""
    return (sample - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


# The guidance scale at which clamp_grad is the cap on the gradient's RMS (the request's default).
CAP_AT_SCALE = 500.0


def guidance_gradient(loss_grad: torch.Tensor, scale: float, clamp_grad: float) -> torch.Tensor:
    """The shift of the predicted noise: the loss gradient capped at an RMS of
    clamp_grad / CAP_AT_SCALE, then times ``scale``, so the shift grows in proportion to the
    scale whether or not the cap applies."""
    return scale * clamp_rms(loss_grad, clamp_grad / CAP_AT_SCALE)


def clamp_rms(grad: torch.Tensor, max_rms: float) -> torch.Tensor:
    """Scale ``grad`` down so its root mean square is at most ``max_rms`` (0: unchanged). A
    cap keeps one large CLIP gradient early in the schedule from blowing the sample apart."""
    if max_rms <= 0:
        return grad
    rms = grad.pow(2).mean().sqrt()
    return grad * (max_rms / rms.clamp(min=max_rms))


# --------------------------------------------------------------------------- the generator


def check(request: GenerationRequest, store: ModelStore) -> None:
    """Loads the model (a missing one fails here, before any work) and checks the size."""
    model = load_model(store)
    check_multiple(request, model.factor, NAME)
    if request.skip_steps and not request.init_image:
        raise BadRequest("skip steps start from a noised init image: give an init image too")


def run(request: GenerationRequest, store: ModelStore, control: RunControl) -> GenerationResult:
    settings = settings_for(store)
    model = load_model(store, settings)
    unet = model.unet
    device = store.device
    generator = torch_generator(request.seed, device)
    scheduler = make_scheduler(model.scheduler_config, settings.scheduler)
    prediction_type = scheduler.config.prediction_type
    alphas_cumprod = scheduler.alphas_cumprod.to(device)  # [T]

    # 1. Text, image and noise prompts are embedded once, for every CLIP model.
    guide = ClipGuide.from_request(request, store.perceptor(), generator)

    # 2. The schedule: `steps` timesteps; with an init image the first 1 - strength of them
    #    are skipped.
    skipped = skipped_steps(request, DEFAULT_STRENGTH)
    scheduler.set_timesteps(request.steps, device=device)
    timesteps = scheduler.timesteps[skipped:]
    total = len(timesteps)

    # 3. The starting sample: noise, or the init image noised to the first timestep's level.
    shape = (1, unet.config.in_channels, request.height, request.width)
    noise = torch.randn(shape, generator=generator, device=device)  # [1, 3, H, W]
    if request.init_image:
        pixels = pil_to_tensor(load_image(request.init_image), (request.width, request.height)).to(
            device
        )  # [1, 3, H, W] in [0, 1]
        sample = scheduler.add_noise(pixels * 2 - 1, noise, timesteps[:1])
    else:
        sample = noise * scheduler.init_noise_sigma

    started = time.perf_counter()
    loss_value = float("nan")
    for index, t in enumerate(timesteps):
        # 4. Stop here if the caller cancelled (within one step of the request).
        control.check(index)
        alpha_bar = alphas_cumprod[int(t)]

        # 5. Predict the noise, and from it the clean image, with the graph kept so the CLIP
        #    loss can be differentiated with respect to the noisy sample.
        with torch.enable_grad():
            x_t = sample.detach().requires_grad_(True)  # [1, 3, H, W]
            unet_input = x_t if settings.grad_through_unet else x_t.detach()
            model_input = scheduler.scale_model_input(unet_input, t)
            with store.autocast():
                output = predict(unet, model_input, t)  # [1, 3 or 6, H, W]
            output, variance = split_variance(output, x_t.shape[1])  # [1, 3, H, W] each
            eps = to_epsilon(output, x_t, alpha_bar, prediction_type)
            original = predicted_original(eps, x_t, alpha_bar)  # [1, 3, H, W] in ~[-1, 1]
            image = clamp_with_grad((original + 1) / 2)  # [1, 3, H, W] in [0, 1]

            # 6. The CLIP loss of the predicted clean image, and its gradient on x_t.
            loss = guide.loss(image)
            loss_value = float(loss.detach())
            if request.guidance_scale > 0:
                (loss_grad,) = torch.autograd.grad(loss, x_t)
                grad = guidance_gradient(loss_grad, request.guidance_scale, settings.clamp_grad)
            else:
                grad = torch.zeros_like(x_t)

        # 7. Shift the predicted noise along the gradient and let the scheduler step.
        guided_eps = eps.detach() + (1 - alpha_bar).sqrt() * grad
        guided_output = from_epsilon(guided_eps, sample, alpha_bar, prediction_type)
        if variance is not None and settings.scheduler == "ddpm":
            # DDPM draws its noise with the learned variance (variance_type learned_range).
            guided_output = torch.cat([guided_output, variance.detach()], dim=1)  # [1, 6, H, W]
        sample = scheduler.step(
            guided_output,
            t,
            sample,
            generator=generator,
            **step_kwargs(settings.scheduler, settings.eta),
        ).prev_sample.detach()

        # 8. Progress with the clean image predicted at this step.
        report(control, request, index + 1, loss_value, image.detach(), started, total=total)

    # 9. The final sample is the picture.
    with torch.no_grad():
        final = ((sample + 1) / 2).clamp(0, 1)  # [1, 3, H, W]
        score = guide.similarity(final)
    return GenerationResult(
        image=tensor_to_pil(final),
        request=request,
        steps_done=total,
        elapsed=time.perf_counter() - started,
        loss=loss_value,
        clip_score=score,
        metadata={
            "diffusion_model": model.name,
            "scheduler": settings.scheduler,
            "guidance_scale": f"{request.guidance_scale:g}",
            "skip_steps": str(skipped),
        },
    )


def predict(unet: nn.Module, sample: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The UNet's output as a float tensor: diffusers wraps it in ``.sample``, ADM does not."""
    output = unet(sample, t)
    return getattr(output, "sample", output).float()


def split_variance(output: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """[B, 2C, H, W] -> (noise [B, C, H, W], variance interpolation v [B, C, H, W]);
    a C-channel output has no variance (None)."""
    if output.shape[1] == 2 * channels:
        eps, variance = output.split(channels, dim=1)
        return eps, variance
    return output, None


def step_kwargs(scheduler: str, eta: float) -> dict[str, Any]:
    """DDIM takes eta, and must recompute its noise from the clipped clean image: otherwise,
    where the scheduler clips x0 (pixel models clip to [-1, 1]), the guided noise would be
    kept while the guided x0 is clipped away, and the step would move against the guidance.
    DDPM's posterior is built from the clipped x0 alone, so it needs neither."""
    return {"eta": eta, "use_clipped_model_output": True} if scheduler == "ddim" else {}
