"""VQGAN + CLIP: optimise a VQGAN's latents until CLIP sees the prompt in the decoded image.

The VQGAN is assembled from taming-transformers' modules (Encoder, Decoder, VectorQuantizer2 or
GumbelQuantize) in a plain ``nn.Module`` with the attribute names of taming's ``VQModel``, so the
published checkpoints load into it and pytorch-lightning is never imported.

Models come from the ``[generators.vqgan]`` section of the models TOML:

    [generators.vqgan]
    default = "imagenet_f16_16384"

    [generators.vqgan.models.imagenet_f16_16384]
    config = "vqgan_imagenet_f16_16384.yaml"       # taming's model.yaml: path, hf:// or URL
    checkpoint = "vqgan_imagenet_f16_16384.ckpt"   # path, hf://, URL, or "random"
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from generation.checkpoints import load_into, load_state_dict
from generation.errors import CheckpointError, WeightsNotFound
from generation.guidance import ClipGuide
from generation.images import load_image, pil_to_tensor, tensor_to_pil
from generation.loop import clamp_with_grad, make_optimizer, report, torch_generator
from generation.models import ModelStore
from generation.request import GenerationRequest, GenerationResult, RunControl, check_multiple

log = logging.getLogger(__name__)

NAME = "vqgan"
DEFAULT_LR = 0.1
HOW_TO_GET = (
    "Download the model's model.yaml and last.ckpt (the taming-transformers release, see "
    "generation/configs/defaults.toml for the URLs), then set config = and checkpoint = to their "
    "paths under [generators.vqgan.models.<name>] in your models TOML (IMAGINE_MODELS), or run "
    "once with network access so they download into the cache."
)


class VQGAN(nn.Module):
    """taming's VQModel / GumbelVQ without Lightning: same attributes, same state_dict keys."""

    def __init__(
        self,
        ddconfig: dict[str, Any],
        n_embed: int,
        embed_dim: int,
        *,
        gumbel: bool = False,
        kl_weight: float = 1e-8,
    ) -> None:
        super().__init__()
        from taming.modules.diffusionmodules.model import Decoder, Encoder
        from taming.modules.vqvae.quantize import GumbelQuantize, VectorQuantizer2

        z_channels = ddconfig["z_channels"]
        # taming prints the latent shape to stdout on construction; keep stdout clean for
        # the CLI's users.
        with contextlib.redirect_stdout(io.StringIO()):
            self.encoder = Encoder(**ddconfig)
            self.decoder = Decoder(**ddconfig)
        if gumbel:
            self.quantize = GumbelQuantize(
                z_channels, embed_dim, n_embed=n_embed, kl_weight=kl_weight, temp_init=1.0
            )
        else:
            self.quantize = VectorQuantizer2(n_embed, embed_dim, beta=0.25)
        self.quant_conv = nn.Conv2d(z_channels, embed_dim, 1)
        self.post_quant_conv = nn.Conv2d(embed_dim, z_channels, 1)
        self.gumbel = gumbel
        # taming initialises codes within +-1/n_embed; trained codebooks spread far wider. Unit
        # spread lets the latents of an untrained model (tiny preset, benchmark) matter.
        # Published checkpoints overwrite it.
        nn.init.normal_(self.codebook)
        self.factor = 2 ** (len(ddconfig["ch_mult"]) - 1)
        self.embed_dim = embed_dim
        self.name = ""  # its name in the models TOML, for metadata

    @property
    def codebook(self) -> torch.Tensor:
        """[n_embed, embed_dim]"""
        return self.quantize.embed.weight if self.gumbel else self.quantize.embedding.weight

    def encode(self, image: torch.Tensor) -> torch.Tensor:
        """image [B, 3, H, W] in [0, 1] -> quantised latents [B, embed_dim, H/f, W/f]."""
        h = self.quant_conv(self.encoder(image * 2 - 1))
        if self.gumbel:
            # The most likely code, without Gumbel noise: encoding is deterministic.
            codes = self.quantize.proj(h).argmax(dim=1)  # [B, h, w]
            return self.codebook[codes].permute(0, 3, 1, 2)
        return quantize(h, self.codebook)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """quantised latents [B, embed_dim, h, w] -> image [B, 3, h*f, w*f], roughly [-1, 1]."""
        return self.decoder(self.post_quant_conv(latents))


