"""CLIP-GEN: sample a picture from a transformer trained on images alone, conditioned on CLIP.

A GPT-2 (``generation.clipgen_model``) learnt p(VQGAN tokens | CLIP image embedding) from
uncaptioned pictures (Wang et al. 2022, "CLIP-GEN"). Here the prompt's CLIP *text* embedding takes
the image embedding's place: the model samples token grids in one pass, the VQGAN decodes them,
CLIP re-ranks the candidates and the best is the picture. Seconds instead of hundreds of steps.

Configured in the models TOML (paths relative to the TOML):

    [generators.clipgen]
    model = "clipgen-coco"   # a dir saved by `python -m generation.train clipgen`, or one of
                             # HFAiLab/clip-gen's GPT files (gpt_coco.pt: a path, hf:// or
                             # URL; generation.clipgen_hfai), or "tiny" /
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
    guidance = 1.0           # classifier-free guidance (a model trained with --cond-dropout):
                             # logits = uncond + guidance * (cond - uncond); 1.0: off
    ema = true               # sample with the model's EMA weights where its folder has them
    trained_with_clip = "ViT-B-32/openai"  # HFAiLab files only: the CLIP they were trained with
                             # (their files do not record it); the conditioning CLIP must be it
    clip = { model = "ViT-B-32", pretrained = "openai" }  # the CLIP that conditions the model
                             # and ranks its candidates, a [[clip]]-style table (default: the
                             # first [[clip]]); the refinement steps use the whole [[clip]] list

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
import dataclasses
import math
import sys
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from generation import clipgen_hfai
from generation.clipgen_model import (
    PRESETS,
    ClipGen,
    ClipGenConfig,
    check_compatible,
    conditioning_model,
    sample_next,
    start_sampling,
)
from generation.clipgen_model import (
    load_model as load_model_dir,
)
from generation.errors import BadRequest, CheckpointError, WeightsNotFound
from generation.generators import vqgan
from generation.guidance import ClipGuide
from generation.images import load_image, pil_to_tensor, tensor_to_pil
from generation.loop import report, torch_generator
from generation.models import ModelStore
from generation.models_config import ClipSpec, clip_spec_from_table
from generation.perceptor import Perceptor, resize
from generation.prompts import parse_image_prompt, parse_prompts
from generation.request import GenerationRequest, GenerationResult, RunControl
from generation.steps import run_alone

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
    trained_with_clip: str = clipgen_hfai.TRAINED_WITH_CLIP
    clip: ClipSpec | None = None  # the conditioning CLIP; None: the first [[clip]]
    guidance: float = 1.0
    ema: bool = True


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
            trained_with_clip=str(section.get("trained_with_clip", Settings.trained_with_clip)),
            clip=clip_spec(section.get("clip"), store, where),
            guidance=float(section.get("guidance", Settings.guidance)),
            ema=section.get("ema", Settings.ema),
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
        ("guidance", 0 <= chosen.guidance <= 20, "between 0 and 20 (1.0: off)"),
        ("ema", isinstance(chosen.ema, bool), "true or false"),
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
    perceptor = conditioning_perceptor(store, chosen)
    if chosen.model in ("tiny", "random"):
        return store.get_or_load(
            f"{NAME}:random:{chosen.preset}:{chosen.grid}:{tokenizer.name}",
            lambda: (random_model(store, tokenizer, chosen.preset, chosen.grid), chosen.model),
        )
    if clipgen_hfai.is_checkpoint_spec(chosen.model):
        return store.get_or_load(
            f"{NAME}:{chosen.model}:{tokenizer.name}",
            lambda: load_hfai(store, chosen, tokenizer, perceptor),
        )
    folder = Path(store.config.path(chosen.model))
    if not folder.is_dir():
        raise WeightsNotFound(f"clipgen model folder {folder} not found. {HOW_TO_GET}")

    def load_checked() -> tuple[ClipGen, str]:
        model, meta = load_model_dir(folder, store.device, ema=chosen.ema)
        check_compatible(meta, tokenizer, perceptor, where=f"in {folder}")
        return model, folder.name

    return store.get_or_load(f"{NAME}:{folder}:{tokenizer.name}:ema={chosen.ema}", load_checked)


def clip_spec(table: object, store: ModelStore, where: str) -> ClipSpec | None:
    """[generators.clipgen] clip, read as a [[clip]] table (paths relative to the TOML)."""
    if table is None:
        return None
    return clip_spec_from_table(table, store.config.base_dir, f"{where}: clip")


def conditioning_perceptor(store: ModelStore, chosen: Settings) -> Perceptor:
    """The CLIP that conditions the model and ranks candidates: [generators.clipgen] clip,
    loaded once, else the store's perceptor (whose first model is used)."""
    if chosen.clip is None:
        return store.perceptor()
    spec = chosen.clip
    config = dataclasses.replace(store.config, clip=(spec,))
    return store.get_or_load(
        f"{NAME}:clip:{spec.describe()}:{spec.config}:{spec.seed}",
        lambda: Perceptor.load(config, store),
    )


