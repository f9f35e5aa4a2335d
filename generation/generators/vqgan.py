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
    # format = "clipgen-hfai"   # a VQGAN of HFAiLab/clip-gen (vqgan_coco.pt): their module
                                # names, read into the same modules (generation.clipgen_hfai)
"""

from __future__ import annotations

import contextlib
import io
import logging
import sys
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from generation.checkpoints import load_into, load_state_dict
from generation.errors import CheckpointError, WeightsNotFound
from generation.guidance import ClipGuide, batched_losses
from generation.images import load_image, pil_to_tensor, tensor_to_pil
from generation.loop import clamp_with_grad, make_optimizer, report, torch_generator
from generation.models import ModelStore
from generation.request import GenerationRequest, GenerationResult, RunControl, check_multiple
from generation.steps import run_alone

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
        if spec.get("format") == "clipgen-hfai":
            from generation import clipgen_hfai

            ddconfig = yaml.safe_load(config_path.read_text(encoding="utf-8"))["model"]["params"]
            clipgen_hfai.load_vqgan_into(model, path, ddconfig["ddconfig"])
        else:
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


def batch_key(request: GenerationRequest, store: ModelStore) -> Hashable:
    """Jobs of one VQGAN and one size share a step (their latents stack into one batch)."""
    return (NAME, load_model(store).name, request.width, request.height)


def run(request: GenerationRequest, store: ModelStore, control: RunControl) -> GenerationResult:
    return run_alone(sys.modules[__name__], request, store, control)


@dataclass(eq=False)
class State:
    """One job's part of a batch: its prompts, latents, optimiser and random generator."""

    request: GenerationRequest
    control: RunControl
    generator: torch.Generator
    model: VQGAN
    guide: ClipGuide
    latents: torch.Tensor  # [1, D, h, w], the parameters this job optimises
    optimizer: torch.optim.Optimizer
    low: torch.Tensor  # [1, D, 1, 1]: the codebook's range, per channel
    high: torch.Tensor
    steps_done: int
    total: int
    started: float
    # Kept as a tensor: reading a float every step would make the CPU wait for the GPU
    # instead of queueing the next step's work.
    last_loss: torch.Tensor


def start(request: GenerationRequest, store: ModelStore, control: RunControl) -> State:
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
    return begin(request, store, control, model, guide, latents, steps=request.steps)


def begin(
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
) -> State:
    """The VQGAN+CLIP loop's state from ``latents`` [1, D, h, w], to run ``steps`` steps.

    Progress and cancellation count from ``first_step`` out of ``total`` (default: ``first_step
    + steps``), so a caller that did other work first (clipgen's sampling) continues its own
    count."""
    codebook = model.codebook  # [N, D]
    latents = latents.detach().clone().requires_grad_(True)
    # Latents stay inside the range the codebook spans; beyond it the decoder has never
    # seen anything and the image breaks up.
    low = codebook.min(dim=0).values.view(1, -1, 1, 1)
    high = codebook.max(dim=0).values.view(1, -1, 1, 1)
    optimizer = make_optimizer(request.optimizer, [latents], request.learning_rate or DEFAULT_LR)
    return State(
        request=request,
        control=control,
        generator=guide.generator,
        model=model,
        guide=guide,
        latents=latents,
        optimizer=optimizer,
        low=low,
        high=high,
        steps_done=first_step,
        total=first_step + steps if total is None else total,
        started=time.perf_counter() if started is None else started,
        last_loss=torch.tensor(float("nan"), device=store.device),
    )


def step(states: Sequence[State], store: ModelStore, shared: dict[str, Any]) -> None:
    """One VQGAN+CLIP step for every job: one decode and one CLIP pass over the whole batch."""
    model = states[0].model
    with cudnn_flags(store):
        # 3. Decode every job's latents at once and score each image with its own prompts.
        images = synth(store, model, torch.cat([s.latents for s in states]))  # [B, 3, H, W]
        losses = batched_losses([s.guide for s in states], images)  # [B]
        # 4. Step each job's latents with its own optimiser: loss i depends on latents i
        #    alone, so the sum's gradient is each job's own.
        for s in states:
            s.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        for s in states:
            s.optimizer.step()
            with torch.no_grad():
                s.latents.copy_(s.latents.clamp(s.low, s.high))
    # 5. Progress with the image each job's step scored: no extra decode.
    for i, s in enumerate(states):
        s.last_loss = losses[i].detach()
        s.steps_done += 1
        report(
            s.control,
            s.request,
            s.steps_done,
            s.last_loss,
            images[i : i + 1].detach(),
            s.started,
            total=s.total,
        )


def final_image(state: State, store: ModelStore) -> torch.Tensor:
    """The image [1, 3, H, W] in [0, 1] from the latents after the last step."""
    with cudnn_flags(store), torch.no_grad():
        return synth(store, state.model, state.latents)


def finish(state: State, store: ModelStore) -> GenerationResult:
    # 6. The final image and its score.
    final = final_image(state, store)
    return GenerationResult(
        image=tensor_to_pil(final),
        request=state.request,
        steps_done=state.steps_done,
        elapsed=time.perf_counter() - state.started,
        loss=float(state.last_loss),
        clip_score=state.guide.similarity(final),
        metadata={"vqgan": state.model.name},
    )


def cudnn_flags(store: ModelStore) -> contextlib.AbstractContextManager[Any]:
    """cuDNN as the models TOML's [cuda] asks for the VQGAN's convolutions."""
    return torch.backends.cudnn.flags(
        enabled=store.vqgan_cudnn_enabled(),
        benchmark=store.config.cuda.cudnn_benchmark,
        deterministic=False,
        allow_tf32=True,
    )


def synth(store: ModelStore, model: VQGAN, latents: torch.Tensor) -> torch.Tensor:
    """latents [B, D, h, w] -> images [B, 3, H, W] in [0, 1]."""
    snapped = quantize(latents, model.codebook)  # fp32: low precision could pick other codes
    decoder_autocast = (
        store.autocast() if store.config.cuda.decoder_autocast else contextlib.nullcontext()
    )
    with decoder_autocast:
        decoded = model.decode(snapped).float()
    return clamp_with_grad((decoded + 1) / 2)