def quantize(latents: torch.Tensor, codebook: torch.Tensor) -> torch.Tensor:
    """Snap each latent vector to its nearest code, passing the gradient straight through.
    latents [B, D, h, w], codebook [N, D] -> [B, D, h, w]."""
    flat = latents.movedim(1, -1)  # [B, h, w, D]
    distances = (
        flat.pow(2).sum(-1, keepdim=True) - 2 * flat @ codebook.T + codebook.pow(2).sum(-1)
    )  # [B, h, w, N]
    snapped = codebook[distances.argmin(-1)]  # [B, h, w, D]
    return (flat + (snapped - flat).detach()).movedim(-1, 1)


# --------------------------------------------------------------------------- loading


def load_model(store: ModelStore, name: str | None = None) -> VQGAN:
    """The VQGAN ``name`` from the models TOML (default: its ``default``), loaded once."""
    name, spec = store.config.named_model(
        NAME, name, label="VQGAN", needs="config and checkpoint", how_to_get=HOW_TO_GET
    )
    return store.get_or_load(f"vqgan:{name}", lambda: _build(store, name, spec))


def _build(store: ModelStore, name: str, spec: dict[str, Any]) -> VQGAN:
    if "config" not in spec or "checkpoint" not in spec:
        raise WeightsNotFound(f"VQGAN {name!r} needs both config and checkpoint. {HOW_TO_GET}")
    config_path = store.resolve(spec["config"], what=f"VQGAN {name} config", how_to_get=HOW_TO_GET)
    model = build_from_yaml(config_path, seed=int(spec.get("seed", 0)))
    if spec["checkpoint"] != "random":
        path = store.resolve(
            spec["checkpoint"], what=f"VQGAN {name} checkpoint", how_to_get=HOW_TO_GET
        )
        load_weights(model, load_state_dict(path), path.name)
    model = model.to(store.device).eval().requires_grad_(False)
    model.name = name
    if store.device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    log.info("loaded VQGAN %s (factor %d, %d codes)", name, model.factor, model.codebook.shape[0])
    return model