def load_hfai(
    store: ModelStore, chosen: Settings, tokenizer: vqgan.VQGAN, perceptor: Perceptor
) -> tuple[ClipGen, str]:
    """One of HFAiLab/clip-gen's GPT files (gpt_coco.pt) as a ClipGen. Their files record
    neither their VQGAN nor their CLIP: the configured ones are checked by size, and the first
    [[clip]] by name against trained_with_clip."""
    path = store.resolve(
        chosen.model,
        what="clipgen model (HFAiLab/clip-gen GPT)",
        how_to_get=f"{clipgen_hfai.HOW_TO_GET} {HOW_TO_GET}",
    )
    model = clipgen_hfai.load_gpt(path, store.device)
    problem = clipgen_hfai.compatibility_problem(
        model,
        codebook_size=tokenizer.codebook.shape[0],
        clip_name=conditioning_model(perceptor).name,
        embed_dim=perceptor.encode_text(["a"])[0].shape[-1],
        wanted=chosen.trained_with_clip,
    )
    if problem is not None:
        raise CheckpointError(f"the clipgen model {path.name} cannot be used here: {problem}")
    return model, path.name


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
    model, name = load_model(store)
    if settings(store).guidance != 1.0 and not model.config.null_cond:
        raise BadRequest(
            f"[generators.{NAME}] guidance needs a model trained with condition dropout and "
            f"{name} was not: set guidance = 1.0, or train with --cond-dropout 0.1"
        )


def batch_key(request: GenerationRequest, store: ModelStore) -> Hashable:
    """Every clipgen job shares a step: one model, one size (the model's own)."""
    chosen = settings(store)
    _, model_name = load_model(store)
    return (NAME, model_name, vqgan.load_model(store, chosen.vqgan).name)


def run(request: GenerationRequest, store: ModelStore, control: RunControl) -> GenerationResult:
    return run_alone(sys.modules[__name__], request, store, control)


@dataclass(eq=False)
class State:
    """One job's part of a batch: its conditioning, the candidates it sampled so far, the best
    one, and (while it refines) its VQGAN+CLIP state."""

    request: GenerationRequest
    control: RunControl
    generator: torch.Generator
    chosen: Settings
    model: ClipGen
    model_name: str
    tokenizer: vqgan.VQGAN
    cond: torch.Tensor  # [1, E]
    conditioning: str
    batches: int  # candidate batches to sample
    sampling_steps: int  # one step per token row of each batch
    total: int
    started: float
    batch: int = 0  # the candidate batch being sampled
    row: int = 0  # its token rows sampled so far
    tokens: torch.Tensor | None = None  # [count, T] of that batch
    scores: list[float] = field(default_factory=list)
    best_score: float = -math.inf
    best_tokens: torch.Tensor | None = None  # [1, T]
    final: torch.Tensor | None = None  # [1, 3, H, W]
    refine: vqgan.State | None = None

    @property
    def steps_done(self) -> int:
        if self.refine is not None:
            return self.refine.steps_done
        return self.batch * self.model.config.grid_h + self.row

    @property
    def count(self) -> int:
        """Candidates in the batch being sampled."""
        return min(
            self.chosen.batch_size, self.chosen.candidates - self.batch * self.chosen.batch_size
        )


