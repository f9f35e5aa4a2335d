"""CLIP-GEN: sample a picture from a transformer trained on images alone, conditioned on CLIP.

A GPT-2 (``generation.clipgen_model``) learnt p(VQGAN tokens | CLIP image embedding) from
uncaptioned pictures (Wang et al. 2022, "CLIP-GEN"). Here the prompt's CLIP *text* embedding takes
the image embedding's place: the model samples token grids in one pass, the VQGAN decodes them,
CLIP re-ranks the candidates and the best is the picture. Seconds instead of hundreds of steps.

Configured in the models TOML (paths relative to the TOML):

    [generators.clipgen]
    model = "clipgen-coco"   # a dir saved by `python -m generation.train clipgen`, or "tiny" /
                             # "random": random weights (noise; tests, benchmarks) of
    preset = "tiny"          #   this size (clipgen_model.PRESETS) and
    grid = 8                 #   this many token rows and columns, from a fixed seed
    vqgan = "imagenet_f16_16384"  # the [generators.vqgan.models] entry it was trained with
                             # (default: [generators.vqgan] default)
    candidates = 16          # pictures sampled per request; CLIP keeps the best
    batch_size = 16          # candidates sampled together
    temperature = 1.0
    top_k = 500              # 0: no limit
    top_p = 0.95             # 1.0: no limit
    refine_steps = 0         # > 0: that many VQGAN+CLIP steps from the best candidate

What conditions the model:
- Text: every prompt part is embedded by the first [[clip]] model and L2-normalised; the parts
  are summed with their weights (a negative weight subtracts its direction) and the sum is
  L2-normalised again. Image prompts and noise prompts join the sum the same way, with their
  weights. Candidates are ranked by cosine similarity to that same vector, which is the weighted
  sum of their cosines to each part (up to one positive factor).
- An init image (the bot's Variation) replaces all of it: the model is conditioned on the init
  image's CLIP image embedding alone, which gives variations of the picture, as in the paper.

Size: the picture is always the size the model was trained for (token grid x VQGAN factor). A
request for another size is not refused (the bot asks for its default size whatever the
generator); the picture has the model's size and the metadata says so (``size`` is the real
size, ``requested_size`` what was asked). ``steps`` does not apply: the run counts one step per
token row of each batch of candidates, then the refinement steps, and its progress frames (the
first candidate of the batch, decoded as far as its rows go, grey below) follow that count.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from generation.clipgen_model import (
    PRESETS,
    ClipGen,
    ClipGenConfig,
    check_compatible,
    sample_tokens,
)
from generation.clipgen_model import (
    load_model as load_model_dir,
)
from generation.errors import BadRequest, WeightsNotFound
from generation.generators import vqgan
from generation.guidance import ClipGuide
from generation.images import load_image, pil_to_tensor, tensor_to_pil
from generation.loop import report, torch_generator
from generation.models import ModelStore
from generation.perceptor import Perceptor, resize
from generation.prompts import parse_image_prompt, parse_prompts
from generation.request import GenerationRequest, GenerationResult, RunControl

NAME = "clipgen"
DEFAULT_LR = vqgan.DEFAULT_LR  # the refinement is the VQGAN loop
HOW_TO_GET = (
    "Train a model with `python -m generation.train clipgen --models TOML --images DIR --out "
    "MODEL_DIR` and set model = MODEL_DIR under [generators.clipgen] in the models TOML "
    '(IMAGINE_MODELS), or model = "tiny" for a tiny random one (noise, for tests).'
)
# Random models ("tiny", "random"): by default an 8 x 8 token grid (64 px with the tiny VQGAN's
# factor 8), built from this seed.
TINY_GRID = 8
RANDOM_SEED = 0


@dataclass(frozen=True)
class Settings:
    """[generators.clipgen] with its defaults filled in."""

    model: str
    vqgan: str | None = None
    preset: str = "tiny"
    grid: int = TINY_GRID
    candidates: int = 16
    batch_size: int = 16
    temperature: float = 1.0
    top_k: int = 500
    top_p: float = 0.95
    refine_steps: int = 0


def settings(store: ModelStore) -> Settings:
    """The section, checked: a bad value fails with the key and the range it must be in."""
    section = dict(store.config.generator_section(NAME))
    where = f"[generators.{NAME}] in the models file {store.config.source}"
    if "model" not in section:
        raise WeightsNotFound(f"no clipgen model configured ({where} has no model). {HOW_TO_GET}")
    unknown = set(section) - set(Settings.__dataclass_fields__)
    if unknown:
        raise BadRequest(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
    try:
        chosen = Settings(
            model=str(section["model"]),
            vqgan=section.get("vqgan"),
            preset=str(section.get("preset", Settings.preset)),
            grid=int(section.get("grid", Settings.grid)),
            candidates=int(section.get("candidates", Settings.candidates)),
            batch_size=int(section.get("batch_size", Settings.batch_size)),
            temperature=float(section.get("temperature", Settings.temperature)),
            top_k=int(section.get("top_k", Settings.top_k)),
            top_p=float(section.get("top_p", Settings.top_p)),
            refine_steps=int(section.get("refine_steps", Settings.refine_steps)),
        )
    except (TypeError, ValueError) as error:
        raise BadRequest(f"{where}: {error}") from None
    checks = (
        ("preset", chosen.preset in PRESETS, f"one of {', '.join(PRESETS)}"),
        ("grid", 1 <= chosen.grid <= 64, "between 1 and 64"),
        ("candidates", 1 <= chosen.candidates <= 1024, "between 1 and 1024"),
        ("batch_size", 1 <= chosen.batch_size <= 1024, "between 1 and 1024"),
        ("temperature", 0 < chosen.temperature <= 10, "above 0 and at most 10"),
        ("top_k", chosen.top_k >= 0, "0 (no limit) or more"),
        ("top_p", 0 < chosen.top_p <= 1, "above 0 and at most 1"),
        ("refine_steps", 0 <= chosen.refine_steps <= 5000, "between 0 and 5000"),
    )
    for key, ok, allowed in checks:
        if not ok:
            raise BadRequest(f"{where}: {key} must be {allowed}, not {getattr(chosen, key)}")
    return chosen


def load_model(store: ModelStore) -> tuple[ClipGen, str]:
    """The configured model (loaded once) and its name for metadata. A model dir is checked
    against the configured VQGAN and first CLIP: a mismatch is a CheckpointError."""
    chosen = settings(store)
    tokenizer = vqgan.load_model(store, chosen.vqgan)
    perceptor = store.perceptor()
    if chosen.model in ("tiny", "random"):
        return store.get_or_load(
            f"{NAME}:random:{chosen.preset}:{chosen.grid}:{tokenizer.name}",
            lambda: (random_model(store, tokenizer, chosen.preset, chosen.grid), chosen.model),
        )
    folder = Path(store.config.path(chosen.model))
    if not folder.is_dir():
        raise WeightsNotFound(f"clipgen model folder {folder} not found. {HOW_TO_GET}")

    def load_checked() -> tuple[ClipGen, str]:
        model, meta = load_model_dir(folder, store.device)
        check_compatible(meta, tokenizer, perceptor, where=f"in {folder}")
        return model, folder.name

    return store.get_or_load(f"{NAME}:{folder}:{tokenizer.name}", load_checked)


def random_model(
    store: ModelStore, tokenizer: vqgan.VQGAN, preset: str = "tiny", grid: int = TINY_GRID
) -> ClipGen:
    """A random model of ``preset``'s size and a ``grid`` x ``grid`` token grid that fits the
    VQGAN and the first CLIP, the same in every process (built from RANDOM_SEED)."""
    cond_dim = store.perceptor().encode_text(["a"])[0].shape[-1]
    config = ClipGenConfig(
        vocab_size=tokenizer.codebook.shape[0],
        grid_h=grid,
        grid_w=grid,
        cond_dim=cond_dim,
        **PRESETS[preset],
    )
    with store.seeded_init(RANDOM_SEED):
        model = ClipGen(config)
    return model.to(store.device).eval()


def check(request: GenerationRequest, store: ModelStore) -> None:
    """Loads and checks the model, so missing or mismatched weights fail before any work."""
    load_model(store)


def run(request: GenerationRequest, store: ModelStore, control: RunControl) -> GenerationResult:
    chosen = settings(store)
    model, model_name = load_model(store)
    tokenizer = vqgan.load_model(store, chosen.vqgan)
    perceptor = store.perceptor()
    generator = torch_generator(request.seed, store.device)
    grid_h, grid_w = model.config.grid_h, model.config.grid_w
    height, width = grid_h * tokenizer.factor, grid_w * tokenizer.factor
    batches = math.ceil(chosen.candidates / chosen.batch_size)
    sampling_steps = batches * grid_h  # one step per token row of each batch
    total = sampling_steps + chosen.refine_steps
    started = time.perf_counter()

    # 1. The conditioning: the weighted prompt parts, or the init image (a variation).
    cond, conditioning = condition(request, perceptor)  # [1, E]

    # 2. Sample the candidates batch by batch. After every token row: a progress frame of the
    #    first candidate so far; before every row: stop if the caller cancelled.
    done = [0]  # token rows finished so far, over all batches: the run's step count

    def on_row(row: int, so_far: torch.Tensor) -> None:
        done[0] += 1
        if control.wants_progress(done[0], total, request.progress_every):
            partial = decode(tokenizer, store, so_far[:1], row + 1, grid_w)  # [1, 3, h, W]
            image = F.pad(partial, (0, 0, 0, height - partial.shape[-2]), value=0.5)
            report(control, request, done[0], math.nan, image, started, total=total)

    def should_stop() -> None:
        control.check(done[0])

    best_tokens, best_score, scores, final = None, -math.inf, [], None
    for batch in range(batches):
        count = min(chosen.batch_size, chosen.candidates - batch * chosen.batch_size)
        tokens = sample_tokens(
            model,
            cond.expand(count, -1),
            temperature=chosen.temperature,
            top_k=chosen.top_k,
            top_p=chosen.top_p,
            generator=generator,
            on_row=on_row,
            should_stop=should_stop,
        )  # [count, T]

        # 3. Decode every candidate and score it by CLIP similarity to the conditioning.
        images = decode(tokenizer, store, tokens, grid_h, grid_w)  # [count, 3, H, W]
        batch_scores = score_candidates(perceptor, images, cond)  # [count]
        scores += batch_scores.tolist()
        best = int(batch_scores.argmax())
        if float(batch_scores[best]) > best_score:
            best_score, best_tokens = float(batch_scores[best]), tokens[best : best + 1]
            final = images[best : best + 1]  # [1, 3, H, W]
    assert best_tokens is not None and final is not None

    # 4. Optionally refine: the best candidate's latents start the VQGAN+CLIP loop.
    loss = 1 - best_score
    if chosen.refine_steps > 0:
        sized = request.replace(width=width, height=height)
        guide = ClipGuide.from_request(sized, perceptor, generator)
        codes = tokenizer.codebook[best_tokens[0]]  # [T, D]
        latents = codes.T.reshape(1, -1, grid_h, grid_w)  # [1, D, h, w]
        final, last_loss = vqgan.optimise(
            sized,
            store,
            control,
            tokenizer,
            guide,
            latents,
            steps=chosen.refine_steps,
            first_step=sampling_steps,
            total=total,
            started=started,
        )
        loss = float(last_loss)

    # 5. The picture, and what made it.
    metadata = {
        "clipgen": model_name,
        "vqgan": tokenizer.name,
        "conditioning": conditioning,
        "candidates": str(chosen.candidates),
        "sampling": f"temperature {chosen.temperature:g}, top_k {chosen.top_k}, "
        f"top_p {chosen.top_p:g}",
        "refine_steps": str(chosen.refine_steps),
        "best_candidate": f"{scores.index(best_score)} of {len(scores)}, "
        f"CLIP similarity {best_score:.4f}",
        "size": f"{width}x{height}",
    }
    if (request.width, request.height) != (width, height):
        metadata["requested_size"] = f"{request.width}x{request.height}"
    return GenerationResult(
        image=tensor_to_pil(final),
        request=request,
        steps_done=total,
        elapsed=time.perf_counter() - started,
        loss=loss,
        clip_score=None,  # the engine scores the final picture against the text prompt
        metadata=metadata,
    )


# --------------------------------------------------------------------------- the pieces


@torch.no_grad()
def condition(request: GenerationRequest, perceptor: Perceptor) -> tuple[torch.Tensor, str]:
    """The CLIP embedding [1, E] the model is conditioned on (the first CLIP model's space),
    and what it came from. See the module docstring for the rule."""
    device = perceptor.device
    if request.init_image:
        pixels = pil_to_tensor(load_image(request.init_image)).to(device)  # [1, 3, H, W]
        return embed_image(perceptor, pixels), "init image"
    prompts = parse_prompts(request.prompt)
    parts = [perceptor.encode_text([p.text for p in prompts])[0]]  # [P, E]
    weights = [p.weight for p in prompts]
    for spec in request.image_prompts:
        image_prompt = parse_image_prompt(spec)
        pixels = pil_to_tensor(load_image(image_prompt.path)).to(device)
        parts.append(embed_image(perceptor, pixels))
        weights.append(image_prompt.weight)
    dim = parts[0].shape[-1]
    for seed, weight in request.noise_prompts:
        # The same random direction the optimising generators steer toward for this seed.
        noise = torch.randn(1, dim, generator=torch.Generator().manual_seed(int(seed)))
        parts.append(F.normalize(noise, dim=-1).to(device))
        weights.append(float(weight))
    embeds = F.normalize(torch.cat(parts), dim=-1)  # [P', E]
    mixed = (torch.tensor(weights, device=device)[:, None] * embeds).sum(0, keepdim=True)
    if float(mixed.norm()) < 1e-6:
        raise BadRequest("the prompt's weighted parts cancel out: change a weight")
    kinds = ["text"] + ["image prompt"] * bool(request.image_prompts)
    kinds += ["noise prompt"] * bool(request.noise_prompts)
    return F.normalize(mixed, dim=-1), " + ".join(kinds)


def embed_image(perceptor: Perceptor, pixels: torch.Tensor) -> torch.Tensor:
    """The centre square of ``pixels`` [1, 3, H, W] -> the first CLIP's embedding [1, E]."""
    _, _, height, width = pixels.shape
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = pixels[:, :, top : top + side, left : left + side]
    return perceptor.embed(0, resize(square, perceptor.models[0].input_size))


@torch.no_grad()
def decode(
    tokenizer: vqgan.VQGAN, store: ModelStore, tokens: torch.Tensor, rows: int, columns: int
) -> torch.Tensor:
    """tokens [B, rows * columns] (row-major) -> pictures [B, 3, rows*f, columns*f] in [0, 1],
    decoded exactly as the VQGAN loop decodes its latents."""
    codes = tokenizer.codebook[tokens]  # [B, T, D]
    latents = codes.view(tokens.shape[0], rows, columns, -1).permute(0, 3, 1, 2)  # [B, D, h, w]
    autocast = store.autocast() if store.config.cuda.decoder_autocast else contextlib.nullcontext()
    with vqgan.cudnn_flags(store), autocast:
        decoded = tokenizer.decode(latents).float()
    return ((decoded + 1) / 2).clamp(0, 1)


@torch.no_grad()
def score_candidates(
    perceptor: Perceptor, images: torch.Tensor, cond: torch.Tensor
) -> torch.Tensor:
    """images [B, 3, H, W] -> [B] cosine similarities of their first-CLIP embeddings to
    ``cond`` [1, E] (L2-normalised)."""
    embeds = perceptor.embed(0, resize(images, perceptor.models[0].input_size))  # [B, E]
    return (embeds @ cond.T)[:, 0]
