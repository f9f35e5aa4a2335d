"""DALL-E's dVAE + CLIP: optimise logits over the dVAE's codes until CLIP sees the prompt in
the decoded image (as in Ryan Murdock's notebooks).

The discrete VAE that OpenAI released with DALL-E maps a 256 px image to a 32 x 32 grid of codes
out of 8192 (a factor of 8). Its decoder takes a distribution over the codes at every grid cell,
so the logits can be optimised directly: a softmax (or a Gumbel-softmax, whose noise comes from
the request's seed) with a temperature turns them into the decoder's input, and the picture is
the first three of the decoder's six output channels through a sigmoid and ``unmap_pixels``.
An init image starts the logits at the encoder's logits for it.

The Encoder and Decoder are the ``dall-e`` package's. The published ``encoder.pkl`` and
``decoder.pkl`` are whole pickled modules: ``generation.checkpoints`` reads only their tensors
(no pickled code runs); a state dict (.safetensors / .pt) works too.

Models and settings come from the ``[generators.dvae]`` section of the models TOML:

    [generators.dvae]
    default = "openai"
    sampling = "softmax"      # or "gumbel"
    temperature = 1.0         # below 1 sharpens the distribution over the codes

    [generators.dvae.models.openai]
    decoder = "https://cdn.openai.com/dall-e/decoder.pkl"   # path, hf://, URL, or "random"
    encoder = "https://cdn.openai.com/dall-e/encoder.pkl"   # only needed for init images
    # Architecture (defaults: the published model): n_hid, n_blk_per_group, vocab_size, n_init
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from generation.checkpoints import load_into, load_state_dict
from generation.errors import BadRequest, WeightsNotFound
from generation.guidance import ClipGuide
from generation.images import load_image, pil_to_tensor, tensor_to_pil
from generation.loop import clamp_with_grad, make_optimizer, report, torch_generator
from generation.models import ModelStore
from generation.request import GenerationRequest, GenerationResult, RunControl, check_multiple

log = logging.getLogger(__name__)

NAME = "dvae"
DEFAULT_LR = 0.1
FACTOR = 8  # three 2x poolings in the encoder, three 2x upsamplings in the decoder
SAMPLINGS = ("softmax", "gumbel")
# Standard deviation of the random starting logits: a mixture of a few likely codes per cell.
INIT_STD = 2.0
# The published model: dall_e's defaults.
ARCHITECTURE_DEFAULTS = {"n_hid": 256, "n_blk_per_group": 2, "vocab_size": 8192, "n_init": 128}
HOW_TO_GET = (
    "Download OpenAI's dVAE weights (https://cdn.openai.com/dall-e/decoder.pkl, and encoder.pkl "
    "for init images), then set decoder = and encoder = to their paths under "
    "[generators.dvae.models.<name>] in your models TOML (IMAGINE_MODELS), or run once with "
    "network access so they download into the cache."
)


class DVAE(nn.Module):
    """dall_e's Decoder, and its Encoder once an init image asks for it."""

    def __init__(self, decoder: nn.Module, name: str, spec: Mapping[str, Any]) -> None:
        super().__init__()
        self.decoder = decoder
        self.vocab_size = int(decoder.vocab_size)
        self.name = name  # its name in the models TOML, for metadata
        self.spec = spec

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """A distribution over the codes [1, V, h, w] -> image [1, 3, 8h, 8w] in [0, 1]."""
        from dall_e.utils import logit_laplace_eps

        x = self.decoder(codes).float()  # [1, 6, H, W]: fp16 on CUDA (dall_e's convolutions)
        # unmap_pixels(sigmoid(x[:, :3])), with a clamp that keeps the gradient of pixels
        # that a step moves back into range (dall_e's own clamp would zero it).
        pixels = (torch.sigmoid(x[:, :3]) - logit_laplace_eps) / (1 - 2 * logit_laplace_eps)
        return clamp_with_grad(pixels)