def start(request: GenerationRequest, store: ModelStore, control: RunControl) -> State:
    chosen = settings(store)
    model, model_name = load_model(store)
    tokenizer = vqgan.load_model(store, chosen.vqgan)
    batches = math.ceil(chosen.candidates / chosen.batch_size)
    sampling_steps = batches * model.config.grid_h
    # 1. The conditioning: the weighted prompt parts, or the init image (a variation).
    cond, conditioning = condition(request, conditioning_perceptor(store, chosen))  # [1, E]
    return State(
        request=request,
        control=control,
        generator=torch_generator(request.seed, store.device),
        chosen=chosen,
        model=model,
        model_name=model_name,
        tokenizer=tokenizer,
        cond=cond,
        conditioning=conditioning,
        batches=batches,
        sampling_steps=sampling_steps,
        total=sampling_steps + chosen.refine_steps,
        started=time.perf_counter(),
    )


def step(states: Sequence[State], store: ModelStore, shared: dict[str, Any]) -> None:
    """One token row for the jobs that sample (one GPT forward per token for all their
    candidates), one VQGAN+CLIP step for the jobs that refine."""
    sampling = [s for s in states if s.refine is None]
    refining = [s.refine for s in states if s.refine is not None]
    if sampling:
        _sample_row(sampling, store, shared)
    if refining:
        vqgan.step(refining, store, shared.setdefault("refine", {}))


@dataclass(eq=False)
class _Cohort:
    """Jobs sampling their candidate batches in lockstep: one KV cache over all their rows."""

    members: list[State]
    cache: Any
    embeds: torch.Tensor  # [R, n, C]: what the next forward feeds


def _cohort(states: list[State], store: ModelStore, shared: dict[str, Any]) -> _Cohort:
    """The cohort that samples this step. Members that left (cancelled, failed) drop out of
    the cache. A new job waits until the cohort's candidate batch ends (every row of a cache
    must be at the same token), then all start the next batch together."""
    cohort: _Cohort | None = shared.get("cohort")
    if cohort is not None:
        alive = [m for m in cohort.members if any(m is s for s in states)]
        if len(alive) < len(cohort.members) and alive:
            keep, first = [], 0
            for m in cohort.members:
                if any(m is a for a in alive):
                    keep.extend(range(first, first + m.count))
                first += m.count
            index = torch.tensor(keep, device=cohort.embeds.device)
            cohort.cache.batch_select_indices(index)
            cohort = _Cohort(alive, cohort.cache, cohort.embeds[index])
        elif not alive:
            cohort = None
    if cohort is None:
        # 2. Start a cohort: the jobs furthest along (after a lost cache they resume where they
        #    were; otherwise all are at the start of a batch). The prefix of every candidate,
        #    then the tokens it already has, feed the first forward.
        furthest = max(s.row for s in states)
        members = [s for s in states if s.row == furthest]
        grid_w = members[0].model.config.grid_w
        for s in members:
            if s.row == 0:
                s.tokens = torch.empty(
                    s.count, s.model.config.n_tokens, dtype=torch.long, device=store.device
                )
        cond = torch.cat([s.cond.expand(s.count, -1) for s in members])  # [R, E]
        so_far = torch.cat([s.tokens[:, : furthest * grid_w] for s in members])  # [R, t]
        guidance = members[0].chosen.guidance
        cache, embeds = start_sampling(members[0].model, cond, so_far, guidance=guidance)
        cohort = _Cohort(members, cache, embeds)
    shared["cohort"] = cohort
    return cohort


@torch.no_grad()
def _sample_row(states: list[State], store: ModelStore, shared: dict[str, Any]) -> None:
    cohort = _cohort(states, store, shared)
    members = cohort.members
    first = members[0]
    chosen, model, tokenizer = first.chosen, first.model, first.tokenizer
    grid_h, grid_w = model.config.grid_h, model.config.grid_w
    wte = model.gpt.transformer.wte
    # 3. One token row for every candidate of every member; each member draws its own tokens
    #    from its own generator.
    draws = [(s.count, s.generator) for s in members]
    embeds, picked = cohort.embeds, []
    for _ in range(grid_w):
        tokens = sample_next(
            model, cohort.cache, embeds, draws, chosen.temperature, chosen.top_k, chosen.top_p
        )  # [R]
        picked.append(tokens)
        embeds = wte(tokens[:, None])  # [R, 1, C]
    row_tokens = torch.stack(picked, dim=1).split([s.count for s in members])  # [count, W] each
    row = first.row
    columns = slice(row * grid_w, (row + 1) * grid_w)
    batch_done = row + 1 == grid_h
    # 4. At the end of a candidate batch: decode every member's candidates at once and score
    #    them by CLIP similarity to each member's own conditioning.
    if batch_done:
        full = []
        for s, part in zip(members, row_tokens, strict=True):
            tokens = s.tokens.clone()
            tokens[:, columns] = part
            full.append(tokens)
        images = decode(tokenizer, store, torch.cat(full), grid_h, grid_w).split(
            [s.count for s in members]
        )  # [count, 3, H, W] each
        scores = [
            score_candidates(conditioning_perceptor(store, s.chosen), imgs, s.cond)
            for s, imgs in zip(members, images, strict=True)
        ]
    # 5. Commit (only now: a step that failed above changed no job).
    cohort.embeds = embeds
    for i, (s, part) in enumerate(zip(members, row_tokens, strict=True)):
        s.tokens[:, columns] = part
        s.row += 1
        _row_progress(s, store)
        if batch_done:
            batch_scores = scores[i]
            s.scores += batch_scores.tolist()
            best = int(batch_scores.argmax())
            if float(batch_scores[best]) > s.best_score:
                s.best_score = float(batch_scores[best])
                s.best_tokens = full[i][best : best + 1]
                s.final = images[i][best : best + 1]  # [1, 3, H, W]
            s.batch, s.row, s.tokens = s.batch + 1, 0, None
            if s.batch == s.batches and chosen.refine_steps > 0:
                s.refine = _start_refining(s, store)
    if batch_done:
        shared.pop("cohort", None)