def build_from_yaml(path: Path, *, seed: int = 0) -> VQGAN:
    """A VQGAN with the architecture of a taming model.yaml (weights random, from ``seed``)."""
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
        params = config["model"]["params"]
        target = config["model"].get("target", "")
        ddconfig = dict(params["ddconfig"])
        n_embed, embed_dim = int(params["n_embed"]), int(params["embed_dim"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as error:
        raise CheckpointError(
            f"VQGAN config {path.name} is not a taming model.yaml ({type(error).__name__}: "
            f"{error}); download it again"
        ) from None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return VQGAN(
            ddconfig,
            n_embed,
            embed_dim,
            gumbel=target.endswith("GumbelVQ"),
            kl_weight=float(params.get("kl_weight", 1e-8)),
        )


def load_weights(model: VQGAN, state_dict: dict[str, torch.Tensor], name: str) -> None:
    # Training-only parts of the published checkpoints (the discriminator and LPIPS loss).
    load_into(model, {k: v for k, v in state_dict.items() if not k.startswith("loss.")}, name)


# --------------------------------------------------------------------------- the generator


def check(request: GenerationRequest, store: ModelStore) -> None:
    """Loads the model (a missing one fails here, before any work) and checks the size."""
    model = load_model(store)
    check_multiple(request, model.factor, NAME)


def run(request: GenerationRequest, store: ModelStore, control: RunControl) -> GenerationResult:
    model = load_model(store)
    perceptor = store.perceptor()
    device = store.device
    generator = torch_generator(request.seed, device)
    codebook = model.codebook  # [N, D]
    height, width = request.height // model.factor, request.width // model.factor

    with cudnn_flags(store):
        # 1. Text, image and noise prompts are embedded once, for every CLIP model.
        guide = ClipGuide.from_request(request, perceptor, generator)

        # 2. Starting latents: the init image encoded, or random codes from the seed.
        if request.init_image:
            pixels = pil_to_tensor(
                load_image(request.init_image), (request.width, request.height)
            ).to(device)  # [1, 3, H, W]
            with torch.no_grad():
                latents = model.encode(pixels)  # [1, D, h, w]
        else:
            codes = torch.randint(
                codebook.shape[0], (height * width,), generator=generator, device=device
            )
            latents = codebook[codes].T.reshape(1, -1, height, width)  # [1, D, h, w]

    # 3.-7. The loop: decode, score with CLIP, step the latents (clipgen's refinement runs
    # the same loop from its best candidate).
    started = time.perf_counter()
    final, last_loss = optimise(
        request, store, control, model, guide, latents, steps=request.steps, started=started
    )
    score = guide.similarity(final)
    return GenerationResult(
        image=tensor_to_pil(final),
        request=request,
        steps_done=request.steps,
        elapsed=time.perf_counter() - started,
        loss=float(last_loss),
        clip_score=score,
        metadata={"vqgan": model.name},
    )


def cudnn_flags(store: ModelStore) -> contextlib.AbstractContextManager[Any]:
    """cuDNN as the models TOML's [cuda] asks for the VQGAN's convolutions."""
    return torch.backends.cudnn.flags(
        enabled=store.vqgan_cudnn_enabled(),
        benchmark=store.config.cuda.cudnn_benchmark,
        deterministic=False,
        allow_tf32=True,
    )


def optimise(
    request: GenerationRequest,
    store: ModelStore,
    control: RunControl,
    model: VQGAN,
    guide: ClipGuide,
    latents: torch.Tensor,
    *,
    steps: int,
    first_step: int = 0,
    total: int | None = None,
    started: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The VQGAN+CLIP loop from ``latents`` [1, D, h, w] for ``steps`` steps. Returns the final
    image [1, 3, H, W] in [0, 1] and the last loss (a 0-d tensor).

    Progress and cancellation count from ``first_step`` out of ``total`` (default ``steps``),
    so a caller that did other work first (clipgen's sampling) continues its own count."""
    codebook = model.codebook  # [N, D]
    started = time.perf_counter() if started is None else started
    total = first_step + steps if total is None else total
    decoder_autocast = (
        store.autocast() if store.config.cuda.decoder_autocast else contextlib.nullcontext()
    )

    def synth(latents: torch.Tensor) -> torch.Tensor:
        """latents [1, D, h, w] -> image [1, 3, H, W] in [0, 1]."""
        snapped = quantize(latents, codebook)  # fp32: low precision could pick other codes
        with decoder_autocast:
            decoded = model.decode(snapped).float()
        return clamp_with_grad((decoded + 1) / 2)

    latents = latents.detach().clone().requires_grad_(True)
    # Latents stay inside the range the codebook spans; beyond it the decoder has never
    # seen anything and the image breaks up.
    low = codebook.min(dim=0).values.view(1, -1, 1, 1)
    high = codebook.max(dim=0).values.view(1, -1, 1, 1)
    optimizer = make_optimizer(request.optimizer, [latents], request.learning_rate or DEFAULT_LR)

    # Kept as a tensor: reading a float every step would make the CPU wait for the GPU
    # instead of queueing the next step's work.
    last_loss = torch.tensor(float("nan"), device=store.device)
    with cudnn_flags(store):
        for step in range(first_step, first_step + steps):
            # 3. Stop here if the caller cancelled (within one step of the request).
            control.check(step)
            # 4. Decode the current latents and score the image with CLIP.
            image = synth(latents)  # [1, 3, H, W]
            loss = guide.loss(image)
            # 5. Step the latents and keep them in the codebook's range.
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                latents.copy_(latents.clamp(low, high))
            last_loss = loss.detach()
            # 6. Progress with the image this step scored: no extra decode.
            report(control, request, step + 1, last_loss, image.detach(), started, total=total)

        # 7. The final image, from the latents after the last step.
        with torch.no_grad():
            final = synth(latents)
    return final, last_loss