# --------------------------------------------------------------------------- loading


def load_model(store: ModelStore, name: str | None = None) -> DVAE:
    """The dVAE ``name`` from the models TOML (default: its ``default``), loaded once."""
    name, spec = _model_spec(store, name)
    return store.get_or_load(f"dvae:{name}", lambda: _build_decoder(store, name, spec))


def load_encoder(store: ModelStore, model: DVAE) -> nn.Module:
    """The encoder that belongs to ``model``, loaded once (only init images need it)."""
    return store.get_or_load(
        f"dvae:{model.name}:encoder", lambda: _build_encoder(store, model.name, model.spec)
    )


def _model_spec(store: ModelStore, name: str | None) -> tuple[str, Mapping[str, Any]]:
    return store.config.named_model(
        NAME, name, label="dVAE", needs="decoder (and encoder)", how_to_get=HOW_TO_GET
    )


def architecture(spec: Mapping[str, Any]) -> dict[str, int]:
    """The Encoder / Decoder sizes a model spec sets, over the published model's."""
    try:
        return {key: int(spec.get(key, value)) for key, value in ARCHITECTURE_DEFAULTS.items()}
    except (TypeError, ValueError):
        raise BadRequest(
            f"dVAE architecture settings ({', '.join(ARCHITECTURE_DEFAULTS)}) must be integers"
        ) from None