def _row_progress(s: State, store: ModelStore) -> None:
    """A progress frame of the first candidate so far (grey below its rows), if wanted."""
    if s.tokens is None or not s.control.wants_progress(
        s.steps_done, s.total, s.request.progress_every
    ):
        return
    grid_h, grid_w = s.model.config.grid_h, s.model.config.grid_w
    height = grid_h * s.tokenizer.factor
    so_far = s.tokens[:1, : s.row * grid_w]
    partial = decode(s.tokenizer, store, so_far, s.row, grid_w)  # [1, 3, h, W]
    image = F.pad(partial, (0, 0, 0, height - partial.shape[-2]), value=0.5)
    report(s.control, s.request, s.steps_done, math.nan, image, s.started, total=s.total)


def _start_refining(s: State, store: ModelStore) -> vqgan.State:
    """6. Refine: the best candidate's latents start the VQGAN+CLIP loop."""
    assert s.best_tokens is not None
    grid_h, grid_w = s.model.config.grid_h, s.model.config.grid_w
    factor = s.tokenizer.factor
    sized = s.request.replace(width=grid_w * factor, height=grid_h * factor)
    guide = ClipGuide.from_request(sized, store.perceptor(), s.generator)
    codes = s.tokenizer.codebook[s.best_tokens[0]]  # [T, D]
    latents = codes.T.reshape(1, -1, grid_h, grid_w)  # [1, D, h, w]
    return vqgan.begin(
        sized,
        store,
        s.control,
        s.tokenizer,
        guide,
        latents,
        steps=s.chosen.refine_steps,
        first_step=s.sampling_steps,
        total=s.total,
        started=s.started,
    )


def finish(state: State, store: ModelStore) -> GenerationResult:
    # 7. The picture, and what made it.
    chosen, request = state.chosen, state.request
    grid_h, grid_w = state.model.config.grid_h, state.model.config.grid_w
    height, width = grid_h * state.tokenizer.factor, grid_w * state.tokenizer.factor
    final, loss = state.final, 1 - state.best_score
    if state.refine is not None:
        final, loss = vqgan.final_image(state.refine, store), float(state.refine.last_loss)
    assert final is not None
    metadata = {
        "clipgen": state.model_name,
        "vqgan": state.tokenizer.name,
        "conditioning": state.conditioning,
        "candidates": str(chosen.candidates),
        "sampling": f"temperature {chosen.temperature:g}, top_k {chosen.top_k}, "
        f"top_p {chosen.top_p:g}",
        "refine_steps": str(chosen.refine_steps),
        "guidance": f"{chosen.guidance:g}",
        "best_candidate": f"{state.scores.index(state.best_score)} of {len(state.scores)}, "
        f"CLIP similarity {state.best_score:.4f}",
        "size": f"{width}x{height}",
    }
    if (request.width, request.height) != (width, height):
        metadata["requested_size"] = f"{request.width}x{request.height}"
    return GenerationResult(
        image=tensor_to_pil(final),
        request=request,
        steps_done=state.steps_done,
        elapsed=time.perf_counter() - state.started,
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