def build_decoder(spec: Mapping[str, Any], *, seed: int = 0) -> nn.Module:
    """dall_e's Decoder with the architecture of ``spec`` (weights random, from ``seed``)."""
    from dall_e import Decoder

    arch = architecture(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return Decoder(
            n_init=arch["n_init"],
            n_hid=arch["n_hid"],
            n_blk_per_group=arch["n_blk_per_group"],
            vocab_size=arch["vocab_size"],
        )


def build_encoder(spec: Mapping[str, Any], *, seed: int = 0) -> nn.Module:
    """dall_e's Encoder with the architecture of ``spec`` (weights random, from ``seed``)."""
    from dall_e import Encoder

    arch = architecture(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed + 1)  # not the decoder's draws
        return Encoder(
            n_hid=arch["n_hid"],
            n_blk_per_group=arch["n_blk_per_group"],
            vocab_size=arch["vocab_size"],
        )


def _build_decoder(store: ModelStore, name: str, spec: Mapping[str, Any]) -> DVAE:
    if "decoder" not in spec:
        raise WeightsNotFound(f"dVAE {name!r} needs decoder = its weights. {HOW_TO_GET}")
    decoder = build_decoder(spec, seed=int(spec.get("seed", 0)))
    _load_part(store, decoder, spec["decoder"], f"dVAE {name} decoder")
    model = DVAE(decoder, name, spec).to(store.device).eval().requires_grad_(False)
    log.info("loaded dVAE %s decoder (%d codes)", name, model.vocab_size)
    return model


def _build_encoder(store: ModelStore, name: str, spec: Mapping[str, Any]) -> nn.Module:
    if "encoder" not in spec:
        raise WeightsNotFound(
            f"dVAE {name!r} has no encoder, which an init image needs: set encoder = its "
            f"weights. {HOW_TO_GET}"
        )
    encoder = build_encoder(spec, seed=int(spec.get("seed", 0)))
    _load_part(store, encoder, spec["encoder"], f"dVAE {name} encoder")
    return encoder.to(store.device).eval().requires_grad_(False)


def _load_part(store: ModelStore, module: nn.Module, weights: str, what: str) -> None:
    if weights == "random":
        return
    path = store.resolve(weights, what=what, how_to_get=HOW_TO_GET)
    load_weights(module, load_state_dict(path), path.name)


def load_weights(module: nn.Module, state_dict: dict[str, torch.Tensor], name: str) -> None:
    """Copy a checkpoint's tensors into ``module``; every tensor must be there and fit."""
    load_into(
        module,
        state_dict,
        name,
        hint="check n_hid, n_blk_per_group, vocab_size and n_init, and that decoder = names a "
        "decoder and encoder = an encoder",
    )


def _sampling(store: ModelStore) -> tuple[str, float]:
    section = store.config.generator_section(NAME)
    sampling = section.get("sampling", "softmax")
    temperature = section.get("temperature", 1.0)
    where = f"[generators.dvae] in {store.config.source}"
    if sampling not in SAMPLINGS:
        raise BadRequest(f"{where}: sampling must be one of {', '.join(SAMPLINGS)}")
    if not isinstance(temperature, int | float) or not 0 < temperature <= 100:
        raise BadRequest(f"{where}: temperature must be a number above 0, not {temperature!r}")
    return sampling, float(temperature)


# --------------------------------------------------------------------------- the generator


def check(request: GenerationRequest, store: ModelStore) -> None:
    """Loads the decoder (and the encoder for an init image), so missing weights fail before
    any work; checks the settings and the size."""
    _sampling(store)
    model = load_model(store)
    check_multiple(request, FACTOR, NAME)
    if request.init_image:
        load_encoder(store, model)


def run(request: GenerationRequest, store: ModelStore, control: RunControl) -> GenerationResult:
    model = load_model(store)
    sampling, temperature = _sampling(store)
    device = store.device
    generator = torch_generator(request.seed, device)
    shape = (1, model.vocab_size, request.height // FACTOR, request.width // FACTOR)

    def codes_from(logits: torch.Tensor) -> torch.Tensor:
        """logits [1, V, h, w] -> a distribution over the codes at every cell [1, V, h, w]."""
        if sampling == "gumbel":
            # Gumbel noise from the request's generator: the same seed draws the same noise.
            uniform = torch.rand(shape, generator=generator, device=device)
            logits = logits - torch.log(-torch.log(uniform.clamp(1e-10, 1 - 1e-7)))
        return torch.softmax(logits / temperature, dim=1)

    # 1. Text, image and noise prompts are embedded once, for every CLIP model.
    guide = ClipGuide.from_request(request, store.perceptor(), generator)

    # 2. Starting logits: the encoder's for the init image, or random from the seed.
    if request.init_image:
        from dall_e.utils import map_pixels

        encoder = load_encoder(store, model)
        pixels = pil_to_tensor(load_image(request.init_image), (request.width, request.height))
        with torch.no_grad():
            logits = encoder(map_pixels(pixels.to(device))).float()  # [1, V, h, w]
    else:
        logits = torch.randn(shape, generator=generator, device=device) * INIT_STD
    logits = logits.detach().clone().requires_grad_(True)  # [1, V, h, w]
    optimizer = make_optimizer(request.optimizer, [logits], request.learning_rate or DEFAULT_LR)

    started = time.perf_counter()
    # Kept as a tensor: reading a float every step would make the CPU wait for the GPU.
    last_loss = torch.tensor(float("nan"), device=device)
    for step in range(request.steps):
        # 3. Stop here if the caller cancelled (within one step of the request).
        control.check(step)
        # 4. Logits -> distribution over the codes -> decoded image, scored by CLIP.
        image = model.decode(codes_from(logits))  # [1, 3, H, W]
        loss = guide.loss(image)
        # 5. Step the logits.
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        last_loss = loss.detach()
        # 6. Progress with the image this step scored: no extra decode.
        report(control, request, step + 1, last_loss, image.detach(), started)

    # 7. The final image: the plain softmax of the last logits (no Gumbel noise left in it).
    with torch.no_grad():
        final = model.decode(torch.softmax(logits / temperature, dim=1))
        score = guide.similarity(final)
    return GenerationResult(
        image=tensor_to_pil(final),
        request=request,
        steps_done=request.steps,
        elapsed=time.perf_counter() - started,
        loss=float(last_loss),
        clip_score=score,
        metadata={"dvae": model.name, "parameterisation": f"{sampling}, T={temperature:g}"},
    )
